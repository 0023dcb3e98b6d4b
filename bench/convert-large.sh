#!/usr/bin/env bash
# Conversion on a ≥ 1 GB image, and dedup between two versions of it: `pronto image convert` of
# bench/convert.sh's Python image plus a fourth layer with PyTorch (PyPI's torch wheel, installed
# without its CUDA dependencies) from a local registry, page cache dropped before every measured
# command; then v1 and v2 (same layers, the torch layer changed: one file edited, one small
# package added) converted into the same repository with the same chunk memo. See bench/README.md.
#
#   bash bench/convert-large.sh [--runs N]      (default 3; root, Debian 12)
#
# Layers 1-3 come from bench/unpack.sh's cache (/var/cache/pronto-bench/image-<key>/, run
# bench/unpack.sh or bench/convert.sh once first); the torch layers are built once and cached in
# /var/cache/pronto-bench/large-<key>/ (wheels in /var/cache/pronto-bench/wheels/). Everything
# else (registry, scratch, memo) lives in a temp dir removed on exit; the registry is killed by PID.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

runs=3
opt --runs runs
parse_args "$@"
need_positive_int --runs "$runs"
need_root "drops the page cache, unpacks with owners"

# ---------------------------------------------------------------------------------------------
# 1. What it needs
install_deps
"$PY" -c 'import venv, ensurepip' >/dev/null 2>&1 || need_packages python3-venv
need_packages time # GNU time: CPU and max RSS of each measured command
build_pronto
bench_init pronto-bench-convert-large # registry storage, scratch, memo; removed on exit
copy_binaries

# ---------------------------------------------------------------------------------------------
# 2. The image's file trees.
# Layers 1-3: the shared recipe (built here too if not cached yet).
# shellcheck source=python-image.sh
. "$bench_dir/python-image.sh"

# Layer 4 (v1): PyPI's torch wheel, --no-deps (on Linux x86_64 it requires ~3 GB of nvidia-*/cuda
# packages, which are left out: the image is CPU-only in practice) plus its pure dependencies.
# Layer 4 (v2): the same, with one file edited (torch/version.py) and one small package added.
torch_pkgs="torch==2.15.0"
torch_deps="filelock==4.2.12 typing-extensions==4.16.0 sympy==1.14.0 networkx==3.6.1 jinja2==3.1.6
fsspec==2026.9.0 mpmath==1.4.1 MarkupSafe==3.0.4"
v2_pkgs="tqdm==4.70.1"
v2_edit="torch/version.py"
large_recipe="$recipe
large v1
layer4 pip install --no-deps --only-binary=:all: --compile $torch_pkgs $torch_deps
layer4v2 layer4 + pip install --no-deps --compile $v2_pkgs; append a line to $v2_edit"
lkey=$(printf '%s' "$large_recipe" | sha256sum | cut -c1-16)
lcache="$cache_root/large-$lkey"
wheels="$cache_root/wheels"

# shellcheck disable=SC2086,SC2012 # package lists split on purpose; file names from pip
build_large() {
  local tmp venv sp="lib/python$pyver/site-packages" name
  mkdir -p "$cache_root" "$wheels"
  tmp=$(mktemp -d "$cache_root/.build-large-$lkey.XXXXXX")
  build_tmp=$tmp
  log "building the torch layers in $tmp"
  # a venv equal to layers 2+3, to install into
  venv="$tmp/build/opt/venv"
  mkdir -p "$tmp/build/opt"
  cp -a "$cache/layer2/opt/venv" "$venv"
  cp -a "$cache/layer3/opt/venv/." "$venv/"
  "$venv/bin/python" -m pip download -q --no-input --disable-pip-version-check --no-deps \
    --only-binary=:all: -d "$wheels" $torch_pkgs $torch_deps $v2_pkgs
  local pip=(env -u PYTHONDONTWRITEBYTECODE "$venv/bin/python" -m pip install -q --no-input
    --disable-pip-version-check --no-index --find-links "$wheels" --no-deps --only-binary=:all: --compile)
  split_new() { # $1 destination layer dir: move what the last pip step added
    mkdir -p "$1/opt/venv/$sp" "$1/opt/venv/bin"
    comm -13 "$tmp/sp.before" <(cd "$venv/$sp" && ls -A | sort) | while IFS= read -r name; do
      mv "$venv/$sp/$name" "$1/opt/venv/$sp/"
    done
    comm -13 "$tmp/bin.before" <(cd "$venv/bin" && ls -A | sort) | while IFS= read -r name; do
      mv "$venv/bin/$name" "$1/opt/venv/bin/"
    done
  }
  (cd "$venv/$sp" && ls -A) | sort >"$tmp/sp.before"
  (cd "$venv/bin" && ls -A) | sort >"$tmp/bin.before"
  "${pip[@]}" $torch_pkgs $torch_deps
  # does it import (CPU) without the CUDA packages? recorded, not required
  if "$venv/bin/python" -c 'import torch; print("torch", torch.__version__, "imports; cuda available:", torch.cuda.is_available(), "; randn(4).sum() =", float(torch.randn(4).sum()))' >"$tmp/IMPORT_CHECK" 2>"$tmp/import.err"; then :; else
    echo "import torch fails without the CUDA packages: $(tail -1 "$tmp/import.err" | cut -c1-80)…" >"$tmp/IMPORT_CHECK"
  fi
  rm -f "$tmp/import.err"
  split_new "$tmp/layer4"
  # remove pycache written by the import check into layers 2-3 copies (irrelevant: build venv only)
  "${pip[@]}" $v2_pkgs
  cp -a "$tmp/layer4" "$tmp/layer4v2"
  split_new "$tmp/layer4v2"
  local f="$tmp/layer4v2/opt/venv/$sp/$v2_edit"
  printf '\n# v2: rebuilt with %s\n' "$v2_pkgs" >>"$f"
  "$PY" -c 'import py_compile, sys; py_compile.compile(sys.argv[1], doraise=True)' "$f"
  rm -rf "$tmp/build" "$tmp"/*.before
  printf '%s\n' "$large_recipe" >"$tmp/RECIPE"
  rm -rf "$lcache"
  mv "$tmp" "$lcache"
  # shellcheck disable=SC2034 # python-image.sh's exit hook removes $build_tmp
  build_tmp=""
}
if [ -f "$lcache/RECIPE" ]; then log "torch layers cached: $lcache"; else build_large; fi
v1_layers=("$cache/layer1" "$cache/layer2" "$cache/layer3" "$lcache/layer4")
v2_layers=("$cache/layer1" "$cache/layer2" "$cache/layer3" "$lcache/layer4v2")
image_bytes=$(du -sbc "${v1_layers[@]}" | tail -1 | cut -f1)
image2_bytes=$(du -sbc "${v2_layers[@]}" | tail -1 | cut -f1)
image_files=$(find "${v1_layers[@]}" -type f | wc -l)
layer_sizes=""
for l in "${v1_layers[@]}" "$lcache/layer4v2"; do
  layer_sizes+="$(basename "$l") $(du -sb "$l" | cut -f1) $(find "$l" -type f | wc -l);"
done
log "image v1: $image_bytes bytes (du -sb), $image_files files; v2: $image2_bytes bytes"
[ "$image_bytes" -ge 1000000000 ] || die "image is under 1 GB"
import_check=$(head -c 300 "$lcache/IMPORT_CHECK" 2>/dev/null | tr '\n' ' ' || echo '?')
import_check=${import_check//"$lcache"/…}

# ---------------------------------------------------------------------------------------------
# 3. Own registry on a free loopback port; v1 and v2 as two tags of one repository
start_registry
src_repo=bench/pylarge
t0=$EPOCHREALTIME
digest1=$(push_python_image "$registry/$src_repo:v1" "${v1_layers[@]}")
log "pushed v1 ($digest1) in $(secs_since "$t0") s"
t0=$EPOCHREALTIME
digest2=$(push_python_image "$registry/$src_repo:v2" "${v2_layers[@]}")
log "pushed v2 ($digest2) in $(secs_since "$t0") s"
"$bin/pronto" image inspect "$registry/$src_repo:v1" >"$work/inspect-v1.json"
"$bin/pronto" image inspect "$registry/$src_repo:v2" >"$work/inspect-v2.json"
compressed1=$(jq '.layersSize' "$work/inspect-v1.json")
compressed2=$(jq '.layersSize' "$work/inspect-v2.json")
save_manifest "$src_repo" v1 "$work/manifest-v1"
save_manifest "$src_repo" v2 "$work/manifest-v2"
shared_layers=$(jq -n --slurpfile a "$work/manifest-v1.json" --slurpfile b "$work/manifest-v2.json" \
  '[range(0; $a[0].layers | length) | select($a[0].layers[.].digest == $b[0].layers[.].digest)] | length')
log "gzip layers: v1 $compressed1 bytes, v2 $compressed2 bytes; $shared_layers of ${#v1_layers[@]} layer blobs shared"

# ---------------------------------------------------------------------------------------------
# 4. Measured commands (same method as convert.sh: drop caches, GNU time)
mkdir -p "$work/m" "$work/wd"
: >"$work/measurements"
measure() { # ID KIND RUN COMMAND...
  local id=$1 kind=$2 run=$3 m="$work/m/$1"
  shift 3
  drop_caches
  /usr/bin/time -f '%e %U %S %M' -o "$m.time" "$@" >"$m.out" 2>"$m.err" \
    || { tail -20 "$m.err" >&2; die "$* failed"; }
  printf '%s %s %s\n' "$id" "$kind" "$run" >>"$work/measurements"
}
wd_empty() { [ -z "$(ls -A "$work/wd")" ] || die "the work dir is not empty after $1"; }
show() { jq -c '{elapsed, unpackTime, chunkTime, fileBytes, chunks, reusedChunks, layerReusedFiles, hashedBytes, uploadedBytes, storedBytes}' "$1" >&2; }

log "measuring: $runs conversions of v1 with --memo none (a fresh repository each)"
for i in $(seq "$runs"); do
  r=$(fresh_repo "$src_repo" "bench/conv-none-r$i" v1 "$work/manifest-v1")
  measure "none-r$i" none "$i" "$bin/pronto" image convert "$r" --chunk-size 1M --json \
    --work-dir "$work/wd" --memo none
  wd_empty "none-r$i"
  jq -e '.uploadedBytes == .storedBytes' "$work/m/none-r$i.out" >/dev/null || die "run $i reused packs"
  show "$work/m/none-r$i.out"
done

log "dedup: v1 then v2 into $src_repo with one memo"
memo="$work/memo.db"
reg_bytes() { du -sb "$work/registry" | cut -f1; }
reg0=$(reg_bytes)
measure memo-v1 memo-v1 1 "$bin/pronto" image convert "$registry/$src_repo:v1" --chunk-size 1M --json \
  --work-dir "$work/wd" --memo "$memo"
wd_empty memo-v1; show "$work/m/memo-v1.out"
reg1=$(reg_bytes)
measure memo-v2 memo-v2 1 "$bin/pronto" image convert "$registry/$src_repo:v2" --chunk-size 1M --json \
  --work-dir "$work/wd" --memo "$memo"
wd_empty memo-v2; show "$work/m/memo-v2.out"
reg2=$(reg_bytes)
memo_bytes=$(du -sb "$memo" 2>/dev/null | cut -f1 || echo 0)

# ---------------------------------------------------------------------------------------------
# 5. Report
report_env "$work"
VERSIONS="pronto $pronto_version, $(docker-registry --version | awk '{print $2, $3}')"
export RUNS=$runs IMAGE_BYTES=$image_bytes IMAGE2_BYTES=$image2_bytes IMAGE_FILES=$image_files \
  C1=$compressed1 C2=$compressed2 SHARED=$shared_layers NLAYERS=${#v1_layers[@]} D1=$digest1 D2=$digest2 \
  KEY=$key LKEY=$lkey LAYER_SIZES="$layer_sizes" IMPORT_CHECK="$import_check" \
  REG0=$reg0 REG1=$reg1 REG2=$reg2 MEMO_BYTES=${memo_bytes:-0} \
  V2_DESC="$v2_pkgs added, $v2_edit edited" TORCH="$torch_pkgs + ${torch_deps//$'\n'/ }" VERSIONS
"$PY" - "$work/m" "$work/measurements" >"$work/report.md" <<'PY'
import json, os, statistics, sys
mdir, listing = sys.argv[1], sys.argv[2]
e = os.environ
med = statistics.median
ms = []
for l in open(listing):
    if not l.strip(): continue
    mid, kind, run = l.split()
    wall, user, sys_, rss = open(f"{mdir}/{mid}.time").read().split()[-4:]
    ms.append(dict(id=mid, kind=kind, run=int(run), wall=float(wall), cpu=float(user) + float(sys_),
                   rss=int(rss) / 1024, j=json.load(open(f"{mdir}/{mid}.out"))))
none = [m for m in ms if m["kind"] == "none"]
m1 = next(m for m in ms if m["kind"] == "memo-v1")
m2 = next(m for m in ms if m["kind"] == "memo-v2")
def mj(k): return med([m["j"][k] for m in none])
fb = none[0]["j"]["fileBytes"]
el = [m["j"]["elapsed"] for m in none]
push = med([m["j"]["elapsed"] - m["j"]["unpackTime"] - m["j"]["chunkTime"] for m in none])
c1, c2 = int(e["C1"]), int(e["C2"])
reg0, reg1, reg2 = int(e["REG0"]), int(e["REG1"]), int(e["REG2"])
growth = reg2 - reg1
def MB(x): return f"{x / 1e6:,.1f}"
layers = [x.split() for x in e["LAYER_SIZES"].split(";") if x.strip()]
rng = f" ({min(el):.2f}–{max(el):.2f})" if len(el) > 1 else ""
same = len({m["j"]["indexDigest"] for m in none}) == 1
def drow(name, m):
    j = m["j"]
    return (f"| {name} | {j['elapsed']:.2f} | {j['unpackTime']:.2f} | {j['chunkTime']:.2f} | {j['elapsed'] - j['unpackTime'] - j['chunkTime']:.2f} | "
            f"{m['cpu']:.1f} | {j['files']:,} | {j['layerReusedFiles']:,} | {MB(j['hashedBytes'])} | {j['chunks']:,} | {j['reusedChunks']:,} ({100 * j['reusedChunks'] / j['chunks']:.1f}%) | "
            f"{j['newPacks']}/{j['packs']} | {MB(j['uploadedBytes'])} | {MB(j['storedBytes'])} | {MB(j['indexSize'])} |")
j2 = m2["j"]
print(f"""### Image conversion on a ≥ 1 GB image, and dedup between two versions

Image v1: **{int(e['IMAGE_BYTES']) / 1e6:,.0f} MB uncompressed** (du -sb), {e['IMAGE_FILES']} files, {e['NLAYERS']} gzip layers ({MB(c1)} MB, `layersSize`); **{MB(fb)} MB of file data** (`fileBytes`). v2: {int(e['IMAGE2_BYTES']) / 1e6:,.0f} MB, {MB(c2)} MB gzip; {e['SHARED']} of {e['NLAYERS']} layer blobs shared with v1 (the top layer differs: {e['V2_DESC']}).
Layers (du -sb bytes, files): {'; '.join(f"{n} {int(b) / 1e6:,.1f} MB, {f} files" for n, b, f in layers)}. Layers 1-3 are bench/convert.sh's image (cache key {e['KEY']}); layer 4 is `pip install --no-deps {e['TORCH']}` (PyPI's Linux torch wheel, without its nvidia-*/cuda-* requirements; cache key {e['LKEY']}). Check at build: {e['IMPORT_CHECK']}
Manifests: v1 {e['D1']}, v2 {e['D2']}.
Machine: {e['MACHINE']}. Versions: {e['VERSIONS']}. Load average (1/5/15 min): {e['LOAD_START']} at the start, {e['LOAD_END']} at the end.
Method: local docker-registry on loopback; `sync; echo 3 > /proc/sys/vm/drop_caches` before every measured command; `pronto image convert REF --chunk-size 1M --json --work-dir DIR` (zstd, the default). CPU = user+sys of the `pronto` process (GNU time).

#### v1, `--memo none`, {e['RUNS']} runs (each into a repository of its own holding v1, blobs mounted; `uploadedBytes == storedBytes` checked)

| total s (min–max) | MB/s of file data | unpack s | chunking s | push s | CPU s | max RSS MB |
|---|---|---|---|---|---|---|
| {med(el):.2f}{rng} | **{fb / 1e6 / med(el):.0f}** | {mj('unpackTime'):.2f} | {mj('chunkTime'):.2f} | {push:.2f} | {med([m['cpu'] for m in none]):.1f} | {med([m['rss'] for m in none]):.0f} |

| index bytes | index / fileBytes | stored MB (packs) | stored / gzip layers | stored / fileBytes | chunks (reused) | packs | same index digest every run |
|---|---|---|---|---|---|---|---|
| {mj('indexSize'):,.0f} | {100 * mj('indexSize') / fb:.3f}% | {MB(mj('storedBytes'))} | {mj('storedBytes') / c1:.2f} | {mj('storedBytes') / fb:.2f} | {mj('chunks'):,.0f} ({mj('reusedChunks'):,.0f}) | {mj('packs'):.0f} | {'yes' if same else 'NO'} |

Raw `elapsed` (unpack / chunking): {', '.join(f"{m['j']['elapsed']:.2f} ({m['j']['unpackTime']:.2f}/{m['j']['chunkTime']:.2f})" for m in none)}.

#### Dedup: v1 then v2 into the same repository with one `--memo M` (1 run each)

| conversion | total s | unpack s | chunking s | push s | CPU s | files | layerReusedFiles | hashed MB | chunks | reusedChunks | new/all packs | uploaded MB (packs) | stored MB | index MB |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
{drow('v1, empty memo', m1)}
{drow('v2, memo from v1', m2)}

- Registry storage (du -sb of its root directory): {MB(reg0)} MB before v1's conversion, {MB(reg1)} MB after it (+{MB(reg1 - reg0)} MB), {MB(reg2)} MB after v2's: **+{MB(growth)} MB for v2**: its new pack(s) ({MB(j2['uploadedBytes'])} MB, `uploadedBytes`), its index ({MB(j2['indexSize'])} MB, a new blob: the index is not chunked) and manifests/registry metadata ({MB(growth - j2['uploadedBytes'] - j2['indexSize'])} MB). v1's memo conversion added only +{MB(reg1 - reg0)} MB because the `--memo none` runs had already stored identical packs and index (the registry's blob store is global; `uploadedBytes` counts them as uploaded to the new repository).
- **Dedup ratio** (registry growth for v2 / v2's stored bytes, i.e. new bytes per byte v2 references): {MB(growth)} / {MB(j2['storedBytes'])} MB = **{100 * growth / j2['storedBytes']:.2f}%**; v2 uploaded {MB(j2['uploadedBytes'])} MB ({100 * j2['uploadedBytes'] / j2['storedBytes']:.2f}% of its stored bytes); hashed {MB(j2['hashedBytes'])} MB of {MB(j2['fileBytes'])} MB file data ({100 * j2['hashedBytes'] / j2['fileBytes']:.1f}%); {j2['layerReusedFiles']:,} of {j2['files']:,} files taken whole from the layer memo.
- v2 took {j2['elapsed']:.2f} s against v1's {m1['j']['elapsed']:.2f} s with an empty memo (the full pull and unpack of v2 is part of it: unpack {j2['unpackTime']:.2f} s). Memo file after both: {int(e['MEMO_BYTES']) / 1e6:.1f} MB.

Whole benchmark script: {float(e['TOTAL_SECS']):.0f} s.""")
PY
publish_report "$work/report.md" "$bench_dir/results/convert-large-$REPORT_DATE.md"
