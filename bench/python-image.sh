# shellcheck shell=bash disable=SC2034 # sets variables for the scripts that source it
# The benchmarks' Python image (sourced by unpack.sh, convert.sh and convert-large.sh): three
# layers' file trees, built once and cached under /var/cache/pronto-bench by a hash of the recipe.
#   layer 1: /usr/lib/python3.X + /usr/bin/python3.X (copy of the host's Debian python)
#   layer 2: /opt/venv after `pip install numpy scipy`            (a first RUN step)
#   layer 3: what `pip install pandas scikit-learn matplotlib` adds (a second RUN step)
# Versions are pinned (top level and every dependency) so the cache key means something.
# Needs bench/lib.sh sourced first. Sets: recipe, key, cache_root, cache, pyver, layers; defines
# push_python_image.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then # run, not sourced: only --help
  . "$(dirname "$0")/lib.sh"
  parse_args "$@"
  usage_error "this file is sourced by unpack.sh, convert.sh and convert-large.sh, not run"
fi
step1_pkgs="numpy==2.4.6 scipy==1.17.1"
step2_pkgs="pandas==3.1.1 scikit-learn==1.9.1 matplotlib==3.11.2"
constraints="cloudpickle==3.1.2 contourpy==1.3.3 cycler==0.12.1 fonttools==4.68.0 joblib==1.6.0
kiwisolver==1.5.1 narwhals==2.29.0 packaging==26.3 pillow==13.0.0 pyparsing==3.3.3
python-dateutil==4.0.0 threadpoolctl==3.8.0 tzdata==2026.6"
pyver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
recipe="recipe v1
arch $(uname -m)
python $("$PY" -VV 2>&1) $(dpkg-query -W -f='${Version}' "libpython$pyver-stdlib" 2>/dev/null || true)
layer1 /usr/lib/python$pyver /usr/bin/python$pyver
layer2 venv /opt/venv; pip install --only-binary=:all: --compile $step1_pkgs
layer3 pip install --only-binary=:all: --compile $step2_pkgs
constraints $constraints"
key=$(printf '%s' "$recipe" | sha256sum | cut -c1-16)
cache_root=/var/cache/pronto-bench
cache="$cache_root/image-$key"

build_tmp="" # a half-built tree, removed on exit
# shellcheck disable=SC2016 # expanded on exit
at_exit '[ -z "$build_tmp" ] || rm -rf "$build_tmp"'
# shellcheck disable=SC2086,SC2012 # package lists split on purpose; file names from pip
build_trees() {
  local tmp
  mkdir -p "$cache_root"
  tmp=$(mktemp -d "$cache_root/.build-$key.XXXXXX")
  build_tmp=$tmp
  log "building the image's file trees in $tmp (pip downloads; a few minutes)"
  # layer 1
  mkdir -p "$tmp/layer1/usr/lib" "$tmp/layer1/usr/bin"
  cp -a "/usr/lib/python$pyver" "$tmp/layer1/usr/lib/"
  cp -a "/usr/bin/python$pyver" "$tmp/layer1/usr/bin/"
  # layers 2 and 3: one venv, two pip steps; what step 2 adds is moved to layer 3
  local venv="$tmp/layer2/opt/venv" sp="lib/python$pyver/site-packages"
  mkdir -p "$tmp/layer2/opt"
  "$PY" -m venv "$venv"
  printf '%s\n' $constraints $step1_pkgs $step2_pkgs >"$tmp/constraints.txt"
  local pip=("$venv/bin/python" -m pip install -q --no-input --disable-pip-version-check
    --only-binary=:all: --compile -c "$tmp/constraints.txt")
  # PYTHONDONTWRITEBYTECODE would not stop pip's --compile, but keep the build independent of it
  env -u PYTHONDONTWRITEBYTECODE "${pip[@]}" $step1_pkgs
  (cd "$venv/$sp" && ls -A) | sort >"$tmp/sp.before"
  (cd "$venv/bin" && ls -A) | sort >"$tmp/bin.before"
  env -u PYTHONDONTWRITEBYTECODE "${pip[@]}" $step2_pkgs
  mkdir -p "$tmp/layer3/opt/venv/$sp" "$tmp/layer3/opt/venv/bin"
  local name
  comm -13 "$tmp/sp.before" <(cd "$venv/$sp" && ls -A | sort) | while IFS= read -r name; do
    mv "$venv/$sp/$name" "$tmp/layer3/opt/venv/$sp/"
  done
  comm -13 "$tmp/bin.before" <(cd "$venv/bin" && ls -A | sort) | while IFS= read -r name; do
    mv "$venv/bin/$name" "$tmp/layer3/opt/venv/bin/"
  done
  rm -f "$tmp"/*.before "$tmp/constraints.txt"
  printf '%s\n' "$recipe" >"$tmp/RECIPE"
  rm -rf "$cache"
  mv "$tmp" "$cache"
  build_tmp=""
}
if [ -f "$cache/RECIPE" ]; then
  log "image trees cached: $cache"
else
  build_trees
fi
layers=("$cache/layer1" "$cache/layer2" "$cache/layer3")

# push_python_image REF LAYER...: the image as the benchmarks push it (gzip, python from the venv
# as entrypoint); prints its manifest digest.
push_python_image() {
  local ref=$1 l args=()
  shift
  for l in "$@"; do args+=(--layer "$l"); done
  "$bin/pronto-mkimage" --compression gzip --env PATH=/opt/venv/bin:/usr/bin:/bin \
    --entrypoint /opt/venv/bin/python "${args[@]}" "$ref"
}
