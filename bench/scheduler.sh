#!/usr/bin/env bash
# The scheduler under load, with real containers: (1) sustained load against a warm pool of
# provisioned instances: throughput and latency against the pool's capacity, measured in the same
# run by the same load on a single instance; (2) a burst from zero: cold starts, instances at
# once (sampled) and latency, against the same burst on the pool it left warm. Load comes from
# `pronto bench load`. See bench/README.md.
#
#   bash bench/scheduler.sh [--runs N] [--duration S] [--out DIR]   (defaults 3 runs, 10 s; root)
#
# Registry, images and the daemon's data dir live in a temp dir removed on exit; the registry
# and the daemon are stopped by PID (the daemon with SIGTERM: it tears its instances down).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

runs=3
duration=10
out=""
opt --runs runs
opt --duration duration
opt --out out
parse_args "$@"
need_positive_int --runs "$runs"
need_positive_int --duration "$duration" seconds
need_root "pronto serve runs containers"
: "${out:=bench-results/$(date +%Y-%m-%d)-scheduler}"

install_deps
build_pronto
bench_init pronto-bench-scheduler
data="$work/data"
copy_binaries
start_registry

# busybox httpd; /cgi-bin/work?S sleeps S seconds (a function doing I/O-bound work).
base="$work/layers/base"
mkdir -p "$base/bin" "$work/layers/app/www/cgi-bin"
cp /bin/busybox "$base/bin/busybox"
ln -s busybox "$base/bin/sh"
ln -s busybox "$base/bin/httpd"
ln -s busybox "$base/bin/sleep"
printf 'ok\n' >"$work/layers/app/www/index.html"
printf '#!/bin/sh\nsleep "${QUERY_STRING:-0.05}"\nprintf "Content-Type: text/plain\\r\\n\\r\\ndone\\n"\n' \
  >"$work/layers/app/www/cgi-bin/work"
chmod 755 "$work/layers/app/www/cgi-bin/work"
ref="$registry/bench/sched:v1"
"$bin/pronto-mkimage" --compression gzip --entrypoint /bin/httpd --cmd -f --cmd -p --cmd 9000 \
  --cmd -h --cmd /www --layer "$base" --layer "$work/layers/app" "$ref" >/dev/null
start_daemon
log "pronto serve: control 127.0.0.1:$cport, invoke 127.0.0.1:$iport"

work_s=0.05    # each request's work
conc=4         # instanceConcurrency
pool=4         # provisioned instances
load() { # FUNCTION CONCURRENCY ARGS...: pronto bench load --json on /cgi-bin/work
  local fn=$1 c=$2
  shift 2
  "$bin/pronto" bench load "http://127.0.0.1:$iport/invoke/$fn/cgi-bin/work?$work_s" \
    --header "Authorization: Bearer $token" --concurrency "$c" --json "$@"
}
wait_current() { # FUNCTION N: until N provisioned instances run
  local i
  for ((i = 0; i < 600; i++)); do
    [ "$(P provision get "$1" | jq .current)" = "$2" ] && return 0
    sleep 0.1
  done
  die "$1: $2 provisioned instances did not start"
}
instances_now() { find "$data/node/instances" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }

# Acceleration off: the measure is the scheduler, with no conversion competing for the CPU.
P function create one --image "$ref" --memory-size 128 --instance-concurrency "$conc" \
  --max-instances 1 --acceleration-type None >/dev/null
P function create pool --image "$ref" --memory-size 128 --instance-concurrency "$conc" \
  --max-instances "$pool" --acceleration-type None >/dev/null
P provision put one --target 1 >/dev/null
P provision put pool --target "$pool" >/dev/null
wait_current one 1
wait_current pool "$pool"
log "warm: 1 instance of 'one', $pool provisioned of 'pool' (instanceConcurrency $conc, ${work_s}s of work per request)"

mkdir -p "$work/res"
for k in $(seq "$runs"); do
  # (1) Sustained, closed loop, as many workers as the pool has places.
  load one $((conc * pool)) --duration "${duration}s" >"$work/res/one-$k.json" || die "load on one"
  load pool $((conc * pool)) --duration "${duration}s" >"$work/res/pool-$k.json" || die "load on pool"
  # (2) Burst from zero: 10 instances at most, one request each at a time, 100 at once.
  P function create "burst$k" --image "$ref" --memory-size 128 --max-instances 10 \
    --acceleration-type None >/dev/null
  (while :; do n=$(instances_now); echo "$n"; sleep 0.02; done) >"$work/res/sample-$k.txt" &
  sampler=$!
  load "burst$k" 100 --requests 100 --timeout 60s --fail-on-error >"$work/res/burst-cold-$k.json" \
    || die "burst on burst$k failed"
  load "burst$k" 100 --requests 100 --timeout 60s --fail-on-error >"$work/res/burst-warm-$k.json" \
    || die "warm burst on burst$k failed"
  kill "$sampler"
  wait "$sampler" 2>/dev/null || true
  P function delete "burst$k" >/dev/null
  log "run $k/$runs: one $(jq .throughput "$work/res/one-$k.json") req/s, pool $(jq .throughput "$work/res/pool-$k.json") req/s, burst cold starts $(jq .coldStarts "$work/res/burst-cold-$k.json")"
done
P provision delete one >/dev/null
P provision delete pool >/dev/null

report_env "$work"
export RUNS=$runs DURATION=$duration WORK_S=$work_s CONC=$conc POOL=$pool
"$PY" - "$work/res" >"$work/report.md" <<'PY'
import json, os, statistics, sys
res = sys.argv[1]
e = os.environ
runs, conc, pool, work_s = int(e["RUNS"]), int(e["CONC"]), int(e["POOL"]), float(e["WORK_S"])
med = statistics.median
def j(name): return [json.load(open(f"{res}/{name}-{k}.json")) for k in range(1, runs + 1)]
one, pl, cold, warm = j("one"), j("pool"), j("burst-cold"), j("burst-warm")
def m(rs, f): return med([f(r) for r in rs])
lat = lambda p: (lambda r: r["latencyMs"][p])
thr = lambda r: r["throughput"]
failed = sum(r["failed"] for r in one + pl + cold + warm)
# Instances at once during each run (the sampler counts the node's instance dirs: 1 + pool
# provisioned ones stay, the rest are the burst's).
most = []
for k in range(1, runs + 1):
    ns = [int(x) for x in open(f"{res}/sample-{k}.txt").read().split() if x.strip()]
    most.append(max(ns) - 1 - pool if ns else 0)
print(f"# Scheduler under load ({e['REPORT_DATE']})\n")
print(f"Machine: {e['MACHINE']}; load average {e['LOAD_START']} at the start, {e['LOAD_END']} at the end; "
      f"{runs} runs, medians; {e['TOTAL_SECS']} s in all.\n")
print(f"Function: busybox httpd, CGI sleeping {work_s} s per request, memorySize 128, "
      f"instanceConcurrency {conc}. Load: `pronto bench load` (closed loop, keep-alive).\n")
print("## Sustained load against a warm pool\n")
print(f"{conc * pool} workers for {e['DURATION']} s against 1 instance (`maxInstances` 1) and against a pool "
      f"of {pool} provisioned instances; capacity = instances × {conc} places / {work_s} s.\n")
print("| target | capacity req/s | throughput req/s | of capacity | p50 ms | p99 ms | max ms | failed |")
print("|---|---|---|---|---|---|---|---|")
for name, rs, n in [("1 instance", one, 1), (f"pool of {pool}", pl, pool)]:
    cap = n * conc / work_s
    t = m(rs, thr)
    print(f"| {name} | {cap:.0f} | {t:.0f} | {t / cap:.2f} | {m(rs, lat('p50')):.1f} | "
          f"{m(rs, lat('p99')):.1f} | {m(rs, lat('max')):.1f} | {sum(r['failed'] for r in rs)} |")
print(f"\nPool / one instance, throughput: **{m(pl, thr) / m(one, thr):.2f}×** (ideal {pool}×).\n")
print("## A burst from zero\n")
print("100 requests at once to a function scaled to zero (`maxInstances` 10, one request per "
      "instance at a time), then the same burst on the instances it left warm.\n")
print("| burst | cold starts | most instances at once | p50 ms | p99 ms | max ms | failed |")
print("|---|---|---|---|---|---|---|")
print(f"| from zero | {m(cold, lambda r: r['coldStarts']):.0f} | {max(most)} | {m(cold, lat('p50')):.0f} | "
      f"{m(cold, lat('p99')):.0f} | {m(cold, lat('max')):.0f} | {sum(r['failed'] for r in cold)} |")
print(f"| warm | {m(warm, lambda r: r['coldStarts']):.0f} | – | {m(warm, lat('p50')):.0f} | "
      f"{m(warm, lat('p99')):.0f} | {m(warm, lat('max')):.0f} | {sum(r['failed'] for r in warm)} |")
print(f"\nBurst p99, from zero / warm: **{m(cold, lat('p99')) / m(warm, lat('p99')):.2f}×**. "
      f"Failed requests in all runs: {failed}.")
PY
publish_report "$work/report.md" "$out/report.md"
cp "$work"/res/*.json "$out/" 2>/dev/null || true
