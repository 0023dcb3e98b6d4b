#!/usr/bin/env bash
# Cold-start benchmark: real workloads pulled over a shaped link, full pull vs accelerated.
# See bench/README.md ("coldstart"). Also reached as `pronto bench coldstart ...`.
#
#   bash bench/coldstart/run.sh [--workloads puppeteer-pdf,python-ml,python-small,data-loader]
#        [--link 1gbit,2ms] [--runs 5] [--modes full,floor,accel-first,accel,warm] [--out DIR]
#
# The registry runs in a network namespace this script creates, reached over a veth pair shaped
# with tc tbf (the rate; this kernel has no netem, so the RTT comes from a delaying relay in the namespace). Every sample is a true cold
# start: daemon stopped (SIGTERM), node state cleared as the mode wants, page cache dropped,
# daemon started, one invoke timed with curl. Everything it made is removed on exit and checked.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo_root=$PWD
script_start=$EPOCHREALTIME

workloads=puppeteer-pdf,python-ml,python-small,data-loader
link=1gbit,2ms
runs=5
modes=full,floor,accel-first,accel,warm
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --workloads) workloads=${2:?}; shift 2 ;;
    --link) link=${2:?}; shift 2 ;;
    --runs) runs=${2:?}; shift 2 ;;
    --modes) modes=${2:?}; shift 2 ;;
    --out) out=${2:?}; shift 2 ;;
    -h | --help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || { echo "--runs must be a positive integer" >&2; exit 2; }
rate=${link%%,*}; rtt=${link#*,}
[[ "$rate" =~ ^[0-9]+(k|m|g)bit$ ]] || { echo "--link RATE,RTT: RATE like 1gbit or 100mbit" >&2; exit 2; }
[[ "$rtt" =~ ^[0-9.]+ms$ ]] || { echo "--link RATE,RTT: RTT like 2ms" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
case ",$modes," in *,accel,*) case ",$modes," in *,accel-first,*) ;; *) echo "mode 'accel' needs 'accel-first' (which records the access trace it prefetches)" >&2; exit 2 ;; esac ;; esac

log() { printf '== [+%ss] %s\n' "$(awk -v a="$script_start" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.0f", b-a}')" "$*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

bash scripts/install-deps.sh
for p in debootstrap jq iproute2; do
  [ "$(dpkg-query -W -f='${Status}' $p 2>/dev/null)" = "install ok installed" ] \
    || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $p >/dev/null
done
PY=/usr/bin/python3
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
. "$repo_root/bench/lib.sh"
build_pronto

# ---- the layer trees (cached) ---------------------------------------------------------------
declare -A layers
while read -r w dirs; do layers[$w]=$dirs; done < <(bash bench/coldstart/build.sh ${workloads//,/ })

work=$(mktemp -d /var/tmp/pronto-bench-coldstart.XXXXXX)
data="$work/data"
ns="pb8reg-$$"
vh="pb8h$$" vn="pb8n$$"
host_ip=10.208.8.1 reg_ip=10.208.8.2 reg_port=5000
reg_root=/var/cache/pronto-bench/coldstart-registry # blobs kept between runs: pushes are cached
registry_pid="" daemon_pid="" relay_pid=""
export PRONTO_INSECURE_REGISTRIES="$reg_ip:$reg_port"

our_mounts() { awk -v w="$work/" '{ if (index($5, w) == 1) print $5 }' /proc/self/mountinfo; }
stop_daemon() {
  [ -n "$daemon_pid" ] || return 0
  kill -TERM "$daemon_pid" 2>/dev/null || true
  local i
  for i in $(seq 600); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$daemon_pid" 2>/dev/null && { echo "warning: daemon ignored SIGTERM; killing it" >&2; kill -KILL "$daemon_pid"; }
  wait "$daemon_pid" 2>/dev/null || true
  daemon_pid=""
}
teardown_link() {
  tc qdisc del dev "$vh" root 2>/dev/null || true
  ip link del "$vh" 2>/dev/null || true
  [ -e "/run/netns/$ns" ] && ip netns delete "$ns"
  return 0
}
cleanup() {
  stop_daemon
  if [ -n "$registry_pid" ]; then kill "$registry_pid" 2>/dev/null || true; wait "$registry_pid" 2>/dev/null || true; fi
  if [ -n "$relay_pid" ]; then kill "$relay_pid" 2>/dev/null || true; wait "$relay_pid" 2>/dev/null || true; fi
  teardown_link
  local m
  for m in $(our_mounts | sort -r); do echo "warning: $m still mounted; unmounting" >&2; umount -l "$m" || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
copy_binaries

# ---- the link and the registry --------------------------------------------------------------
ip netns add "$ns"
ip link add "$vh" type veth peer name "$vn"
ip link set "$vn" netns "$ns"
ip addr add "$host_ip/30" dev "$vh"; ip link set "$vh" up
ip -n "$ns" addr add "$reg_ip/30" dev "$vn"; ip -n "$ns" link set "$vn" up; ip -n "$ns" link set lo up
mkdir -p "$reg_root"
cat >"$work/registry.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: false}}
storage: {filesystem: {rootdirectory: $reg_root/storage}, delete: {enabled: true}}
http: {addr: 127.0.0.1:5001}
YML
ip netns exec "$ns" docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
# the link's latency: a delaying relay in the namespace (this kernel has no netem; see delay-relay.py)
half_ms=$(awk -v r="${rtt%ms}" 'BEGIN{printf "%.3f", r/2}')
ip netns exec "$ns" "$PY" bench/coldstart/delay-relay.py "$reg_ip:$reg_port" 127.0.0.1:5001 "$half_ms" >"$work/relay.log" 2>&1 &
relay_pid=$!
for _ in $(seq 100); do curl -sf "http://$reg_ip:$reg_port/v2/" >/dev/null && break; sleep 0.1; done
curl -sf "http://$reg_ip:$reg_port/v2/" >/dev/null || { cat "$work/registry.log" >&2; die "registry did not start"; }
log "registry in netns $ns (pid $registry_pid), reached at $reg_ip:$reg_port through the delay relay (pid $relay_pid)"

# ---- the images (pushed once per recipe; unshaped) ------------------------------------------
declare -A ref digest size entry mem cpu path
wl_config() {
  case $1 in
    puppeteer-pdf) entry[$1]="--entrypoint /usr/bin/node --cmd /app/server.js" mem[$1]=2048 cpu[$1]=2 path[$1]="/pdf?name=bench" ;;
    python-ml) entry[$1]="--entrypoint /usr/bin/python3 --cmd /app/app.py" mem[$1]=1024 cpu[$1]=1 path[$1]="/predict?x=5.1,3.5,1.4,0.2" ;;
    python-small) entry[$1]="--entrypoint /usr/bin/python3 --cmd /app/app.py" mem[$1]=256 cpu[$1]=0.5 path[$1]="/primes?n=100000" ;;
    data-loader) entry[$1]="--entrypoint /usr/bin/python3 --cmd /app/app.py" mem[$1]=1024 cpu[$1]=1 path[$1]="/" ;;
  esac
}
for w in ${workloads//,/ }; do
  wl_config "$w"
  largs=(); for d in ${layers[$w]}; do largs+=(--layer "$d"); done
  key=$(printf '%s\n' "$w" ${layers[$w]} "${entry[$w]}" | sha256sum | cut -c1-16)
  ref[$w]="$reg_ip:$reg_port/bench/$w:$key"
  if [ -s "$reg_root/pushed-$w-$key" ] && curl -sf -o /dev/null -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$reg_ip:$reg_port/v2/bench/$w/manifests/$key"; then
    digest[$w]=$(cat "$reg_root/pushed-$w-$key")
  else
    log "pushing $w (gzip layers: ${layers[$w]})"
    # shellcheck disable=SC2086
    digest[$w]=$(nice -n 10 "$bin/pronto-mkimage" --compression gzip ${entry[$w]} --workdir /app \
      --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env HOME=/tmp "${largs[@]}" "${ref[$w]}")
    echo "${digest[$w]}" >"$reg_root/pushed-$w-$key"
  fi
  size[$w]=$(du -sb --apparent-size ${layers[$w]} | awk '{s+=$1} END{print s}')
  log "$w: ${ref[$w]} ${digest[$w]} ($(awk -v s="${size[$w]}" 'BEGIN{printf "%.0f", s/1e6}') MB unpacked)"
done

# ---- shape the link: tbf (rate) on each end's egress; the delay is the relay's -------------
burst=$(awk -v r="$rate" 'BEGIN{n=r+0; u=substr(r, length(n "")+1, 1); m=(u=="k")?1e3:(u=="m")?1e6:1e9; b=n*m/8/250; if (b<16384) b=16384; printf "%d", b}')
tc qdisc add dev "$vh" root handle 1: tbf rate "$rate" burst "$burst" latency 50ms
tc -n "$ns" qdisc add dev "$vn" root handle 1: tbf rate "$rate" burst "$burst" latency 50ms
# RTT as an HTTP client sees it: curl's time to the first byte of GET /v2/ on a new connection
# (the relay's handshake RTT + the request's RTT + the registry's own time), median of 7
ping_rtt=$(for _ in 1 2 3 4 5 6 7; do curl -s -o /dev/null -w '%{time_starttransfer}\n' "http://$reg_ip:$reg_port/v2/"; done \
  | sort -n | awk '{a[NR]=$1} END{printf "%.2f", a[4]*1000}')
log "link shaped: tbf $rate (burst $burst B) both ways, relay delay $half_ms ms each way; TCP connect + first byte median $ping_rtt ms"

# ---- the daemon -----------------------------------------------------------------------------
cport=$(free_port); iport=$(free_port)
start_daemon() {
  "$bin/pronto" serve --data-dir "$data" --control-addr "127.0.0.1:$cport" --invoke-addr "127.0.0.1:$iport" >>"$work/serve.log" 2>&1 &
  daemon_pid=$!
  for _ in $(seq 300); do
    [ -s "$data/api-token" ] && curl -s -o /dev/null "http://127.0.0.1:$cport/" && break
    kill -0 "$daemon_pid" 2>/dev/null || { tail -20 "$work/serve.log" >&2; die "pronto serve exited"; }
    sleep 0.05
  done
  token=$(tr -d '\n' <"$data/api-token")
}
P() { "$bin/pronto" --data-dir "$data" --api "http://127.0.0.1:$cport" --invoke-url "http://127.0.0.1:$iport" "$@"; }
start_daemon
log "pronto serve (pid $daemon_pid)"
for w in ${workloads//,/ }; do
  common=(--image "${ref[$w]}" --memory-size "${mem[$w]}" --cpu "${cpu[$w]}" --timeout 900 --initialization-timeout 600)
  P function create "$w-full" "${common[@]}" --acceleration-type None >/dev/null
  P function create "$w-acc" "${common[@]}" --acceleration-type Default >/dev/null
done
for w in ${workloads//,/ }; do
  t0=$EPOCHREALTIME
  for _ in $(seq 3600); do
    st=$(P function get "$w-acc" | jq -r '.customContainerConfig.accelerationInfo.status // .accelerationInfo.status // empty')
    [ "$st" = Ready ] && break
    [ "$st" = Failed ] && { P function get "$w-acc" >&2; die "$w: conversion failed"; }
    sleep 1
  done
  [ "$st" = Ready ] || die "$w: conversion not Ready after an hour"
  log "$w-acc: accelerated image Ready ($(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.0f", b-a}') s after the wait began)"
  P function get "$w-acc" >"$work/$w-acc.json"
done

# ---- one sample -----------------------------------------------------------------------------
check_body() { # workload bodyfile -> 0 if correct
  case $1 in
    puppeteer-pdf) [ "$(head -c 5 "$2")" = "%PDF-" ] && [ "$(stat -c %s "$2")" -gt 2000 ] ;;
    python-ml) [ "$(jq -r .species "$2" 2>/dev/null)" = setosa ] ;;
    python-small) [ "$(cat "$2")" = "primes below 100000: 9592" ] ;;
    data-loader) local d; for d in ${layers[$1]}; do [ -f "$d/data/blob.sha256" ] && grep -q "^sha256=$(cat "$d/data/blob.sha256") size=314572800 " "$2" && return 0; done; return 1 ;;
  esac
}
rx() { cat "/sys/class/net/$vh/statistics/rx_bytes"; }
ranges() { grep -c '" 206 ' "$work/registry.log" || true; }
daemon_cpu() { awk -v t="$(getconf CLK_TCK)" '{print ($14+$15+$16+$17)/t}' "/proc/$daemon_pid/stat"; }
samples="$work/samples.tsv"
: >"$work/ids.seen"
printf 'workload\tmode\trun\tttfb_ms\timageReady\tcontainerStarted\tappReady\tfirstByte\trootfs\tbytes\tranges\tcpu_s\n' >"$samples"
invoke_once() { # workload function mode run
  local w=$1 fn=$2 mode=$3 i=$4 rx0 rg0 res code ttfb cold
  rx0=$(rx); rg0=$(ranges)
  res=$(curl -sS -o "$work/body" -D "$work/hdr" -w '%{http_code} %{time_starttransfer}' --max-time 900 \
    -H "Authorization: Bearer $token" "http://127.0.0.1:$iport/invoke/$fn${path[$w]}") || die "$w $mode: invoke failed"
  read -r code ttfb <<<"$res"
  [ "$code" = 200 ] || { head -c 600 "$work/body" >&2; tail -20 "$work/serve.log" >&2; die "$w $mode run $i: HTTP $code"; }
  check_body "$w" "$work/body" || { head -c 300 "$work/body" >&2; die "$w $mode run $i: wrong body"; }
  awk -F': ' 'tolower($1) == "x-pronto-instance" { sub(/\r$/, "", $2); print $2 }' "$work/hdr" >>"$work/ids.seen"
  cold=$(awk -F': ' 'tolower($1) == "x-pronto-cold-start" { sub(/\r$/, "", $2); print $2 }' "$work/hdr")
  if [ "$mode" = warm ]; then [ -z "$cold" ] || die "$w warm: was a cold start"; cold="imageReady=0;containerStarted=0;appReady=0;firstByte=0;rootfs=warm"
  else [ -n "$cold" ] || die "$w $mode: not a cold start"; fi
  # bytes and Range requests from the daemon's start to now (the lazy rootfs keeps fetching only
  # what is read, so a sample counts what its start read)
  printf '%s\t%s\t%s\t%.1f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$w" "$mode" "$i" "$(awk -v t="$ttfb" 'BEGIN{print t*1000}')" \
    $(echo "$cold" | tr ';' '\n' | awk -F= '$1=="imageReady"||$1=="containerStarted"||$1=="appReady"||$1=="firstByte"{printf "%s ", $2} $1=="rootfs"{r=$2} $1=="prefetch"&&$2=="true"{r=r "+prefetch"} END{print r}') \
    "$(( $(rx) - rx_start ))" "$(( $(ranges) - rg_start ))" "$(daemon_cpu)" >>"$samples"
  log "$w $mode run $i: ttfb $(awk -v t="$ttfb" 'BEGIN{printf "%.0f", t*1000}') ms ($cold), $(( ($(rx) - rx_start) / 1000000 )) MB fetched"
}
# access traces stored for a function (the daemon's SQLite store), or deleted: accel-first must
# start without one, accel with the one accel-first recorded
traces() { # count|delete function
  "$PY" - "$data/pronto.db" "$1" "$2" <<'PYTRACE'
import sqlite3, sys
db, op, fn = sys.argv[1:]
c = sqlite3.connect(db)
if op == "delete":
    c.execute("DELETE FROM access_traces WHERE function_name = ?", (fn,)); c.commit()
else:
    print(c.execute("SELECT count(*) FROM access_traces WHERE function_name = ?", (fn,)).fetchone()[0])
PYTRACE
}
# A cold node as MODE wants it, then the daemon started fresh.
cold_node() { # mode workload
  stop_daemon
  [ -z "$(our_mounts)" ] || die "mounts left after the daemon stopped: $(our_mounts | tr '\n' ' ')"
  case $1 in
    full) rm -rf "$data/node/images" "$data/node/chunks" "$data/node/lazy" ;;
    accel-first) rm -rf "$data/node/images" "$data/node/chunks" "$data/node/lazy"; traces delete "$2-acc" ;;
    accel) rm -rf "$data/node/images" "$data/node/chunks" "$data/node/lazy"
      [ "$(traces count "$2-acc")" = 1 ] || die "accel: accel-first recorded no access trace for $2" ;;
    floor) rm -rf "$data/node/chunks" "$data/node/lazy"
      [ -d "$data/node/images/${digest[$2]#sha256:}" ] || die "floor: no unpacked image for $2" ;;
  esac
  sync; echo 3 >/proc/sys/vm/drop_caches
  start_daemon
  rx_start=$(rx); rg_start=$(ranges)
}
for w in ${workloads//,/ }; do
  for i in $(seq "$runs"); do
    for mode in full floor accel-first accel; do
      case ",$modes," in *,$mode,*) ;; *) [ "$mode" = full ] && case ",$modes," in *,floor,* | *,warm,*) ;; *) continue ;; esac || continue ;; esac
      fn="$w-full"; case $mode in accel*) fn="$w-acc" ;; esac
      cold_node "$mode" "$w"
      invoke_once "$w" "$fn" "$mode" "$i"
      if [ "$mode" = full ] && case ",$modes," in *,warm,*) true ;; *) false ;; esac; then
        invoke_once "$w" "$fn" warm "$i"
      fi
    done
  done
done
stop_daemon

# ---- nothing left behind ----------------------------------------------------------------------
leftover=""
[ -z "$(our_mounts)" ] || leftover+=" mounts:$(our_mounts | tr '\n' ' ')"
[ -z "$(ls "$data/node/instances" 2>/dev/null)" ] || leftover+=" instance-dirs"
registry_pid_was=$registry_pid relay_pid_was=$relay_pid
kill "$registry_pid" "$relay_pid"; wait "$registry_pid" "$relay_pid" 2>/dev/null || true; registry_pid="" relay_pid=""
teardown_link
ip netns list | grep -q "^$ns" && leftover+=" netns:$ns"
for p in $registry_pid_was $relay_pid_was; do kill -0 "$p" 2>/dev/null && leftover+=" process:$p"; done
n_ids=0
for id in $(sort -u "$work/ids.seen" | grep -E '^[0-9a-f]{12}$'); do
  n_ids=$((n_ids + 1))
  [ -e "/run/netns/pronto-$id" ] && leftover+=" netns:pronto-$id"
  compgen -G "/sys/fs/cgroup/*/pronto-$id" >/dev/null && leftover+=" cgroup:pronto-$id"
  [ -e "/sys/fs/cgroup/pronto-$id" ] && leftover+=" cgroup:pronto-$id"
done
ip link show "$vh" >/dev/null 2>&1 && leftover+=" veth:$vh"
tc qdisc show | grep -q "$vh" && leftover+=" qdisc"
leak_line="Nothing left behind: no mounts under the run's dir, no instance dirs; none of the $n_ids instances the run saw has a netns or cgroup left (so no process); registry and relay exited; netns $ns, veth $vh and its tbf qdiscs deleted."
[ -z "$leftover" ] || leak_line="**Left behind:**$leftover"
log "$leak_line"

# ---- report -----------------------------------------------------------------------------------
day=$(date +%Y-%m-%d)
[ -n "$out" ] || out="bench/results/$day"
mkdir -p "$out"
cp "$samples" "$out/samples.tsv"
sizes=""; for w in ${workloads//,/ }; do sizes+="$w=${size[$w]},$(jq -r '.customContainerConfig.accelerationInfo // .accelerationInfo | tojson' "$work/$w-acc.json" | tr -d '\t');"; done
export RUNS=$runs LINK="$rate, ${rtt} RTT (measured: a new connection to the first byte of GET /v2/ takes ${ping_rtt} ms, i.e. 2 RTT + the registry)" LEAK_LINE="$leak_line" SIZES="$sizes" \
  MACHINE="$(nproc) cores, $(free -g | awk '/^Mem:/{print $2}') GiB RAM, $(uname -sr), load average at the end $(cut -d" " -f1-3 /proc/loadavg) (a shared machine)" VERSION="pronto $pronto_version" \
  TOTAL_SECS=$(awk -v a="$script_start" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.0f", b-a}')
"$PY" bench/coldstart/report.py "$samples" "$out"
log "written: $out/report.md, $out/breakdown.svg"
