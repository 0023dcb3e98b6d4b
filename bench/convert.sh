#!/usr/bin/env bash
# Conversion throughput: `pronto image convert` (unpack → chunk, hash, compress → packs → push)
# of the same ≥ 500 MB Python image bench/unpack.sh measures, per chunk size, from a local
# registry, with the page cache dropped before every measured command; plus, in the same run,
# `pronto image unpack` of the image (the baseline for the unpack part), one lz4 conversion and
# one `pronto image verify`. See bench/README.md.
#
#   bash bench/convert.sh [--runs N] [--chunk-sizes 256K,512K,1M,4M]   (default 3 runs; root, Debian 12)
#
# The image's file trees come from bench/unpack.sh's cache (/var/cache/pronto-bench/, same recipe
# and key; built here if missing). Everything else (registry, scratch) lives in a temp dir that
# is removed on exit; the registry is killed by PID.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

runs=3
chunk_sizes="256K,512K,1M,4M"
opt --runs runs
opt --chunk-sizes chunk_sizes
parse_args "$@"
need_positive_int --runs "$runs"
IFS=, read -r -a sizes <<<"$chunk_sizes"
[ ${#sizes[@]} -gt 0 ] || usage_error "--chunk-sizes needs at least one size"
for s in "${sizes[@]}"; do
  # pronto checks the rest (a power of two, 4 KiB..16 MiB)
  [[ "$s" =~ ^[1-9][0-9]*[KM]?$ ]] || usage_error "invalid chunk size $s (e.g. 256K, 1M, 65536)"
done
need_root "drops the page cache, unpacks with owners"

# ---------------------------------------------------------------------------------------------
# 1. What it needs
install_deps
# Debian's python: its stdlib is layer 1, its venv module builds layers 2-3
"$PY" -c 'import venv, ensurepip' >/dev/null 2>&1 || need_packages python3-venv
need_packages time # GNU time: CPU and max RSS of each measured command
build_pronto
bench_init pronto-bench-convert # registry storage, scratch; removed on exit
copy_binaries

# ---------------------------------------------------------------------------------------------
# 2. The image's file trees, cached by recipe hash: bench/python-image.sh, shared with unpack.sh
# and convert-large.sh (the same recipe gives the same key, so they use the same cached trees)
# shellcheck source=python-image.sh
. "$bench_dir/python-image.sh"
image_bytes=$(du -sbc "${layers[@]}" | tail -1 | cut -f1)
image_files=$(find "${layers[@]}" -type f | wc -l)
log "image: $image_bytes bytes uncompressed (du -sb), $image_files files, ${#layers[@]} layers"
[ "$image_bytes" -ge 500000000 ] || die "image is under 500 MB; the recipe needs more packages"

# ---------------------------------------------------------------------------------------------
# 3. Own registry on a free loopback port, storage in a temp dir
start_registry
src_repo=bench/pyvenv
ref="$registry/$src_repo:v1"
push_start=$EPOCHREALTIME
digest=$(push_python_image "$ref" "${layers[@]}")
push_secs=$(secs_since "$push_start" 1)
compressed_bytes=$("$bin/pronto" image inspect "$ref" | jq '.layersSize')
log "pushed $ref ($digest): $compressed_bytes bytes gzip in ${#layers[@]} layers (${push_secs}s to build+push)"

# Every conversion gets a repository of its own holding the same image (blobs mounted from the
# source repository, same manifest bytes, same digest): an artifact or pack pushed by an earlier
# conversion is never found (pronto skips uploading a blob the repository already has), and with
# `--memo none` nothing else is reused either.
save_manifest "$src_repo" v1 "$work/manifest"

# ---------------------------------------------------------------------------------------------
# 4. Measured commands
# Samples, every 0.1 s until PID is gone: "time utime stime busy total" — the process's CPU
# ticks and the whole machine's busy/total ticks (/proc/stat), to split CPU by phase afterwards
# and to see what else ran. Builtins only (plus sleep), so it costs next to nothing.
sample_cpu() { # $1 pid, $2 output file
  local pid=$1 out=$2 stat u n s idle iow irq sirq steal rest
  while read -r stat 2>/dev/null <"/proc/$pid/stat"; do
    read -r _ u n s idle iow irq sirq steal rest </proc/stat
    # shellcheck disable=SC2086 # split into the fields of /proc/PID/stat
    set -- $stat
    echo "$EPOCHREALTIME ${14} ${15} $((u + n + s + irq + sirq + steal)) $((u + n + s + idle + iow + irq + sirq + steal + 0))"
    sleep 0.1
  done >"$out"
}
mkdir -p "$work/m" "$work/wd"
: >"$work/measurements"
# measure ID KIND LABEL RUN COMMAND...: drops the page cache, runs COMMAND under GNU time
# (wall, user, sys, max RSS) with the CPU sampler on it; stdout to m/ID.out.
measure() {
  local id=$1 kind=$2 label=$3 run=$4 m="$work/m/$1" tpid spid rc=0
  shift 4
  drop_caches
  rm -f "$m.pid"
  echo "$EPOCHREALTIME" >"$m.start"
  # shellcheck disable=SC2016 # expanded by that sh: its own PID, then the command
  /usr/bin/time -f '%e %U %S %M' -o "$m.time" \
    sh -c 'echo $$ >"$0"; exec "$@"' "$m.pid" "$@" >"$m.out" 2>"$m.err" &
  tpid=$!
  while [ ! -s "$m.pid" ] && kill -0 "$tpid" 2>/dev/null; do sleep 0.01; done
  spid=""
  if [ -s "$m.pid" ]; then
    sample_cpu "$(cat "$m.pid")" "$m.samples" &
    spid=$!
  fi
  wait "$tpid" || rc=$?
  [ -z "$spid" ] || wait "$spid" || true
  [ "$rc" = 0 ] || { tail -20 "$m.err" >&2; die "$* failed (exit $rc)"; }
  printf '%s %s %s %s\n' "$id" "$kind" "$label" "$run" >>"$work/measurements"
}
wd_empty() { [ -z "$(ls -A "$work/wd")" ] || die "the work dir is not empty after $1: $(ls -A "$work/wd")"; }
lower() { tr '[:upper:]' '[:lower:]' <<<"$1"; }

convert_once() { # $1 chunk size, $2 compression, $3 run number; prints the reference used
  local size=$1 comp=$2 run=$3 id repo r
  id="convert-$comp-$size-r$run"
  repo="bench/conv-$(lower "$comp-$size")-r$run"
  r=$(fresh_repo "$src_repo" "$repo" v1 "$work/manifest")
  measure "$id" convert "$size/$comp" "$run" \
    "$bin/pronto" image convert "$r" --chunk-size "$size" --compression "$comp" \
    --work-dir "$work/wd" --memo none --json
  wd_empty "$id"
  jq -e '.uploadedBytes == .storedBytes and .newPacks == .packs' "$work/m/$id.out" >/dev/null \
    || die "$id reused packs (uploadedBytes != storedBytes): $(cat "$work/m/$id.out")"
  printf '   run %s: convert %-4s %-4s %6.2fs  (unpack %.2fs, chunking %.2fs)\n' "$run" "$size" "$comp" \
    "$(jq .elapsed "$work/m/$id.out")" "$(jq .unpackTime "$work/m/$id.out")" "$(jq .chunkTime "$work/m/$id.out")" >&2
  echo "$r"
}
unpack_once() { # $1 run number
  local id="unpack-r$1"
  measure "$id" unpack unpack "$1" "$bin/pronto" image unpack "$ref" "$work/wd/rootfs" --json
  rm -rf "$work/wd/rootfs"
  printf '   run %s: unpack           %6.2fs\n' "$1" "$(jq .elapsed "$work/m/$id.out")" >&2
}

log "measuring: $runs runs of unpack + convert at ${sizes[*]} (zstd); then lz4 at 1M and verify, once"
verify_ref=""
for i in $(seq "$runs"); do
  # Alternate the order between runs, so that no chunk size always runs right after another.
  order=(unpack "${sizes[@]}")
  if [ $((i % 2)) = 0 ]; then
    for ((a = 0, b = ${#order[@]} - 1; a < b; a++, b--)); do
      t=${order[a]}; order[a]=${order[b]}; order[b]=$t
    done
  fi
  for item in "${order[@]}"; do
    if [ "$item" = unpack ]; then
      unpack_once "$i"
    else
      r=$(convert_once "$item" zstd "$i")
      if [ "$item" = 1M ] || [ -z "$verify_ref" ]; then verify_ref=$r; verify_size=$item; fi
    fi
  done
done
convert_once 1M lz4 1 >/dev/null
measure verify verify "$verify_size/zstd" 1 "$bin/pronto" image verify "$verify_ref" --work-dir "$work/wd"
wd_empty verify
log "verify ($verify_size, zstd): $(cat "$work/m/verify.out")"

# ---------------------------------------------------------------------------------------------
# 5. Report
report_env "$work"
CLK_TCK=$(getconf CLK_TCK) NCPU=$(nproc)
VERSIONS="pronto $pronto_version, $(docker-registry --version | awk '{print $2, $3}')"
export RUNS=$runs SIZES="${sizes[*]}" IMAGE_BYTES=$image_bytes IMAGE_FILES=$image_files \
  COMPRESSED=$compressed_bytes NLAYERS=${#layers[@]} REF_DIGEST=$digest KEY=$key \
  VERIFY_SIZE=$verify_size CLK_TCK NCPU VERSIONS
"$PY" - "$work/m" "$work/measurements" >"$work/report.md" <<'PY'
import json, os, statistics, sys
mdir, listing = sys.argv[1], sys.argv[2]
e = os.environ
tck, ncpu = int(e["CLK_TCK"]), int(e["NCPU"])
med = statistics.median

def load(mid, kind, label, run):
    m = {"id": mid, "kind": kind, "label": label, "run": int(run)}
    wall, user, sys_, rss = open(f"{mdir}/{mid}.time").read().split()[-4:]
    m.update(wall=float(wall), cpu=float(user) + float(sys_), rss_mb=int(rss) / 1024)
    text = open(f"{mdir}/{mid}.out").read()
    m["json"] = json.loads(text) if kind != "verify" else None
    m["text"] = text.strip()
    start = float(open(f"{mdir}/{mid}.start").read())
    samples = [tuple(map(float, l.split())) for l in open(f"{mdir}/{mid}.samples") if l.strip()]
    m["samples"], m["start"] = samples, start
    return m

def at(samples, t, col):
    """Cumulative counter `col` at time t, linearly interpolated between samples."""
    if t <= samples[0][0]:
        return samples[0][col]
    for a, b in zip(samples, samples[1:]):
        if a[0] <= t <= b[0]:
            return a[col] + (b[col] - a[col]) * (t - a[0]) / (b[0] - a[0])
    return samples[-1][col]

def window(m, t0, t1):
    """(own CPU in cores, machine busy in cores, others in cores) over [t0, t1]."""
    s = m["samples"]
    if len(s) < 2 or t1 - t0 < 0.2:
        return None
    own = (at(s, t1, 1) + at(s, t1, 2) - at(s, t0, 1) - at(s, t0, 2)) / tck
    busy, total = at(s, t1, 3) - at(s, t0, 3), at(s, t1, 4) - at(s, t0, 4)
    machine = ncpu * busy / total if total else 0
    return own / (t1 - t0), machine, max(0.0, machine - own / (t1 - t0))

def phases(m):
    """Unpack and chunking windows of a conversion: the process's wall time minus the report's
    `elapsed` is start-up + resolve, which come first."""
    j = m["json"]
    t0 = m["start"] + max(0.0, m["wall"] - j["elapsed"])
    t1 = t0 + j["unpackTime"]
    t2 = t1 + j["chunkTime"]
    return window(m, t0, t1), window(m, t1, t2), window(m, m["start"], m["start"] + m["wall"])

ms = [load(*l.split()) for l in open(listing) if l.strip()]
unpacks = [m for m in ms if m["kind"] == "unpack"]
verify = next(m for m in ms if m["kind"] == "verify")
sizes = e["SIZES"].split()
conv = {s: [m for m in ms if m["kind"] == "convert" and m["label"] == f"{s}/zstd"] for s in sizes}
lz4 = [m for m in ms if m["kind"] == "convert" and m["label"] == "1M/lz4"]
gz = int(e["COMPRESSED"])

def mb(x): return x / 1e6
def pct(x): return f"{100 * x:.0f}%"
def medj(xs, k): return med([x["json"][k] for x in xs])
def fmt_cpu(w): return "–" if w is None else f"{100 * w[0]:.0f}%"

rows1, rows2, targets = [], [], []
def conv_rows(name, xs):
    fb = xs[0]["json"]["fileBytes"]
    el = [x["json"]["elapsed"] for x in xs]
    push = med([x["json"]["elapsed"] - x["json"]["unpackTime"] - x["json"]["chunkTime"] for x in xs])
    ph = [phases(x) for x in xs]
    cu = med([p[0][0] for p in ph if p[0]]) if any(p[0] for p in ph) else None
    cc = med([p[1][0] for p in ph if p[1]]) if any(p[1] for p in ph) else None
    oth = med([p[1][2] for p in ph if p[1]]) if any(p[1] for p in ph) else None
    rng = f" ({min(el):.2f}–{max(el):.2f})" if len(xs) > 1 else ""
    rows1.append(f"| {name} | {med(el):.2f}{rng} | **{mb(fb) / med(el):.0f}** | {medj(xs, 'unpackTime'):.2f} | {medj(xs, 'chunkTime'):.2f} | {push:.2f} | {med([x['cpu'] for x in xs]):.1f} | {'–' if cu is None else pct(cu)} / {'–' if cc is None else pct(cc)} / {pct(med([x['cpu'] / x['wall'] for x in xs]))} | {'–' if oth is None else f'{oth:.2f}'} | {med([x['rss_mb'] for x in xs]):.0f} |")
    j = xs[0]["json"]
    same = len({x["json"]["indexDigest"] for x in xs}) == 1
    rows2.append(f"| {name} | {medj(xs, 'indexSize'):,.0f} | {100 * medj(xs, 'indexSize') / fb:.3f}% | {mb(medj(xs, 'storedBytes')):.1f} | {medj(xs, 'storedBytes') / gz:.2f} | {medj(xs, 'storedBytes') / fb:.2f} | {medj(xs, 'chunks'):,.0f} ({medj(xs, 'reusedChunks'):,.0f}) | {medj(xs, 'packs'):.0f} | {'yes' if same else 'NO'} |")
    return mb(fb) / med(el), medj(xs, 'indexSize') / fb

speeds, ratios = {}, {}
for s in sizes:
    speeds[s], ratios[s] = conv_rows(f"{s} zstd", conv[s])
if lz4:
    speeds["1M lz4"], ratios["1M lz4"] = conv_rows("1M lz4 (1 run)", lz4)

fb = ms[[m["kind"] for m in ms].index("convert")]["json"]["fileBytes"]
up_el = [u["json"]["elapsed"] for u in unpacks]
up_ph = [window(u, u["start"], u["start"] + u["wall"]) for u in unpacks]
conv_unpack = {s: medj(conv[s], "unpackTime") for s in sizes}
ref_size = "1M" if "1M" in sizes else sizes[0]
v = verify
vw = window(v, v["start"], v["start"] + v["wall"])
ready_1g = 1000 / speeds[ref_size]
first = ms[[m["kind"] for m in ms].index("convert")]["json"]
uj = unpacks[0]["json"]

print(f"""### Image conversion, {e['RUNS']} runs per chunk size

Image: {int(e['IMAGE_BYTES']) / 1e6:.0f} MB uncompressed (du -sb), {first['files']} files, {e['NLAYERS']} gzip layers ({gz / 1e6:.1f} MB, `layersSize`); **{fb / 1e6:.1f} MB of file data** (`fileBytes`, the data size for every MB/s below). Cache key {e['KEY']}, manifest {e['REF_DIGEST']}.
Machine: {e['MACHINE']}. Versions: {e['VERSIONS']}. Load average (1/5/15 min): {e['LOAD_START']} at the start, {e['LOAD_END']} at the end.
Method: `pronto image convert REF --chunk-size S --compression zstd --work-dir DIR --memo none --json` from a local docker-registry on loopback; each conversion into a repository of its own (same image, blobs mounted), so nothing an earlier conversion pushed is found (checked: `uploadedBytes == storedBytes` every time); `sync; echo 3 > /proc/sys/vm/drop_caches` before every measured command; per run the order is `unpack {' '.join(sizes)}`, reversed on even runs. Medians over the runs.

| conversion | total s (min–max) | MB/s of file data | unpack s | chunking s | push s | CPU s | CPU: unpack / chunking / whole | others' CPU while chunking (cores) | max RSS MB |
|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows1)}

| conversion | index bytes | index / fileBytes | stored MB (packs) | stored / gzip layers | stored / fileBytes | chunks (reused) | packs | same index digest every run |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows2)}

- total = the report's `elapsed` (after resolving the reference); unpack = `unpackTime` (full pull into the work dir); chunking = `chunkTime` (walk, read, BLAKE3, compress, write packs, build the index); push = the rest (packs, index, manifest to the registry).
- CPU s = user+sys of the `pronto` process (GNU time); the CPU % are of one core ({ncpu} cores = {100 * ncpu}%), per phase from /proc/PID/stat sampled every 0.1 s; "others" = the whole machine's busy cores (/proc/stat) minus pronto's, over the chunking phase (the registry, and any other load on the machine).
- **Baseline, `pronto image unpack` of the same image, same runs:** {med(up_el):.2f} s median ({', '.join(f'{x:.2f}' for x in up_el)}), {fb / 1e6 / med(up_el):.0f} MB/s, CPU {med([u['cpu'] for u in unpacks]):.1f} s ({pct(med([w[0] for w in up_ph if w]))} of a core); the conversions' unpack part: {', '.join(f'{s} {conv_unpack[s]:.2f} s' for s in sizes)}.
- **Verify** (`pronto image verify` of the {e['VERIFY_SIZE']} zstd conversion, once): {v['wall']:.2f} s wall, CPU {v['cpu']:.1f} s ({'–' if vw is None else pct(vw[0])} of a core), max RSS {v['rss_mb']:.0f} MB; **passed**: `{v['text']}`.

Targets:
- ≥ 150 MB/s of uncompressed data on {ncpu} cores: {'; '.join(f"{k} {x:.0f} MB/s {'✓' if x >= 150 else '✗'}" for k, x in speeds.items())}.
- index ≤ 1% of the image: {'; '.join(f"{k} {100 * x:.3f}% {'✓' if x <= 0.01 else '✗'}" for k, x in ratios.items())}.
- Ready within 60 s for a 1 GB image: extrapolated, not measured: 1000 MB at {ref_size} zstd's {speeds[ref_size]:.0f} MB/s ≈ **{ready_1g:.1f} s** of conversion {'✓' if ready_1g <= 60 else '✗'} (linear in file data; a real 1 GB image also downloads its layers over a network, which this loopback registry does not).

Raw `elapsed` seconds per run (unpack / chunking): {'; '.join(f"{s}: " + ', '.join(f"{x['json']['elapsed']:.2f} ({x['json']['unpackTime']:.2f}/{x['json']['chunkTime']:.2f})" for x in sorted(conv[s], key=lambda x: x['run'])) for s in sizes)}{'; 1M lz4: ' + ', '.join(f"{x['json']['elapsed']:.2f} ({x['json']['unpackTime']:.2f}/{x['json']['chunkTime']:.2f})" for x in lz4) if lz4 else ''}.
pronto unpack's own summary (run 1): layers {uj.get('layers')}, compressedBytes {uj.get('compressedBytes')}, fileBytes {uj.get('fileBytes')}, entries {uj.get('entries')}.
Whole benchmark script: {float(e['TOTAL_SECS']):.0f} s.""")
PY
publish_report "$work/report.md" "$bench_dir/results/convert-$REPORT_DATE.md"
