#!/usr/bin/env bash
# Unpack throughput: `pronto image unpack` against `skopeo copy` + `umoci unpack` of the same
# ≥ 500 MB image of real files (Debian's Python stdlib plus a venv with numpy, scipy, pandas,
# scikit-learn and matplotlib from PyPI), pulled from the same local registry, in the same run,
# with the page cache dropped before every measured command. See bench/README.md.
#
#   bash bench/unpack.sh [--runs N]      (default 5; run as root on Debian 12)
#
# The image's file trees are built once and cached under /var/cache/pronto-bench/, keyed by a
# hash of the recipe in bench/python-image.sh. Everything else (registry, pulled trees) lives in a
# temp dir that is removed on exit; the registry is killed by PID.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

runs=5
opt --runs runs
parse_args "$@"
need_positive_int --runs "$runs"
need_root "drops the page cache, unpacks with owners"

# ---------------------------------------------------------------------------------------------
# 1. What it needs
install_deps
# Debian's python: its stdlib is layer 1, its venv module builds layers 2-3
"$PY" -c 'import venv, ensurepip' >/dev/null 2>&1 || need_packages python3-venv
build_pronto
bench_init pronto-bench # registry storage, pulled trees; removed on exit
copy_binaries

# ---------------------------------------------------------------------------------------------
# 2. The image's file trees, cached by recipe hash
# (the recipe, shared with convert.sh and convert-large.sh, is in bench/python-image.sh)
# shellcheck source=python-image.sh
. "$bench_dir/python-image.sh"
image_bytes=$(du -sbc "${layers[@]}" | tail -1 | cut -f1)
image_files=$(find "${layers[@]}" -type f | wc -l)
image_entries=$(find "${layers[@]}" -mindepth 1 | wc -l)
for l in "${layers[@]}"; do
  printf '   %s: %s bytes, %s files\n' "$(basename "$l")" "$(du -sb "$l" | cut -f1)" \
    "$(find "$l" -type f | wc -l)" >&2
done
log "image: $image_bytes bytes uncompressed (du -sb), $image_files files, $image_entries entries, ${#layers[@]} layers"
[ "$image_bytes" -ge 500000000 ] || die "image is under 500 MB; the recipe needs more packages"

# ---------------------------------------------------------------------------------------------
# 3. Own registry on a free loopback port, storage in a temp dir
start_registry

ref="$registry/bench/pyvenv:v1"
push_start=$EPOCHREALTIME
digest=$(push_python_image "$ref" "${layers[@]}")
push_secs=$(secs_since "$push_start" 1)
compressed_bytes=$("$bin/pronto" image inspect "$ref" | jq '.layersSize')
log "pushed $ref ($digest): $compressed_bytes bytes gzip in ${#layers[@]} layers (${push_secs}s to build+push)"

# ---------------------------------------------------------------------------------------------
# 4. Measured runs
# bash's `time` keyword: "wall user sys" seconds of the command and its children
TIMEFORMAT='%3R %3U %3S'
timed() { # $1 output file for "wall user sys", $2 log file for the command's stderr, rest: command
  local tfile=$1 errlog=$2
  shift 2
  { time "$@" 2>"$errlog"; } 2>"$tfile" || { tail -20 "$errlog" >&2; die "$* failed"; }
}

run_pronto() { # $1 run number; appends "wall cpu" to $work/pronto.times
  local w user sys
  mkdir -p "$work/r$1"
  drop_caches
  timed "$work/t" "$work/pronto.err" \
    "$bin/pronto" image unpack "$ref" "$work/r$1/pronto-rootfs" --json >"$work/pronto-$1.json"
  read -r w user sys <"$work/t"
  echo "$w $(awk -v u="$user" -v s="$sys" 'BEGIN{printf "%.3f", u+s}')" >>"$work/pronto.times"
}
run_umoci() { # $1 run number; appends "wall cpu skopeo_wall umoci_wall" to $work/umoci.times
  local layout="$work/r$1/layout" bundle="$work/r$1/bundle" w1 u1 s1 w2 u2 s2
  mkdir -p "$work/r$1"
  drop_caches
  timed "$work/t1" "$work/skopeo.err" \
    skopeo copy -q --insecure-policy --src-tls-verify=false "docker://$ref" "oci:$layout:img"
  timed "$work/t2" "$work/umoci.err" umoci unpack --image "$layout:img" "$bundle" >/dev/null
  read -r w1 u1 s1 <"$work/t1"
  read -r w2 u2 s2 <"$work/t2"
  awk -v w1="$w1" -v w2="$w2" -v c="$u1 $s1 $u2 $s2" \
    'BEGIN{split(c, x, " "); printf "%.3f %.3f %.3f %.3f\n", w1+w2, x[1]+x[2]+x[3]+x[4], w1, w2}' \
    >>"$work/umoci.times"
}

: >"$work/pronto.times"
: >"$work/umoci.times"
for i in $(seq "$runs"); do
  if [ $((i % 2)) = 1 ]; then order="pronto umoci"; else order="umoci pronto"; fi
  for tool in $order; do "run_$tool" "$i"; done
  printf '   run %d/%d (%s first): pronto %ss, skopeo+umoci %ss\n' "$i" "$runs" "${order%% *}" \
    "$(tail -1 "$work/pronto.times" | cut -d' ' -f1)" "$(tail -1 "$work/umoci.times" | cut -d' ' -f1)" >&2
  if [ "$i" = 1 ]; then
    # Not timed: both must have produced the same tree, or the comparison means nothing.
    diff -r --no-dereference "$work/r1/pronto-rootfs" "$work/r1/bundle/rootfs" >"$work/diff.txt" 2>&1 \
      || { head -20 "$work/diff.txt" >&2; die "pronto and umoci trees differ"; }
    echo "   run 1: pronto and umoci trees identical (diff -r)" >&2
  fi
  rm -rf "$work/r$i"
done

# ---------------------------------------------------------------------------------------------
# 5. Report
file_bytes=$(jq '.fileBytes' "$work/pronto-1.json")
report_env "$work"
VERSIONS="pronto $pronto_version, $(skopeo --version), umoci $(umoci --version | awk '{print $3}')"
export RUNS=$runs FILE_BYTES=$file_bytes IMAGE_BYTES=$image_bytes IMAGE_FILES=$image_files \
  IMAGE_ENTRIES=$image_entries COMPRESSED=$compressed_bytes NLAYERS=${#layers[@]} REF_DIGEST=$digest \
  KEY=$key VERSIONS
"$PY" - "$work/pronto.times" "$work/umoci.times" "$work/pronto-1.json" >"$work/report.md" <<'PY'
import json, os, statistics, sys
rows_p = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
rows_u = [list(map(float, l.split())) for l in open(sys.argv[2]) if l.strip()]
pronto, pronto_cpu = [r[0] for r in rows_p], [r[1] for r in rows_p]
umoci, umoci_cpu = [r[0] for r in rows_u], [r[1] for r in rows_u]
skopeo_part, umoci_part = [r[2] for r in rows_u], [r[3] for r in rows_u]
summary = json.load(open(sys.argv[3]))
e = os.environ
mb = int(e["FILE_BYTES"]) / 1e6
med = statistics.median
def row(name, xs, cpu=None):
    s = f"{mb / med(xs):.0f}" if cpu is not None else "–"
    c = f"{med(cpu):.2f}" if cpu is not None else "–"
    return f"| {name} | {med(xs):.2f} | {min(xs):.2f} | {max(xs):.2f} | {s} | {c} |"
med_p, med_u = med(pronto), med(umoci)
print(f"""### Unpack throughput, {e['RUNS']} runs

Image: {int(e['IMAGE_BYTES'])/1e6:.0f} MB uncompressed (du -sb), {e['IMAGE_FILES']} files ({e['IMAGE_ENTRIES']} entries), {e['NLAYERS']} gzip layers, {int(e['COMPRESSED'])/1e6:.0f} MB compressed; {mb:.0f} MB of file data (pronto's `fileBytes`, the data size used for MB/s of both). Cache key {e['KEY']}, manifest {e['REF_DIGEST']}.
Machine: {e['MACHINE']}. Versions: {e['VERSIONS']}.
Method: local docker-registry on loopback, fresh directories, `sync; echo 3 > /proc/sys/vm/drop_caches` before each measured command, order alternated between runs. CPU = user+sys of the tool's processes (not the registry's).

| tool | median s | min s | max s | MB/s (median) | CPU s (median) |
|---|---|---|---|---|---|
{row("pronto image unpack", pronto, pronto_cpu)}
{row("skopeo copy + umoci unpack", umoci, umoci_cpu)}
{row("&nbsp;&nbsp;of which skopeo copy", skopeo_part)}
{row("&nbsp;&nbsp;of which umoci unpack", umoci_part)}

Ratio pronto / (skopeo + umoci), median times: **{med_p / med_u:.2f}** ({'pronto faster' if med_p < med_u else 'pronto slower'}, {max(med_p, med_u) / min(med_p, med_u):.2f}x).

Raw wall seconds — pronto: {', '.join(f'{x:.2f}' for x in pronto)}; skopeo+umoci: {', '.join(f'{x:.2f}' for x in umoci)}.
pronto's own summary (run 1): layers {summary.get('layers')}, compressedBytes {summary.get('compressedBytes')}, fileBytes {summary.get('fileBytes')}, entries {summary.get('entries')}, whiteouts {summary.get('whiteouts')}, elapsed {summary.get('elapsed')} s.
Whole benchmark script: {float(e['TOTAL_SECS']):.0f} s.""")
PY
publish_report "$work/report.md" "$bench_dir/results/unpack-$REPORT_DATE.md"
