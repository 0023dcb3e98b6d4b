# shellcheck shell=bash disable=SC2034,SC2154 # variables set for, or by, the scripts that source it
# Shared by the bench scripts, sourced first thing (`. "$(dirname "$0")/lib.sh"`). It runs no
# command of its own when sourced beyond setting the variables below.
#
#   paths      $bench_dir (this file's directory), $repo_root (the source checkout around it, or
#              empty when the scripts run from a copy: `pronto bench` unpacks its embedded copy
#              into a temp dir), $PY (Debian's python3)
#   logging    log, warn, die (stderr, with the script's name; log with the seconds since start)
#   arguments  opt, flag, positionals, parse_args (with -h/--help from the script's header
#              comment), usage_error, need_positive_int, need_root
#   cleanup    at_exit CMD (run in reverse order on exit, also on error and Ctrl-C, once the
#              traps are set by bench_traps or bench_init), bench_init (the run's temp dir $work)
#   packages   need_packages, install_deps
#   binaries   build_pronto (build, or take $PRONTO_BIN), copy_binaries
#   services   free_port, wait_http, stop_pid, registry_config, start_registry, save_manifest,
#              fresh_repo, start_daemon, stop_daemon, P (the pronto CLI against that daemon)
#   measuring  drop_caches, secs_since, median
#   reports    machine_desc, report_env, publish_report
#
# bench/lazyfs.sh predates most of this and still uses only build_pronto, copy_binaries and
# start_registry with their old contracts (they set $built, $pronto_version, $bin, $port and
# $registry_pid; it kills the registry itself): keep those working.

bench_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=""
if [ -f "$bench_dir/../Cargo.toml" ] && [ -d "$bench_dir/../crates/pronto-cli" ]; then
  repo_root=$(cd "$bench_dir/.." && pwd)
fi
PY=${PY:-/usr/bin/python3}
script_start=${script_start:-$EPOCHREALTIME}
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
# the script's name for messages: "convert" for bench/convert.sh, "coldstart/run" for
# bench/coldstart/run.sh
bench_name=$(cd "$(dirname "$0")" && pwd)/$(basename "$0" .sh)
bench_name=${bench_name#"$bench_dir"/}

# ---- logging ----------------------------------------------------------------------------------
log() { printf '== [+%ss] %s: %s\n' "$(secs_since "$script_start")" "$bench_name" "$*" >&2; }
# progress DONE TOTAL WHAT: for `pronto bench`'s progress bar, which reads the last line written
# to $PRONTO_BENCH_PROGRESS (unset: nothing).
progress() { [ -z "${PRONTO_BENCH_PROGRESS:-}" ] || printf '%s %s %s\n' "$1" "$2" "$3" >"$PRONTO_BENCH_PROGRESS"; }
warn() { printf '%s: warning: %s\n' "$bench_name" "$*" >&2; }
die() { printf '%s: error: %s\n' "$bench_name" "$*" >&2; exit 1; }

# ---- arguments --------------------------------------------------------------------------------
declare -A _bench_opts=() _bench_flags=()
_bench_positional=""
# opt --NAME VAR: `--NAME VALUE` and `--NAME=VALUE` set $VAR.
opt() { _bench_opts[$1]=$2; }
# flag --NAME VAR: `--NAME` sets $VAR to 1.
flag() { _bench_flags[$1]=$2; }
# positionals ARRAY: arguments that are not options go to ARRAY (without it they are refused).
positionals() { _bench_positional=$1; }
# The script's usage: its header comment (after the #! line, up to the first line that is not a
# comment; shellcheck directives left out), without the leading "# ".
usage() { awk 'NR == 1 && /^#!/ || /^# shellcheck / { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; }
usage_error() { printf '%s: %s (see --help)\n' "$bench_name" "$*" >&2; exit 2; }
# parse_args "$@": against what opt, flag and positionals declared; -h/--help prints the usage
# and exits 0; anything else is a usage error (exit 2).
parse_args() {
  local name
  while [ $# -gt 0 ]; do
    case $1 in
      -h | --help) usage; exit 0 ;;
      --*=*)
        name=${1%%=*}
        [ -n "${_bench_opts[$name]:-}" ] || usage_error "unknown argument: $1"
        printf -v "${_bench_opts[$name]}" '%s' "${1#*=}"; shift ;;
      --*)
        if [ -n "${_bench_flags[$1]:-}" ]; then
          printf -v "${_bench_flags[$1]}" '%s' 1; shift
        elif [ -n "${_bench_opts[$1]:-}" ]; then
          if [ $# -lt 2 ] || [ -z "$2" ]; then usage_error "$1 needs a value"; fi
          printf -v "${_bench_opts[$1]}" '%s' "$2"; shift 2
        else
          usage_error "unknown argument: $1"
        fi ;;
      *)
        [ -n "$_bench_positional" ] || usage_error "unknown argument: $1"
        eval "$_bench_positional+=(\"\$1\")"; shift ;;
    esac
  done
}
# need_positive_int OPTION VALUE [WHAT]
need_positive_int() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || usage_error "$1 must be a positive integer${3:+ ($3)}"; }
# need_root [WHY]
need_root() { [ "$(id -u)" = 0 ] || die "run as root${1:+ ($1)}"; }

# ---- cleanup ----------------------------------------------------------------------------------
_bench_exit_hooks=()
# at_exit COMMAND: evaluated on exit, after the commands registered later (so what was started
# last is stopped first); a failing command does not stop the others.
at_exit() { _bench_exit_hooks+=("$1"); }
_bench_on_exit() {
  local i
  trap '' INT TERM # a second Ctrl-C must not cut the cleanup short
  for ((i = ${#_bench_exit_hooks[@]} - 1; i >= 0; i--)); do
    eval "${_bench_exit_hooks[i]}" || true
  done
}
# bench_traps: run the at_exit commands on exit; INT and TERM exit (status 130) through them.
bench_traps() {
  trap _bench_on_exit EXIT
  trap 'exit 130' INT TERM
}
# bench_init NAME: bench_traps, and $work, a new temp dir (/var/tmp/NAME.XXXXXX) removed on exit.
bench_init() {
  work=$(mktemp -d "/var/tmp/$1.XXXXXX")
  bench_traps
  # shellcheck disable=SC2016 # expanded on exit
  at_exit 'rm -rf "$work"'
}

# ---- packages ---------------------------------------------------------------------------------
# need_packages PACKAGE...: installs those not installed yet, from Debian's archive.
need_packages() {
  local p missing=()
  for p in "$@"; do
    [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  log "installing: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
}
# install_deps: what the benchmarks run on: scripts/install-deps.sh where pronto is built from
# the source tree; without a build, the run-time part of its list.
install_deps() {
  if [ -n "$repo_root" ] && [ -z "${PRONTO_BIN:-}" ]; then
    bash "$repo_root/scripts/install-deps.sh"
  else
    need_packages docker-registry runc fuse3 iproute2 ca-certificates curl jq
  fi
}

# ---- binaries ---------------------------------------------------------------------------------
# mkimage_path: the pronto-mkimage to use without building it ($PRONTO_MKIMAGE, beside
# $PRONTO_BIN, or on PATH), or nothing.
mkimage_path() {
  if [ -n "${PRONTO_MKIMAGE:-}" ]; then
    echo "$PRONTO_MKIMAGE"
  elif [ -n "${PRONTO_BIN:-}" ] && [ -x "$(dirname "$PRONTO_BIN")/pronto-mkimage" ]; then
    echo "$(dirname "$PRONTO_BIN")/pronto-mkimage"
  else
    command -v pronto-mkimage || true
  fi
}
# build_pronto: sets $pronto_src and $mkimage_src (the binaries to run), $built (pronto's dir)
# and $pronto_version (for the report). With $PRONTO_BIN (how `pronto bench` passes itself), that
# binary, and pronto-mkimage from mkimage_path (built if missing and there is a source tree);
# otherwise both are built in release mode in the source tree, and the version is its commit
# (+dirty when crates/ or Cargo.* differ from it).
build_pronto() {
  if [ -n "${PRONTO_BIN:-}" ]; then
    [ -x "$PRONTO_BIN" ] || die "PRONTO_BIN=$PRONTO_BIN is not an executable"
    pronto_src=$PRONTO_BIN
    pronto_version="$("$PRONTO_BIN" --version | awk '{print $2}') ($PRONTO_BIN)"
    mkimage_src=$(mkimage_path)
    if [ -z "$mkimage_src" ]; then
      [ -n "$repo_root" ] || die "pronto-mkimage not found (it pushes the benchmark's images): $(_mkimage_hint)"
      log "building pronto-mkimage (release)"
      _cargo build --release --quiet -p pronto-testkit --bin pronto-mkimage
      mkimage_src=$(_target_dir)/pronto-mkimage
    fi
  else
    [ -n "$repo_root" ] || die "no source tree around $bench_dir to build pronto in: set PRONTO_BIN"
    log "building pronto (release)"
    _cargo build --release --quiet -p pronto-cli -p pronto-testkit
    pronto_src=$(_target_dir)/pronto
    mkimage_src=$(_target_dir)/pronto-mkimage
    pronto_version="$(git -C "$repo_root" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$repo_root" diff --quiet HEAD -- crates Cargo.toml Cargo.lock 2>/dev/null || echo '+dirty')"
  fi
  built=$(dirname "$pronto_src")
}
_mkimage_hint() {
  echo "set PRONTO_MKIMAGE, or put it beside ${PRONTO_BIN:-pronto} or on PATH (from a source" \
    "checkout: cargo install --path crates/pronto-testkit --bin pronto-mkimage)"
}
# binaries_plan: what build_pronto would use ("pronto: ..." and "pronto-mkimage: ..." lines),
# without building anything.
binaries_plan() {
  local mk
  if [ -n "${PRONTO_BIN:-}" ]; then
    echo "pronto: $PRONTO_BIN"
    mk=$(mkimage_path)
    if [ -n "$mk" ]; then
      echo "pronto-mkimage: $mk"
    elif [ -n "$repo_root" ]; then
      echo "pronto-mkimage: to be built in $repo_root"
    else
      echo "pronto-mkimage: not found, a run would fail: $(_mkimage_hint)"
    fi
  elif [ -n "$repo_root" ]; then
    echo "pronto: to be built in $repo_root"
    echo "pronto-mkimage: to be built in $repo_root"
  else
    echo "pronto: not found, a run would fail: set PRONTO_BIN"
  fi
}
_cargo() {
  # shellcheck source=/dev/null
  command -v cargo >/dev/null || [ ! -f "$HOME/.cargo/env" ] || . "$HOME/.cargo/env"
  (cd "$repo_root" && cargo "$@")
}
_target_dir() {
  local t=${CARGO_TARGET_DIR:-target}
  case $t in /*) ;; *) t=$repo_root/$t ;; esac
  echo "$t/release"
}
# copy_binaries: copies them to $bin ($work/bin): a concurrent `cargo build` in the tree must not
# swap binaries mid-run.
copy_binaries() {
  bin="$work/bin"
  mkdir -p "$bin"
  cp "$pronto_src" "$bin/pronto"
  cp "$mkimage_src" "$bin/pronto-mkimage"
}

# ---- services ---------------------------------------------------------------------------------
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait_http URL SECONDS: until URL answers with a 2xx (curl -f), polled every 0.1 s.
wait_http() {
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    curl -sf -o /dev/null "$1" && return 0
    sleep 0.1
  done
  curl -sf -o /dev/null "$1"
}
# stop_pid VAR [SECONDS] [WHAT]: ends the process whose PID is in $VAR, if any: SIGTERM, then
# SIGKILL (with a warning) if it is still there after SECONDS (60); reaps it and empties $VAR.
# Sets $stopped_status to its exit status.
stop_pid() {
  local pid=${!1:-} i
  stopped_status=0
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < ${2:-60} * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    warn "${3:-pid $pid} ignored SIGTERM for ${2:-60} s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || stopped_status=$?
  printf -v "$1" '%s' ""
}
# registry_config FILE ROOT ADDR [access-log] [delete]: a docker-registry config: storage in ROOT,
# listening on ADDR; the access log (a line per request) and blob deletion only when asked.
registry_config() {
  local accesslog=true delete=""
  [[ " ${*:4} " == *" access-log "* ]] && accesslog=false
  [[ " ${*:4} " == *" delete "* ]] && delete=", delete: {enabled: true}"
  cat >"$1" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: $accesslog}}
storage: {filesystem: {rootdirectory: $2}$delete}
http: {addr: $3}
YML
}
# start_registry: docker-registry on a free loopback port, storage in $work/registry, log in
# $work/registry.log; sets $port, $registry (127.0.0.1:PORT) and $registry_pid. Stopped on exit.
start_registry() {
  port=$(free_port)
  registry="127.0.0.1:$port"
  registry_config "$work/registry.yml" "$work/registry" "$registry"
  docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
  registry_pid=$!
  at_exit 'stop_pid registry_pid'
  wait_http "http://$registry/v2/" 10 || { cat "$work/registry.log" >&2; die "registry did not start"; }
  log "registry on $registry (pid $registry_pid)"
}
# save_manifest REPO TAG FILE: the manifest of $registry/REPO:TAG (OCI or Docker schema 2), its
# bytes in FILE.json and its media type in FILE.type.
save_manifest() {
  curl -sf -D "$3.headers" -o "$3.json" \
    -H 'Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json' \
    "http://$registry/v2/$1/manifests/$2"
  awk -F': *' 'tolower($1) == "content-type" { sub(/\r$/, "", $2); print $2 }' "$3.headers" >"$3.type"
}
# fresh_repo FROM TO TAG FILE: makes repository TO hold the image whose manifest save_manifest
# saved in FILE from FROM: its blobs mounted from FROM (nothing uploaded), the same manifest bytes
# pushed as TO:TAG (same digest). Prints the reference.
fresh_repo() {
  local d code
  for d in $(jq -r '.config.digest, .layers[].digest' "$4.json"); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://$registry/v2/$2/blobs/uploads/?mount=$d&from=$1")
    [ "$code" = 201 ] || die "mounting $d into $2: HTTP $code"
  done
  curl -sf -o /dev/null -X PUT -H "Content-Type: $(cat "$4.type")" --data-binary "@$4.json" \
    "http://$registry/v2/$2/manifests/$3" || die "pushing the manifest to $2"
  echo "$registry/$2:$3"
}
# start_daemon: `pronto serve` ($bin/pronto) on the data dir $data, control API on $cport and
# invoke listener on $iport (free loopback ports, picked at the first start), its output
# appended to $work/serve.log; returns once it answers. Sets $daemon_pid and $token (the API
# token). Stopped on exit.
start_daemon() {
  local i
  : "${cport:=$(free_port)}" "${iport:=$(free_port)}"
  "$bin/pronto" serve --data-dir "$data" --control-addr "127.0.0.1:$cport" \
    --invoke-addr "127.0.0.1:$iport" >>"$work/serve.log" 2>&1 &
  daemon_pid=$!
  [ -n "${_bench_daemon_hook:-}" ] || { at_exit stop_daemon; _bench_daemon_hook=1; }
  for ((i = 0; i < 400; i++)); do
    [ -s "$data/api-token" ] && curl -s -o /dev/null "http://127.0.0.1:$cport/" && break
    kill -0 "$daemon_pid" 2>/dev/null || { tail -30 "$work/serve.log" >&2; die "pronto serve exited"; }
    sleep 0.05
  done
  [ -s "$data/api-token" ] || { tail -30 "$work/serve.log" >&2; die "pronto serve did not start"; }
  token=$(tr -d '\n' <"$data/api-token")
}
# stop_daemon: SIGTERM (the daemon tears its instances and mounts down), SIGKILL after 60 s;
# sets $daemon_status to its exit status (when it was running).
stop_daemon() {
  [ -n "${daemon_pid:-}" ] || return 0
  stop_pid daemon_pid 60 "pronto serve"
  daemon_status=$stopped_status
}
# P ARGS...: the pronto CLI against the daemon start_daemon started.
P() { "$bin/pronto" --data-dir "$data" --api "http://127.0.0.1:$cport" --invoke-url "http://127.0.0.1:$iport" "$@"; }

# ---- measuring --------------------------------------------------------------------------------
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# secs_since T0 [DECIMALS]: seconds from T0 (an $EPOCHREALTIME) to now, rounded (0 decimals).
secs_since() { awk -v a="$1" -v b="$EPOCHREALTIME" -v d="${2:-0}" 'BEGIN { printf("%." d "f", b - a) }'; }
# median: of the numbers on stdin, one a line (the mean of the middle two for an even count).
median() {
  sort -g | awk '{ a[NR] = $1 } END {
    if (NR == 0) exit 1
    if (NR % 2) print a[(NR + 1) / 2]; else printf "%.9g\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# ---- reports ----------------------------------------------------------------------------------
# machine_desc DIR: "2 cores (CPU model), 8 GiB RAM, Linux 6.1.0-..., ext4 on /dev/vda", the last
# part the filesystem DIR is on.
machine_desc() {
  printf '%s cores (%s), %s GiB RAM, %s, %s' "$(nproc)" "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" \
    "$(free -g | awk '/^Mem:/ { print $2 }')" "$(uname -sr)" "$(df -T "$1" | awk 'NR == 2 { print $2 " on " $1 }')"
}
# report_env DIR: exports what the reports' headers show: REPORT_DATE (YYYY-MM-DD), MACHINE
# (machine_desc DIR), LOAD_START and LOAD_END (load averages when the script started and now),
# TOTAL_SECS (since the script started).
report_env() {
  REPORT_DATE=$(date +%Y-%m-%d)
  MACHINE=$(machine_desc "$1")
  LOAD_START=$load_start
  LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
  TOTAL_SECS=$(secs_since "$script_start")
  export REPORT_DATE MACHINE LOAD_START LOAD_END TOTAL_SECS
}
# publish_report FILE OUT: copies the report FILE to OUT and prints it.
publish_report() {
  mkdir -p "$(dirname "$2")" && cp "$1" "$2"
  printf '\n%s\n\n' "$(cat "$1")"
  log "written to $2"
}
