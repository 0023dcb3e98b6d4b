#!/usr/bin/env bash
# The lazy rootfs against a plain unpack of the same image, in the same run: what a program's
# start fetches, and read/metadata speed through the mount (cold, after a daemon restart, steady).
#
#   bash bench/lazyfs.sh [--runs N] [--chunk-size 1M] [--image python-large|host]
#                                                              (default 3 runs; root, Debian 12)
#
# --image python-large (default): the >= 1 GB image of bench/convert-large.sh (Python + numpy/
#   scipy/pandas/sklearn/matplotlib + torch); needs its image trees cached (run it once first:
#   it downloads the wheels). The start imports numpy, scipy, pandas and sklearn.
# --image host: no download, no cache needed: the host's Python (binary and standard library),
#   /usr/lib/x86_64-linux-gnu and /usr/share, about 1.4 GB, as four layers. The start imports a
#   dozen standard-library modules.
# Everything else (registry, unpack, mount, chunk cache) lives in a temp dir removed on exit; the
# registry and the mount process are ended by PID. Page cache dropped before every measured
# command.
set -euo pipefail
cd "$(dirname "$0")/.."
repo_root=$PWD
script_start=$EPOCHREALTIME

runs=3
chunk=1M
image=python-large
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=${2:?--runs needs a value}; shift 2 ;;
    --chunk-size) chunk=${2:?--chunk-size needs a value}; shift 2 ;;
    --image) image=${2:?--image needs a value}; shift 2 ;;
    -h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
case "$image" in python-large | host) ;; *) echo "--image: python-large or host, not $image" >&2; exit 2 ;; esac
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || { echo "--runs must be a positive integer" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "run as root (mounts, drops the page cache)" >&2; exit 1; }

log() { printf '== [+%ss] %s\n' "$(awk -v a="$script_start" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.0f", b-a}')" "$*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

bash scripts/install-deps.sh
PY=/usr/bin/python3
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
. "$repo_root/bench/lib.sh"
build_pronto

work=$(mktemp -d /var/tmp/pronto-bench-lazyfs.XXXXXX)
registry_pid=""
mount_pid=""
build_tmp=""
cleanup() {
  if [ -n "$mount_pid" ]; then kill -TERM "$mount_pid" 2>/dev/null || true; wait "$mount_pid" 2>/dev/null || true; fi
  if [ -n "$registry_pid" ]; then kill "$registry_pid" 2>/dev/null || true; wait "$registry_pid" 2>/dev/null || true; fi
  umount -l "$work/mnt" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
copy_binaries

# ---------------------------------------------------------------------------------------------
# 1. The image, and the program whose start is measured (Python, from the tree under test).
if [ "$image" = python-large ]; then
  # Layers 1-3 from the shared recipe, layer 4 (torch) from convert-large.sh's cache.
  . "$repo_root/bench/python-image.sh"
  lcache=""
  for d in $(ls -dt /var/cache/pronto-bench/large-* 2>/dev/null); do
    if [ -f "$d/RECIPE" ] && [ "$(head -c ${#recipe} "$d/RECIPE")" = "$recipe" ]; then lcache=$d; break; fi
  done
  [ -n "$lcache" ] || die "no torch layers cached for this recipe: run bench/convert-large.sh once first (or --image host)"
  layers=("$cache/layer1" "$cache/layer2" "$cache/layer3" "$lcache/layer4")
  image_bytes=$(du -sbc "${layers[@]}" | tail -1 | cut -f1)
  log "image: $image_bytes bytes of files (du -sb) from $cache + $lcache"
  layer_args=()
  for l in "${layers[@]}"; do layer_args+=(--layer "$l"); done
  image_args=(--env PATH=/opt/venv/bin:/usr/bin:/bin --entrypoint /opt/venv/bin/python)
  site=/opt/venv/lib/python$pyver/site-packages
  startup_imports="import numpy, scipy.linalg, pandas, sklearn.linear_model"
  startup_check="numpy.linalg.det(numpy.eye(3)) + len(pandas.DataFrame({'a': [1, 2]}))"
else
  pyver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  mkdir -p "$work/pybin/usr/bin"
  cp -a "/usr/bin/python$pyver" "$work/pybin/usr/bin/"
  host_dirs=("/usr/lib/python$pyver" /usr/lib/x86_64-linux-gnu /usr/share)
  layer_args=(--layer "$work/pybin")
  for d in "${host_dirs[@]}"; do layer_args+=(--layer "$d:${d#/}"); done
  image_bytes=$(du -sbc "$work/pybin" "${host_dirs[@]}" | tail -1 | cut -f1)
  log "image: $image_bytes bytes of files (du -sb): the host's python$pyver, ${host_dirs[*]}"
  image_args=(--entrypoint "/usr/bin/python$pyver")
  site=/usr/lib/python$pyver
  startup_imports="import json, decimal, fractions, asyncio, email.mime.multipart, http.server, sqlite3, xml.etree.ElementTree, unittest, argparse, logging, ssl, ctypes, csv, zipfile, tarfile"
  startup_check="len(json.dumps({'a': [1, 2]})) + int(decimal.Decimal('1.5') * 2)"
fi

start_registry
registry="127.0.0.1:$port"
ref="$registry/bench/$image:v1"
"$bin/pronto-mkimage" --compression gzip "${image_args[@]}" "${layer_args[@]}" "$ref" >/dev/null
layers_gz=$(curl -sf -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$registry/v2/bench/$image/manifests/v1" |
  "$PY" -c 'import json,sys; print(sum(l["size"] for l in json.load(sys.stdin)["layers"]))')
log "pushed $ref (gzip layers $layers_gz bytes); converting with $chunk chunks"
convert_json=$("$bin/pronto" image convert "$ref" --chunk-size "$chunk" --work-dir "$work/convert" --memo none --json)
rm -rf "$work/convert"
native="$work/native"
"$bin/pronto" image unpack "$ref" "$native" >/dev/null
log "unpacked the same image to $native (ground truth and native baseline)"

drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
mnt="$work/mnt"
mkdir -p "$mnt"
mount_lazy() { # $1: chunk cache dir. Starts `pronto image mount`, waits until it serves.
  rm -f "$work/mount.json"
  "$bin/pronto" image mount "$ref" "$mnt" --cache-dir "$1" --json >"$work/mount.json" 2>"$work/mount.err" &
  mount_pid=$!
  for _ in $(seq 400); do [ -e "$mnt/usr" ] && return 0; sleep 0.05; done
  cat "$work/mount.err" >&2; die "mount did not come up"
}
unmount_lazy() { # stops the mount; its counters (JSON) are in $work/mount.json
  # TERM, not INT: a background job of a script starts with SIGINT ignored.
  local rc=0
  kill -TERM "$mount_pid"; wait "$mount_pid" || rc=$?
  [ "$rc" = 0 ] || { cat "$work/mount.err" >&2; die "pronto image mount failed (wait status $rc)"; }
  mount_pid=""
  [ -s "$work/mount.json" ] || { cat "$work/mount.err" >&2; die "pronto image mount printed no counters"; }
}

# The workload: a program's start on the image (the interpreter and the libraries read from
# the tree under test, host libc).
do_startup() { # $1 root
  PYTHONHOME="$1/usr" PYTHONDONTWRITEBYTECODE=1 "$1/usr/bin/python$pyver" -c "
import sys; sys.path.insert(0, '$1$site')
$startup_imports
print($startup_check)" >/dev/null
}
big=$(cd "$native" && find . -type f -printf '%s %P\n' | sort -n | tail -1 | cut -d' ' -f2-)
big_size=$(stat -c %s "$native/$big")
do_seq() { dd if="$1/$big" of=/dev/null bs=1M 2>/dev/null; }
do_rand() { # 2000 reads of 4 KiB at fixed random offsets
  "$PY" - "$1/$big" <<'PY'
import os, random, sys
fd = os.open(sys.argv[1], os.O_RDONLY); size = os.fstat(fd).st_size
rng = random.Random(1)
for _ in range(2000):
    os.pread(fd, 4096, rng.randrange(0, size - 4096))
PY
}
do_walk() { find "$1" -ls >/dev/null; }
resident_bytes() { # bytes of the tree's files in the page cache
  (cd "$1" && find . -type f -print0 | xargs -0 fincore -b -n -o RES 2>/dev/null) | awk '{s += $1} END {print s + 0}'
}
timed() { local t0; t0=$(now); "$@" || { echo "error: $* failed" >&2; return 1; }; awk -v a="$t0" -v b="$(now)" 'BEGIN{printf "%.3f", b-a}'; }
# The mount builds backing files (FUSE passthrough) in the background once a file's chunks are all
# cached. Waits until the largest file has one and the set has not changed for 2 s (no temporary
# left), as a node does between starts; prints how long that took.
settle() { # $1 chunk cache dir
  local t0 last="" cur stable=0
  t0=$(now)
  for _ in $(seq 1200); do
    cur=$(find "$1/files" -type f -printf '%s %f\n' 2>/dev/null | sort | md5sum)
    if [ "$cur" = "$last" ] && ! find "$1/files" -name '.tmp*' 2>/dev/null | grep -q . &&
      find "$1/files" -type f -size "${big_size}c" 2>/dev/null | grep -q .; then
      stable=$((stable + 1))
      [ "$stable" -ge 4 ] && { awk -v a="$t0" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; return 0; }
    else
      stable=0
    fi
    last=$cur
    sleep 0.5
  done
  echo "error: backing files still changing (or none for the largest file) after 600 s" >&2
  return 1
}

results="$work/results.txt"
: >"$results"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
for i in $(seq "$runs"); do
  log "run $i/$runs"
  # Native, cold page cache.
  drop; t=$(timed do_startup "$native"); echo "native startup $t" >>"$results"
  echo "native startup_read_bytes $(resident_bytes "$native")" >>"$results"
  drop; t=$(timed do_seq "$native"); echo "native seq $t" >>"$results"
  drop; t=$(timed do_rand "$native"); echo "native rand $t" >>"$results"
  drop; t=$(timed do_walk "$native"); echo "native walk $t" >>"$results"

  # Lazy, cold: empty chunk cache, fresh mount, cold page cache. One mount per measurement so
  # each starts from nothing.
  for what in startup seq rand walk; do
    rm -rf "$work/cache"; drop
    t0=$(now); mount_lazy "$work/cache"
    echo "lazy mount $(awk -v a="$t0" -v b="$(now)" 'BEGIN{printf "%.3f", b-a}')" >>"$results"
    t=$(timed "do_$what" "$mnt")
    unmount_lazy; stats=$(cat "$work/mount.json")
    echo "cold $what $t" >>"$results"
    echo "cold ${what}_stats $(echo "$stats" | tr -d ' \n')" >>"$results"
  done

  # Lazy, warm node cache = after a daemon restart: what the cold startup/seq/rand fetched (and
  # the backing files the mount built from it), on a fresh mount (a new process) with a cold page
  # cache: nothing from the registry.
  rm -rf "$work/cache"; mount_lazy "$work/cache"
  do_startup "$mnt"; do_seq "$mnt"; do_rand "$mnt"
  t=$(settle "$work/cache") || die "the mount built no backing file for the largest file"
  echo "lazy settle $t" >>"$results"
  unmount_lazy
  echo "lazy backing_files $(find "$work/cache/files" -type f | wc -l)" >>"$results"
  echo "lazy backing_bytes $(du -sb "$work/cache/files" | cut -f1)" >>"$results"
  for what in startup seq rand walk; do
    drop; mount_lazy "$work/cache"
    t=$(timed "do_$what" "$mnt")
    unmount_lazy; stats=$(cat "$work/mount.json")
    echo "warm $what $t" >>"$results"
    echo "warm ${what}_stats $(echo "$stats" | tr -d ' \n')" >>"$results"
  done

  # Lazy, steady: one mount (as `pronto serve` keeps its chunk cache open across starts), its
  # cache entries already checked by a first pass; page cache dropped before each measurement.
  mount_lazy "$work/cache"
  do_startup "$mnt"; do_seq "$mnt"; do_rand "$mnt"; do_walk "$mnt"
  settle "$work/cache" >/dev/null || die "backing files still changing on the steady mount"
  for what in startup seq rand walk; do
    drop
    t=$(timed "do_$what" "$mnt")
    echo "steady $what $t" >>"$results"
  done
  unmount_lazy
  echo "steady all_stats $(tr -d ' \n' <"$work/mount.json")" >>"$results"
done

# ---------------------------------------------------------------------------------------------
# Report
date_tag=$(date +%F)
out="bench/results/lazyfs-$date_tag-$image.md"
mkdir -p bench/results
RESULTS="$results" CONVERT="$convert_json" IMAGE_BYTES="$image_bytes" LAYERS_GZ="$layers_gz" BIG="$big" \
BIG_SIZE="$big_size" CHUNK="$chunk" VERSION="$pronto_version" RUNS="$runs" IMAGE="$image" \
LOAD_START="$load_start" LOAD_END="$(cut -d' ' -f1-3 /proc/loadavg)" STARTUP="$startup_imports" \
"$PY" - >"$out" <<'PY'
import json, os, statistics
rows = {}
for line in open(os.environ["RESULTS"]):
    mode, what, value = line.split(" ", 2)
    rows.setdefault((mode, what), []).append(value.strip())
med = lambda k: statistics.median(float(v) for v in rows[k])
rng = lambda k: f"{min(map(float, rows[k])):.3f}–{max(map(float, rows[k])):.3f}"
stats = lambda k: [json.loads(v) for v in rows[k]]
mstat = lambda k, f: statistics.median(s[f] for s in stats(k))
c = json.loads(os.environ["CONVERT"])
img = int(os.environ["IMAGE_BYTES"]); big = int(os.environ["BIG_SIZE"])
read_native = med(("native", "startup_read_bytes"))
fetched = mstat(("cold", "startup_stats"), "fetchedContentBytes")
E = os.environ
print(f"""# Lazy rootfs ({E['IMAGE']} image): {E['RUNS']} runs, medians (min–max)

`bash bench/lazyfs.sh --runs {E['RUNS']} --chunk-size {E['CHUNK']} --image {E['IMAGE']}` at {E['VERSION']}; load average at the start {E['LOAD_START']}, at the end {E['LOAD_END']}.

Image: {img / 1e6:,.0f} MB of files (du -sb), {c['files']:,} files, gzip layers {int(E['LAYERS_GZ']) / 1e6:,.0f} MB; converted with {c['chunkSize'] >> 10} KiB chunks (zstd): {c['chunks']:,} chunks, packs {c['storedBytes'] / 1e6:,.0f} MB, index {c['indexSize'] / 1e6:.1f} MB. Registry: docker-registry on loopback. Every measured command starts with `sync; echo 3 > /proc/sys/vm/drop_caches`. *Native* = the same command on `pronto image unpack` of the same image (ext4, same disk). Lazy:
- *cold*: empty chunk cache, fresh `pronto image mount`;
- *after restart* (a *warm* node): a fresh `pronto image mount` process over the chunk cache that a previous mount filled with the same startup, sequential and random reads, and the backing files it built from them in the background (FUSE passthrough; the previous mount was left {med(('lazy','settle')):.1f} s median to build them: {med(('lazy','backing_files')):.0f} files, {med(('lazy','backing_bytes')) / 1e6:,.0f} MB);
- *steady*: one mount (as `pronto serve` keeps it), every operation done once before, page cache dropped before each measurement.

## Targets (issue 14): speed as a ratio to native (native time / lazy time), same run

| figure | steady | after restart | target |
|---|---|---|---|""")
def ratio(mode, what):
    return med(("native", what)) / med((mode, what))
for what, label, steady_target, restart_target in [
    ("seq", f"sequential read (dd bs=1M) of the largest file", 0.97, None),
    ("rand", "2000 random 4 KiB preads of it", 0.95, 0.90),
    ("walk", "metadata walk (`find -ls` of the tree)", 0.95, None),
]:
    s, w = ratio("steady", what), ratio("warm", what)
    ok = lambda v, t: "" if t is None else (" ✓" if v >= t else " ✗")
    tgt = f"steady ≥ {steady_target}" + (f", after restart ≥ {restart_target}" if restart_target else "")
    print(f"| {label} | **{s:.2f}**{ok(s, steady_target)} | **{w:.2f}**{ok(w, restart_target)} | {tgt} |")
print(f"""
## Startup: `{E['STARTUP']}` (interpreter and libraries read from the tree under test)

| | time s | vs native (time) |
|---|---|---|
| native (unpacked, cold page cache) | {med(('native','startup')):.3f} ({rng(('native','startup'))}) | 1.00× |
| lazy, cold (registry on loopback) | {med(('cold','startup')):.3f} ({rng(('cold','startup'))}) | {med(('cold','startup')) / med(('native','startup')):.2f}× |
| lazy, after restart (warm node cache, fresh mount) | {med(('warm','startup')):.3f} ({rng(('warm','startup'))}) | {med(('warm','startup')) / med(('native','startup')):.2f}× |
| lazy, steady (same mount, page cache dropped) | {med(('steady','startup')):.3f} ({rng(('steady','startup'))}) | {med(('steady','startup')) / med(('native','startup')):.2f}× |

Mount (index fetch + validate + FUSE mount, until the root answers): {med(('lazy','mount')):.3f} s median, not included above.

| bytes | MB | vs image | vs read by the program |
|---|---|---|---|
| image (all files) | {img / 1e6:,.1f} | 1.000 | |
| read by the program (native run: its files' pages in the page cache after the start, `fincore`; includes the kernel's readahead) | {read_native / 1e6:,.1f} | {read_native / img:.3f} | 1.00× |
| fetched by the cold lazy start (content of the chunks fetched) | {fetched / 1e6:,.1f} | {fetched / img:.3f} | **{fetched / read_native:.2f}×** |
| … on the wire (compressed) | {mstat(('cold','startup_stats'), 'fetchedBytes') / 1e6:,.1f} | {mstat(('cold','startup_stats'), 'fetchedBytes') / img:.3f} | |

Cold start: {mstat(('cold','startup_stats'), 'rangeRequests'):.0f} Range requests, {mstat(('cold','startup_stats'), 'fetchedChunks'):.0f} chunks, {mstat(('cold','startup_stats'), 'readRequests'):.0f} FUSE reads, {mstat(('cold','startup_stats'), 'inflightWaits'):.0f} waits on in-flight fetches; mean miss fetch {mstat(('cold','startup_stats'), 'fetchMicrosTotal') / max(1, mstat(('cold','startup_stats'), 'demandRangeRequests')) / 1000:.2f} ms ({mstat(('cold','startup_stats'), 'demandRangeRequests'):.0f} requests readers waited for; {mstat(('cold','startup_stats'), 'readaheadBytes') / 1e6:,.1f} MB read ahead). After restart: {mstat(('warm','startup_stats'), 'fileOpens'):.0f} files opened, {mstat(('warm','startup_stats'), 'passthroughOpens'):.0f} with passthrough, {mstat(('warm','startup_stats'), 'readRequests'):.0f} FUSE reads.

## Reads of the largest file (`{E['BIG']}`, {big / 1e6:,.0f} MB) and a metadata walk

| operation | native s | lazy cold s | lazy after restart s | lazy steady s | steady vs native (speed) | after restart vs native | cold vs native |
|---|---|---|---|---|---|---|---|""")
for what, label in [("seq", "sequential read (dd bs=1M)"), ("rand", "2000 random 4 KiB preads"), ("walk", "`find -ls` of the tree")]:
    n, co, w, st = med(("native", what)), med(("cold", what)), med(("warm", what)), med(("steady", what))
    print(f"| {label} | {n:.3f} ({rng(('native', what))}) | {co:.3f} ({rng(('cold', what))}) | {w:.3f} ({rng(('warm', what))}) | {st:.3f} ({rng(('steady', what))}) | **{n / st:.2f}×** | {n / w:.2f}× | {n / co:.2f}× |")
seq = lambda k: big / 1e6 / med(k)
ws, wr = stats(("warm", "seq_stats")), stats(("warm", "rand_stats"))
print(f"""
Sequential: native {seq(('native','seq')):,.0f} MB/s, lazy cold {seq(('cold','seq')):,.0f} MB/s, after restart {seq(('warm','seq')):,.0f} MB/s, steady {seq(('steady','seq')):,.0f} MB/s. The walk fetched {mstat(('cold','walk_stats'), 'fetchedChunks'):.0f} chunks. Random reads fetched {mstat(('cold','rand_stats'), 'fetchedChunks'):.0f} chunks cold.

Passthrough after restart (counters of the fresh mount, median): sequential read {mstat(('warm','seq_stats'), 'passthroughOpens'):.0f} of {mstat(('warm','seq_stats'), 'fileOpens'):.0f} opens with passthrough, {mstat(('warm','seq_stats'), 'readRequests'):.0f} FUSE reads; random reads {mstat(('warm','rand_stats'), 'passthroughOpens'):.0f} of {mstat(('warm','rand_stats'), 'fileOpens'):.0f}, {mstat(('warm','rand_stats'), 'readRequests'):.0f} FUSE reads. Steady mount (all its operations): {mstat(('steady','all_stats'), 'passthroughOpens'):.0f} of {mstat(('steady','all_stats'), 'fileOpens'):.0f} opens with passthrough, {mstat(('steady','all_stats'), 'readRequests'):.0f} FUSE reads, {mstat(('steady','all_stats'), 'passthroughRefused'):.0f} refused.
""")
PY
log "wrote $out"
cat "$out"
