#!/usr/bin/env bash
# Cold-start benchmark: real workloads pulled over a shaped link, full pull vs accelerated.
# See bench/README.md ("coldstart"). `pronto bench coldstart ...` runs the copy of these scripts
# built into the binary, with itself as $PRONTO_BIN.
#
#   bash bench/coldstart/run.sh [--workloads puppeteer-pdf,python-ml,python-small,data-loader]
#        [--link 1gbit,2ms] [--runs 5] [--modes full,floor,accel-first,accel,warm] [--out DIR]
#        [--dry-run]
#
# The registry runs in a network namespace this script creates, reached over a veth pair shaped
# with tc tbf (the rate; this kernel has no netem, so the RTT comes from a delaying relay in the
# namespace). Every sample is a true cold start: daemon stopped (SIGTERM), node state cleared as
# the mode wants, page cache dropped, daemon started, one invoke timed with curl. Everything it
# made is removed on exit and checked. Root on Debian 12.
#
# pronto and pronto-mkimage are built from the source tree, or $PRONTO_BIN is used, with
# pronto-mkimage from $PRONTO_MKIMAGE, beside $PRONTO_BIN, or on PATH. The report goes to
# --out DIR, default bench/results/<date> of the source tree or, without one (as from
# `pronto bench`), ./bench-results/<date>. --dry-run checks the arguments and prints what would
# run, without root, network or building anything.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../lib.sh
. "$here/../lib.sh"

workloads=puppeteer-pdf,python-ml,python-small,data-loader
link=1gbit,2ms
runs=5
modes=full,floor,accel-first,accel,warm
out=""
dry_run=""
opt --workloads workloads
opt --link link
opt --runs runs
opt --modes modes
opt --out out
flag --dry-run dry_run
parse_args "$@"
need_positive_int --runs "$runs"
rate=${link%%,*}; rtt=${link#*,}
[[ "$rate" =~ ^[0-9]+(k|m|g)bit$ ]] || usage_error "--link RATE,RTT: RATE like 1gbit or 100mbit"
[[ "$rtt" =~ ^[0-9.]+ms$ ]] || usage_error "--link RATE,RTT: RTT like 2ms"
for m in ${modes//,/ }; do
  case $m in full | floor | accel-first | accel | warm) ;; *) usage_error "unknown mode $m" ;; esac
done
case ",$modes," in *,accel,*) case ",$modes," in *,accel-first,*) ;; *) usage_error "mode 'accel' needs 'accel-first' (which records the access trace it prefetches)" ;; esac ;; esac
case $out in "" | /*) ;; *) out=$PWD/$out ;; esac
out_default=$PWD/bench-results
[ -z "$repo_root" ] || out_default=$repo_root/bench/results

if [ -n "$dry_run" ]; then
  # build.sh checks the workload names; its output first, so that a bad name prints nothing else
  steps=$(bash "$here/build.sh" --dry-run ${workloads//,/ })
  echo "dry run: nothing is built, started or measured"
  echo "scripts: $bench_dir"
  echo "workloads: ${workloads//,/ }"
  echo "modes: ${modes//,/ }"
  echo "link: $rate, $rtt RTT"
  echo "runs: $runs"
  binaries_plan
  echo "report: ${out:-$out_default/$(date +%Y-%m-%d)}/report.md"
  echo "layers (bottom first, in ${PRONTO_BENCH_CACHE:-/var/cache/pronto-bench}/coldstart):"
  echo "  ${steps//$'\n'/$'\n'  }"
  exit 0
fi
need_root "network namespaces, tc, mounts, page cache drops"

install_deps
need_packages debootstrap jq iproute2
build_pronto

# ---- the layer trees (cached) ---------------------------------------------------------------
declare -A layers
progress 0 0 "building the workload images (cached in ${PRONTO_BENCH_CACHE:-/var/cache/pronto-bench})"
build_out=$(bash "$here/build.sh" ${workloads//,/ })
while read -r w dirs; do layers[$w]=$dirs; done <<<"$build_out"

bench_init pronto-bench-coldstart
data="$work/data"
ns="pb8reg-$$"
vh="pb8h$$" vn="pb8n$$"
# outside the instances' default subnet (10.208.0.0/16), where the daemon claims /30s
host_ip=10.209.8.1 reg_ip=10.209.8.2 reg_port=5000
reg_root=${PRONTO_BENCH_CACHE:-/var/cache/pronto-bench}/coldstart-registry # blobs kept between runs: pushes are cached
registry_pid="" daemon_pid="" relay_pid=""
export PRONTO_INSECURE_REGISTRIES="$reg_ip:$reg_port"

our_mounts() { awk -v w="$work/" '{ if (index($5, w) == 1) print $5 }' /proc/self/mountinfo; }
unmount_leftovers() {
  local m
  for m in $(our_mounts | sort -r); do warn "$m still mounted; unmounting"; umount -l "$m" || true; done
}
teardown_link() {
  tc qdisc del dev "$vh" root 2>/dev/null || true
  ip link del "$vh" 2>/dev/null || true
  [ ! -e "/run/netns/$ns" ] || ip netns delete "$ns"
}
at_exit unmount_leftovers
at_exit teardown_link # after the daemon, the registry and the relay are stopped
copy_binaries

# ---- the link and the registry --------------------------------------------------------------
ip netns add "$ns"
ip link add "$vh" type veth peer name "$vn"
ip link set "$vn" netns "$ns"
ip addr add "$host_ip/30" dev "$vh"; ip link set "$vh" up
ip -n "$ns" addr add "$reg_ip/30" dev "$vn"; ip -n "$ns" link set "$vn" up; ip -n "$ns" link set lo up
mkdir -p "$reg_root"
registry_config "$work/registry.yml" "$reg_root/storage" 127.0.0.1:5001 access-log delete
ip netns exec "$ns" docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
at_exit 'stop_pid registry_pid'
# the link's latency: a delaying relay in the namespace (this kernel has no netem; see delay-relay.py)
half_ms=$(awk -v r="${rtt%ms}" 'BEGIN{printf "%.3f", r/2}')
ip netns exec "$ns" "$PY" "$here/delay-relay.py" "$reg_ip:$reg_port" 127.0.0.1:5001 "$half_ms" >"$work/relay.log" 2>&1 &
relay_pid=$!
at_exit 'stop_pid relay_pid'
wait_http "http://$reg_ip:$reg_port/v2/" 10 || { cat "$work/registry.log" >&2; die "registry did not start"; }
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
progress 0 0 "pushing the workload images"
for w in ${workloads//,/ }; do
  wl_config "$w"
  largs=(); for d in ${layers[$w]}; do largs+=(--layer "$d"); done
  # shellcheck disable=SC2086 # the layer dirs, one word each
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
  # shellcheck disable=SC2086 # the layer dirs, one word each
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
  | median | awk '{printf "%.2f", $1*1000}')
log "link shaped: tbf $rate (burst $burst B) both ways, relay delay $half_ms ms each way; TCP connect + first byte median $ping_rtt ms"

# ---- the daemon -----------------------------------------------------------------------------
start_daemon
log "pronto serve (pid $daemon_pid)"
for w in ${workloads//,/ }; do
  common=(--image "${ref[$w]}" --memory-size "${mem[$w]}" --cpu "${cpu[$w]}" --timeout 900 --initialization-timeout 600)
  P function create "$w-full" "${common[@]}" --acceleration-type None >/dev/null
  P function create "$w-acc" "${common[@]}" --acceleration-type Default >/dev/null
done
progress 0 0 "waiting for the accelerated images"
for w in ${workloads//,/ }; do
  t0=$EPOCHREALTIME
  for _ in $(seq 3600); do
    st=$(P function get "$w-acc" | jq -r '.customContainerConfig.accelerationInfo.status // .accelerationInfo.status // empty')
    [ "$st" = Ready ] && break
    [ "$st" = Failed ] && { P function get "$w-acc" >&2; die "$w: conversion failed"; }
    sleep 1
  done
  [ "$st" = Ready ] || die "$w: conversion not Ready after an hour"
  log "$w-acc: accelerated image Ready ($(secs_since "$t0") s after the wait began)"
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
# The lazy mounts' counters from the daemon's /metrics, as name=value;... (`pronto_lazyfs_`
# and a counter's `_total` dropped): node totals since the daemon's start, and the daemon starts
# fresh for every sample, so they are this start's. Every pronto_lazyfs_* metric is kept, so
# counters added later (streamed_*) show up without a change here; `-` if /metrics failed.
lazy_stats() {
  { curl -sf --max-time 10 -H "Authorization: Bearer $token" "http://127.0.0.1:$cport/metrics" || true; } \
    | awk '$1 ~ /^pronto_lazyfs_[a-z_]+$/ { n = substr($1, 15); sub(/_total$/, "", n); printf "%s%s=%s", s, n, $2; s = ";" } END { if (!s) printf "-" }'
}
samples="$work/samples.tsv"
: >"$work/ids.seen"
printf 'workload\tmode\trun\tttfb_ms\timageReady\tcontainerStarted\tappReady\tfirstByte\trootfs\tbytes\tranges\tcpu_s\tlazy\tmount_ms\n' >"$samples"
# PRONTO_BENCH_PROFILE=DIR (optional, for investigations): each cold sample is recorded with
# `perf record -a -g` (whole machine: the daemon and the function) into DIR/W-MODE-RUN.perf, and
# the daemon's log and explain's answers are copied to DIR at the end.
profile_start() { # workload mode run
  perf_pid=""
  [ -n "${PRONTO_BENCH_PROFILE:-}" ] && [ "$2" != warm ] || return 0
  mkdir -p "$PRONTO_BENCH_PROFILE"
  perf record -q -a -g -F 499 -o "$PRONTO_BENCH_PROFILE/$1-$2-$3.perf" >/dev/null 2>&1 &
  perf_pid=$!
  sleep 0.3
}
profile_stop() {
  [ -n "${perf_pid:-}" ] || return 0
  kill -INT "$perf_pid" 2>/dev/null || true
  wait "$perf_pid" 2>/dev/null || true
  perf_pid=""
}
invoke_once() { # workload function mode run
  local w=$1 fn=$2 mode=$3 i=$4 res code ttfb cold
  profile_start "$w" "$mode" "$i"
  res=$(curl -sS -o "$work/body" -D "$work/hdr" -w '%{http_code} %{time_starttransfer}' --max-time 900 \
    -H "Authorization: Bearer $token" "http://127.0.0.1:$iport/invoke/$fn${path[$w]}") || die "$w $mode: invoke failed"
  profile_stop
  read -r code ttfb <<<"$res"
  [ "$code" = 200 ] || { head -c 600 "$work/body" >&2; tail -20 "$work/serve.log" >&2; die "$w $mode run $i: HTTP $code"; }
  check_body "$w" "$work/body" || { head -c 300 "$work/body" >&2; die "$w $mode run $i: wrong body"; }
  awk -F': ' 'tolower($1) == "x-pronto-instance" { sub(/\r$/, "", $2); print $2 }' "$work/hdr" >>"$work/ids.seen"
  cold=$(awk -F': ' 'tolower($1) == "x-pronto-cold-start" { sub(/\r$/, "", $2); print $2 }' "$work/hdr")
  if [ "$mode" = warm ]; then [ -z "$cold" ] || die "$w warm: was a cold start"; cold="imageReady=0;containerStarted=0;appReady=0;firstByte=0;rootfs=warm"
  else [ -n "$cold" ] || die "$w $mode: not a cold start"; fi
  # bytes, Range requests, CPU and the lazy counters from the daemon's start to now (the lazy
  # rootfs keeps fetching only what is read, so a sample counts what its start read)
  local lazy=- mount_ms
  [ "$mode" = warm ] || lazy=$(lazy_stats)
  # the lazy rootfs's `mount` phase (artifact manifest, index tree, its checks, the FUSE mount); - if none
  mount_ms=$(echo "$cold" | tr ';' '\n' | awk -F= '$1=="mount"{m=$2} END{print (m == "" ? "-" : m)}')
  # shellcheck disable=SC2046,SC2183 # the cold-start fields split into 5 of the arguments
  printf '%s\t%s\t%s\t%.1f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$w" "$mode" "$i" "$(awk -v t="$ttfb" 'BEGIN{print t*1000}')" \
    $(echo "$cold" | tr ';' '\n' | awk -F= '$1=="imageReady"||$1=="containerStarted"||$1=="appReady"||$1=="firstByte"{printf "%s ", $2} $1=="rootfs"{r=$2} $1=="prefetch"&&$2=="true"{r=r "+prefetch"} END{print r}') \
    "$(( $(rx) - rx_start ))" "$(( $(ranges) - rg_start ))" "$(daemon_cpu)" "$lazy" "$mount_ms" >>"$samples"
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
    # the trace, and the hot pack made from it (accel-first starts from the base revision)
    c.execute("DELETE FROM access_traces WHERE function_name = ?", (fn,))
    c.execute("UPDATE functions SET acceleration = json_remove(acceleration, '$.hotPack') WHERE name = ?", (fn,))
    c.commit()
else:
    print(c.execute("SELECT count(*) FROM access_traces WHERE function_name = ?", (fn,)).fetchone()[0])
PYTRACE
}
# Waits (bounded) until FUNCTION's hot pack, made from the trace accel-first recorded, is Ready:
# the accel sample mounts the hot revision, as a function's later cold starts do.
wait_hot() { # function
  local st
  for _ in $(seq 600); do
    st=$(P function get "$1" | jq -r '.customContainerConfig.accelerationInfo.hotPack.status // empty')
    case $st in
      Ready) return 0 ;;
      Failed) warn "$1: hot pack failed: $(P function get "$1" | jq -c '.customContainerConfig.accelerationInfo.hotPack')"; return 0 ;;
    esac
    sleep 0.2
  done
  die "$1: no hot pack 120 s after the accel-first sample"
}
# A cold node as MODE wants it, then the daemon started fresh.
cold_node() { # mode workload
  [ "$1" != accel ] || wait_hot "$2-acc"
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
# whether a mode's samples are taken: those asked for, and full also for floor (its unpacked
# image) and warm (its instance)
takes() {
  case ",$modes," in *,$1,*) return 0 ;; esac
  [ "$1" = full ] || return 1
  case ",$modes," in *,floor,* | *,warm,*) return 0 ;; esac
  return 1
}
per_run=0
for mode in full floor accel-first accel; do takes "$mode" && per_run=$((per_run + 1)); done
[[ ",$modes," == *,warm,* ]] && per_run=$((per_run + 1))
total=$(( $(wc -w <<<"${workloads//,/ }") * runs * per_run )) done_samples=0
for w in ${workloads//,/ }; do
  for i in $(seq "$runs"); do
    for mode in full floor accel-first accel; do
      takes "$mode" || continue
      fn="$w-full"; case $mode in accel*) fn="$w-acc" ;; esac
      progress "$done_samples" "$total" "$w $mode run $i"
      cold_node "$mode" "$w"
      invoke_once "$w" "$fn" "$mode" "$i"
      done_samples=$((done_samples + 1))
      if [ "$mode" = full ] && [[ ",$modes," == *,warm,* ]]; then
        invoke_once "$w" "$fn" warm "$i"
        done_samples=$((done_samples + 1))
      fi
    done
  done
done
progress "$total" "$total" "report"
# what `pronto function explain` predicts from the last accel-first start's trace, to set
# against the measured medians in the report
if [[ ",$modes," == *,accel-first,* ]]; then
  for w in ${workloads//,/ }; do
    P function explain "$w-acc" --link "$rate,$rtt" --no-layers -o json >"$work/$w-explain.json" ||
      warn "$w: explain failed"
  done
fi
stop_daemon
[ -z "${PRONTO_BENCH_PROFILE:-}" ] || cp "$work/serve.log" "$work"/*-explain.json "$PRONTO_BENCH_PROFILE/" 2>/dev/null || true

# ---- nothing left behind ----------------------------------------------------------------------
leftover=""
[ -z "$(our_mounts)" ] || leftover+=" mounts:$(our_mounts | tr '\n' ' ')"
[ -z "$(ls "$data/node/instances" 2>/dev/null)" ] || leftover+=" instance-dirs"
registry_pid_was=$registry_pid relay_pid_was=$relay_pid
stop_pid registry_pid
stop_pid relay_pid
teardown_link
ip netns list | grep -q "^$ns" && leftover+=" netns:$ns"
for p in $registry_pid_was $relay_pid_was; do kill -0 "$p" 2>/dev/null && leftover+=" process:$p"; done
n_ids=0
while read -r id; do
  n_ids=$((n_ids + 1))
  [ -e "/run/netns/pronto-$id" ] && leftover+=" netns:pronto-$id"
  compgen -G "/sys/fs/cgroup/*/pronto-$id" >/dev/null && leftover+=" cgroup:pronto-$id"
  [ -e "/sys/fs/cgroup/pronto-$id" ] && leftover+=" cgroup:pronto-$id"
done < <(sort -u "$work/ids.seen" | grep -E '^[0-9a-f]{12}$')
ip link show "$vh" >/dev/null 2>&1 && leftover+=" veth:$vh"
tc qdisc show | grep -q "$vh" && leftover+=" qdisc"
leak_line="Nothing left behind: no mounts under the run's dir, no instance dirs; none of the $n_ids instances the run saw has a netns or cgroup left (so no process); registry and relay exited; netns $ns, veth $vh and its tbf qdiscs deleted."
[ -z "$leftover" ] || leak_line="**Left behind:**$leftover"
log "$leak_line"

# ---- report -----------------------------------------------------------------------------------
report_env "$work"
[ -n "$out" ] || out=$out_default/$REPORT_DATE
mkdir -p "$out"
cp "$samples" "$out/samples.tsv"
sizes=""; for w in ${workloads//,/ }; do sizes+="$w=${size[$w]},$(jq -r '.customContainerConfig.accelerationInfo // .accelerationInfo | tojson' "$work/$w-acc.json" | tr -d '\t');"; done
export ACCEL_HOT=1 EXPLAIN_DIR=$work RUNS=$runs LINK_SHORT="$rate, $rtt RTT" LINK="$rate, ${rtt} RTT (measured: a new connection to the first byte of GET /v2/ takes ${ping_rtt} ms, i.e. 2 RTT + the registry)" LEAK_LINE="$leak_line" SIZES="$sizes" \
  MACHINE="$MACHINE, load average at the end $LOAD_END (a shared machine)" VERSION="pronto $pronto_version"
"$PY" "$here/report.py" "$samples" "$out"
log "written: $out/report.md, $out/breakdown.svg"
