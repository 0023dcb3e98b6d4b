#!/usr/bin/env bash
# Builds the cold-start workloads' layer trees, without a Docker engine: a Debian bookworm rootfs
# from `debootstrap --variant=minbase`, then one layer per step, each step run in a chroot on an
# overlay of the layers below it, so the step's overlay upper dir is exactly the layer a
# Dockerfile RUN/COPY would make. Cached under /var/cache/pronto-bench/coldstart/<step>-<hash>
# ($PRONTO_BENCH_CACHE instead of /var/cache/pronto-bench), the hash chaining the step's recipe
# with its parent's, so a rerun reuses every built step.
#
#   bash bench/coldstart/build.sh [--dry-run] WORKLOAD...
#        (puppeteer-pdf python-ml python-small data-loader)
#
# Prints, per workload, one line: NAME LAYERDIR... (bottom first). Needs root, debootstrap, npm,
# pip. With --dry-run: builds nothing (no root needed) and prints, per workload, its steps
# (bottom first) as STEP-HASH, each marked "built" or "to build".
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../lib.sh
. "$here/../lib.sh"

workloads=() dry_run=""
positionals workloads
flag --dry-run dry_run
parse_args "$@"
[ ${#workloads[@]} -gt 0 ] || usage_error "no workload given"
cache_root=${PRONTO_BENCH_CACHE:-/var/cache/pronto-bench}/coldstart
mirror=http://deb.debian.org/debian

# ---- step recipes: name parent kind(debootstrap|chroot|copy) argument -------------------------
declare -A parent kind arg
step() { parent[$1]=$2 kind[$1]=$3 arg[$1]=$4; }
step base "" debootstrap "bookworm minbase; slim: no docs, man pages, locales, apt lists"
step py base chroot "apt-get install -y --no-install-recommends python3 ca-certificates"
step pip py chroot "apt-get install -y --no-install-recommends python3-pip"
step mlpkgs pip pip "flask==3.1.3 numpy==2.4.6 pandas==3.1.1 scipy==1.17.1 scikit-learn==1.9.1"
step mlapp mlpkgs copy "apps/python-ml"
# python-small: distroless-style (no Debian base): python3, its standard library minus tests/IDLE/
# tkinter and the like, and the shared libraries they load, taken from step py
step slimpy "" slim "py"
step smallapp slimpy copy "apps/python-small"
step data py datafile "300 MiB of random bytes at /data/blob.bin"
step dataapp data copy "apps/data-loader"
step chromium base chroot "apt-get install -y --no-install-recommends chromium fonts-noto-core fonts-noto-cjk fonts-liberation fonts-dejavu-core"
step nodejs chromium chroot "apt-get install -y --no-install-recommends nodejs"
step pdfapp nodejs npmapp "apps/puppeteer-pdf"

declare -A top=([python-ml]=mlapp [python-small]=smallapp [data-loader]=dataapp [puppeteer-pdf]=pdfapp)

# content hash of a step: its recipe, its app dir's files, and its parent's hash
declare -A hash
hash_of() {
  local s=$1
  [ -n "${hash[$s]:-}" ] && { echo "${hash[$s]}"; return; }
  local p=${parent[$s]} ph="" extra=""
  [ -n "$p" ] && ph=$(hash_of "$p")
  case ${kind[$s]} in
    copy | npmapp) extra=$(cd "$here/${arg[$s]}" && find . -type f ! -path './node_modules/*' -print0 | sort -z | xargs -0 sha256sum) ;;
    slim) extra=$(hash_of "${arg[$s]}") ;;
  esac
  hash[$s]=$(printf 'v1\n%s\n%s\n%s\n%s\n%s\n' "$s" "${kind[$s]}" "${arg[$s]}" "$ph" "$extra" | sha256sum | cut -c1-12)
  echo "${hash[$s]}"
}
dir_of() { echo "$cache_root/$1-$(hash_of "$1")"; }
chain() { local s=$1 out=""; while [ -n "$s" ]; do out="$(dir_of "$s") $out"; s=${parent[$s]}; done; echo "${out% }"; }

mnt="" tmp=""
cleanup() { # a step's mounts and its temp dir, if it failed half-way
  if [ -n "$mnt" ]; then
    awk -v p="$mnt" 'index($5, p) == 1 {print $5}' /proc/self/mountinfo | sort -r \
      | while read -r m; do umount -l "$m" || true; done
  fi
  [ -z "$tmp" ] || rm -rf "$tmp"
}

# overlay whiteouts (char 0:0) and opaque dirs are not carried into the layer: report and drop them
drop_whiteouts() {
  local n
  n=$(find "$1" -type c | wc -l)
  [ "$n" = 0 ] || { log "dropping $n whiteouts from $(basename "$1")"; find "$1" -type c -delete; }
}

build_step() {
  local s=$1 d p lowers="" l
  d=$(dir_of "$s")
  [ -f "$d.done" ] && return 0
  p=${parent[$s]}
  [ -n "$p" ] && build_step "$p"
  [ "${kind[$s]}" = slim ] && build_step "${arg[$s]}"
  log "step $s (${kind[$s]}: ${arg[$s]})"
  tmp=$(mktemp -d "$cache_root/.tmp-$s.XXXXXX")
  mkdir -p "$tmp/upper" "$tmp/work" "$tmp/merged"
  case ${kind[$s]} in
    debootstrap)
      nice -n 10 debootstrap --variant=minbase bookworm "$tmp/upper" "$mirror" >"$tmp/log" 2>&1 || { tail -20 "$tmp/log" >&2; die "step $s: debootstrap failed"; }
      cat >"$tmp/upper/etc/apt/sources.list" <<SRC
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SRC
      printf 'path-exclude /usr/share/doc/*\npath-exclude /usr/share/man/*\npath-exclude /usr/share/locale/*\npath-exclude /usr/share/info/*\n' >"$tmp/upper/etc/dpkg/dpkg.cfg.d/slim"
      chroot "$tmp/upper" sh -c 'apt-get update -qq && apt-get -y -qq upgrade >/dev/null' >>"$tmp/log" 2>&1
      rm -rf "$tmp/upper"/usr/share/doc/* "$tmp/upper"/usr/share/man/* "$tmp/upper"/usr/share/locale/* "$tmp/upper"/usr/share/info/* \
        "$tmp/upper"/var/cache/apt/*.bin "$tmp/upper"/var/cache/apt/archives/*.deb "$tmp/upper"/var/lib/apt/lists/* "$tmp/upper"/var/log/*.log
      ;;
    chroot | pip)
      for l in $(chain "$p"); do lowers="$l:$lowers"; done
      mount -t overlay overlay -o "lowerdir=${lowers%:},upperdir=$tmp/upper,workdir=$tmp/work" "$tmp/merged"
      mnt=$tmp/merged
      mount --bind /proc "$mnt/proc"; mount --bind /dev "$mnt/dev"; mount --bind /sys "$mnt/sys"
      cp /etc/resolv.conf "$mnt/etc/resolv.conf"
      local cmd="apt-get update -qq && ${arg[$s]} && apt-get clean && rm -rf /var/lib/apt/lists/* /root/.cache"
      if [ "${kind[$s]}" = pip ]; then
        # wheels downloaded on the host (same Python ABI: both Debian 12), installed in the
        # chroot from that directory only: `pip install` as the image's RUN step would do it
        local wh
        wh=$cache_root/wheels-$(hash_of "$s")
        # shellcheck disable=SC2086 # the package list
        [ -f "$wh.done" ] || { env -u PIP_FIND_LINKS pip download -q --only-binary=:all: --python-version 3.11 -d "$wh" ${arg[$s]} && touch "$wh.done"; }
        mkdir -p "$mnt/tmp/wheels"; mount --bind "$wh" "$mnt/tmp/wheels"
        cmd="pip install --break-system-packages --no-cache-dir --no-index --find-links /tmp/wheels ${arg[$s]}"
      fi
      chroot "$mnt" env -i DEBIAN_FRONTEND=noninteractive HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        nice -n 10 sh -c "$cmd" >"$tmp/log" 2>&1 || { tail -30 "$tmp/log" >&2; die "step $s failed: $cmd"; }
      [ "${kind[$s]}" = pip ] && { umount "$mnt/tmp/wheels"; rmdir "$mnt/tmp/wheels"; }
      umount "$mnt/proc" "$mnt/dev" "$mnt/sys"; umount "$mnt"; mnt=""
      rm -f "$tmp/upper/etc/resolv.conf"
      rm -rf "$tmp/upper/var/log" "$tmp/upper/var/cache/debconf"/*-old "$tmp/upper/tmp"/*
      drop_whiteouts "$tmp/upper"
      ;;
    slim)
      for l in $(chain "${arg[$s]}"); do lowers="$l:$lowers"; done
      mount -t overlay overlay -o "lowerdir=${lowers%:}" "$tmp/merged" # read-only: two lowers, no upper
      mnt=$tmp/merged
      local py=usr/lib/python3.11 libs="" lib
      (cd "$mnt" && tar -cf - bin lib lib64 sbin usr/bin/python3 usr/bin/python3.11 etc/passwd etc/group \
        --exclude="$py/test" --exclude="$py/idlelib" --exclude="$py/tkinter" --exclude="$py/turtledemo" \
        --exclude="$py/ensurepip" --exclude="$py/lib2to3" --exclude="$py/pydoc_data" --exclude="$py/config-3.11-*" "$py") \
        | tar -xf - -C "$tmp/upper"
      # the libraries the interpreter and its extension modules load, as ldd resolves them in the
      # tree (each path and what its symlinks lead to)
      for lib in $(chroot "$mnt" sh -c "for f in /usr/bin/python3.11 /$py/lib-dynload/*.so; do ldd \$f; done" \
        | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u); do
        libs+=" .$(chroot "$mnt" readlink -f "${lib%/*}")/${lib##*/} .$(chroot "$mnt" readlink -f "$lib")"
      done
      # shellcheck disable=SC2086
      (cd "$mnt" && tar -cf - $libs) | tar -xf - -C "$tmp/upper"
      mkdir -p "$tmp/upper"/{dev,proc,sys,etc,root} && install -d -m 1777 "$tmp/upper/tmp"
      umount "$mnt"; mnt=""
      chroot "$tmp/upper" /usr/bin/python3 -c 'import http.server, urllib.parse, ssl, json, sqlite3' \
        || die "step $s: the slim python does not start"
      ;;
    copy)
      mkdir -p "$tmp/upper/app"; cp -a "$here/${arg[$s]}/." "$tmp/upper/app/" ;;
    npmapp)
      mkdir -p "$tmp/upper/app"; cp -a "$here/${arg[$s]}/." "$tmp/upper/app/"
      rm -rf "$tmp/upper/app/node_modules"
      (cd "$tmp/upper/app" && nice -n 10 npm install --omit=dev --no-audit --no-fund >"$tmp/log" 2>&1) || { tail -20 "$tmp/log" >&2; die "step $s: npm install failed"; }
      ;;
    datafile)
      mkdir -p "$tmp/upper/data"; head -c $((300 << 20)) /dev/urandom >"$tmp/upper/data/blob.bin"
      sha256sum "$tmp/upper/data/blob.bin" | cut -d' ' -f1 >"$tmp/upper/data/blob.sha256" ;;
  esac
  rm -rf "$d"; mv "$tmp/upper" "$d"
  printf '%s\n%s\n' "${kind[$s]}" "${arg[$s]}" >"$d.done" # beside the layer, not in it
  rm -rf "$tmp"; tmp=""
}

for w in "${workloads[@]}"; do [ -n "${top[$w]:-}" ] || usage_error "unknown workload $w"; done
if [ -n "$dry_run" ]; then
  for w in "${workloads[@]}"; do
    line="$w:"
    for d in $(chain "${top[$w]}"); do
      if [ -f "$d.done" ]; then line+=" ${d##*/} (built)"; else line+=" ${d##*/} (to build)"; fi
    done
    echo "$line"
  done
  exit 0
fi
need_root "mounts overlays, runs chroots"
mkdir -p "$cache_root"
bench_traps
at_exit cleanup
for w in "${workloads[@]}"; do build_step "${top[$w]}"; done
for w in "${workloads[@]}"; do echo "$w $(chain "${top[$w]}")"; done
