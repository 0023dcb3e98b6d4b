#!/usr/bin/env bash
# Warm-invoke overhead: the same busybox-httpd function instance called through `pronto serve`
# (wrk → invoke listener → proxy → instance) and called directly (wrk inside the instance's
# network namespace → 127.0.0.1:9000), in the same run, alternating the order; plus the
# cold-start breakdown (x-pronto-cold-start) of that image, first pull and unpacked-image reuse.
# See bench/README.md.
#
#   bash bench/invoke.sh [--runs N] [--duration S]   (defaults 5 runs, 10 s per wrk; root, Debian 12)
#
# Everything (registry, images, the daemon's data dir) lives in a temp dir removed on exit; the
# registry and the daemon are stopped by PID (the daemon with SIGTERM: it tears its instances down).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

runs=5
duration=10
opt --runs runs
opt --duration duration
parse_args "$@"
need_positive_int --runs "$runs"
need_positive_int --duration "$duration" seconds
need_root "pronto serve runs containers, wrk enters their netns"

# ---------------------------------------------------------------------------------------------
# 1. What it needs
install_deps
need_packages wrk
build_pronto
bench_init pronto-bench-invoke # registry, images, daemon data; removed on exit
data="$work/data"
netns_before=$(ip netns list 2>/dev/null | awk '{print $1}' | grep '^pronto-' | sort || true)

our_mounts() { awk -v w="$work/" '{ if (index($5, w) == 1) print $5 }' /proc/self/mountinfo; }
# Instance ids this daemon made: every id seen in a response, plus whatever is on disk now.
seen_ids="$work/ids.seen"
our_ids() {
  { cat "$seen_ids" 2>/dev/null; ls "$data/node/instances" 2>/dev/null; } | grep -E '^[0-9a-f]{12}$' | sort -u
}
# Only finds something if the daemon failed its teardown: undo what it made, loudly.
undo_leftovers() {
  local m id
  for id in $(our_ids); do
    if [ -e "/run/netns/pronto-$id" ]; then
      warn "netns pronto-$id left behind; deleting it"
      ip netns delete "pronto-$id" 2>/dev/null || true
    fi
  done
  for m in $(our_mounts | sort -r); do
    warn "$m still mounted; unmounting it"
    umount -l "$m" 2>/dev/null || true
  done
}
at_exit undo_leftovers # after the daemon and the registry are stopped
copy_binaries

# ---------------------------------------------------------------------------------------------
# 2. Registry on a free loopback port, and the image: busybox httpd serving a 100-byte page
start_registry

base="$work/layers/base"
mkdir -p "$base/bin"
cp /bin/busybox "$base/bin/busybox"
ln -s busybox "$base/bin/sh"
ln -s busybox "$base/bin/httpd"
page="$(head -c 99 /dev/zero | tr '\0' 'x')"
make_app_layer() { # $1 dir, $2 variant tag (makes the digest differ)
  mkdir -p "$1/www"
  printf '%s\n' "$page" >"$1/www/index.html" # 100 bytes
  printf '%s\n' "$2" >"$1/www/variant.txt"
}
push_image() { # $1 tag, $2 app layer dir; prints the digest
  "$bin/pronto-mkimage" --compression gzip --entrypoint /bin/httpd --cmd -f --cmd -p --cmd 9000 \
    --cmd -h --cmd /www --layer "$base" --layer "$2" "$registry/bench/httpd:$1"
}
make_app_layer "$work/layers/app" main
ref="$registry/bench/httpd:v1"
digest=$(push_image v1 "$work/layers/app")
# One image per pulled cold-start sample: same busybox layer, a different app layer (new digest,
# so each is pulled and unpacked from scratch by the node).
for k in $(seq "$runs"); do
  make_app_layer "$work/layers/app-$k" "pull-$k"
  push_image "pull-$k" "$work/layers/app-$k" >/dev/null
done
log "pushed $ref ($digest) and $runs single-use variants for pulled cold starts"

# ---------------------------------------------------------------------------------------------
# 3. The daemon
start_daemon
log "pronto serve: control 127.0.0.1:$cport, invoke 127.0.0.1:$iport (pid $daemon_pid)"

url_of() { echo "http://127.0.0.1:$iport/invoke/$1/index.html"; }
header_of() { awk -v h="$2" -F': ' 'tolower($1) == h { sub(/\r$/, "", $2); print $2 }' "$1"; }
# shellcheck disable=SC2012 # instance ids are hex
instances_now() { ls "$data/node/instances" 2>/dev/null | sort | tr '\n' ' '; }
fail_daemon() { tail -30 "$work/serve.log" >&2; die "$*"; }

# invoke FUNCTION: one request with curl; sets inv_code inv_total inv_instance inv_cold
invoke() {
  local out
  out=$(curl -sS -o "$work/body" -D "$work/hdr" -w '%{http_code} %{time_total}' \
    -H "Authorization: Bearer $token" "$(url_of "$1")") || fail_daemon "invoking $1 failed"
  read -r inv_code inv_total <<<"$out"
  inv_instance=$(header_of "$work/hdr" x-pronto-instance)
  inv_cold=$(header_of "$work/hdr" x-pronto-cold-start)
  [ "$inv_code" = 200 ] || { cat "$work/body" >&2; fail_daemon "invoking $1: HTTP $inv_code"; }
  [ "$(cat "$work/body")" = "$page" ] || fail_daemon "invoking $1: unexpected body"
  [[ "$inv_instance" =~ ^[0-9a-f]{12}$ ]] || fail_daemon "invoking $1: no x-pronto-instance header"
  echo "$inv_instance" >>"$seen_ids"
}

P function create lat --image "$ref" >"$work/lat.json" || fail_daemon "function create lat"
P function create tput --image "$ref" --instance-concurrency 8 >"$work/tput.json" \
  || fail_daemon "function create tput"
invoke lat
lat_id=$inv_instance
lat_cold=$inv_cold
log "lat: instance $lat_id, cold start ($lat_cold)"
invoke tput
tput_id=$inv_instance
log "tput: instance $tput_id, cold start ($inv_cold)"
[ -n "$lat_cold" ] || die "the first invoke of lat was not a cold start"
P invoke lat --path /index.html >/dev/null 2>"$work/cli.err" || fail_daemon "pronto invoke lat"
log "pronto invoke lat: $(cat "$work/cli.err")"

# ---------------------------------------------------------------------------------------------
# 4. Warm invokes: wrk direct (inside the instance's netns) vs through pronto
mkdir -p "$work/wrk"
notes="$work/notes"
: >"$notes"
# CPU-quota throttling of an instance (cgroup v1 or v2): "periods throttled"
cpu_stat() {
  local f
  for f in "/sys/fs/cgroup/cpu/pronto-$1/cpu.stat" "/sys/fs/cgroup/pronto-$1/cpu.stat"; do
    [ -r "$f" ] && { awk '/^nr_periods /{p=$2} /^nr_throttled /{t=$2} END{print p+0, t+0}' "$f"; return; }
  done
  echo "0 0"
}
# wrk_run KIND PATH RUN: KIND lat (-t1 -c1) or tput (-t2 -c8); PATH direct, pronto, or
# pronto-close (through pronto, a new client connection per request: a diagnostic row)
wrk_run() {
  local kind=$1 path=$2 i=$3 fn id t c before after extra=() s0 s1
  case "$kind" in
    lat) fn=lat id=$lat_id t=1 c=1 ;;
    tput) fn=tput id=$tput_id t=2 c=8 ;;
  esac
  [ "$path" = pronto-close ] && extra=(-H "Connection: close")
  local out="$work/wrk/$kind-$path-$i.txt"
  s0=$(cpu_stat "$id")
  if [ "$path" = direct ]; then
    ip netns exec "pronto-$id" wrk -t"$t" -c"$c" -d"${duration}s" --latency \
      "http://127.0.0.1:9000/index.html" >"$out" 2>&1 || { cat "$out" >&2; die "wrk direct failed"; }
    s1=$(cpu_stat "$id")
  else
    before=$(instances_now)
    wrk -t"$t" -c"$c" -d"${duration}s" --latency -H "Authorization: Bearer $token" "${extra[@]}" \
      "$(url_of "$fn")" >"$out" 2>&1 || { cat "$out" >&2; die "wrk $path failed"; }
    s1=$(cpu_stat "$id")
    after=$(instances_now)
    invoke "$fn"
    # The same instance served everything: no new instance appeared, and it still answers.
    [ "$before" = "$after" ] \
      || echo "run $i $kind: instances changed during the pronto wrk: [$before] -> [$after]" >>"$notes"
    [ "$inv_instance" = "$id" ] && [ -z "$inv_cold" ] \
      || echo "run $i $kind: after wrk, served by $inv_instance (expected $id), cold='$inv_cold'" >>"$notes"
  fi
  echo "$s0 $s1" | awk '{print $3-$1, $4-$2}' >"$out.throttle"
  grep -q 'Non-2xx' "$out" && echo "run $i $kind $path: $(grep 'Non-2xx' "$out" | xargs)" >>"$notes"
  return 0
}
# Not measured: a short warm-up of each path (page cache, pronto's connection setup paths).
for kind in lat tput; do for path in direct pronto $([ $kind = lat ] && echo pronto-close); do
  saved=$duration; duration=2; wrk_run "$kind" "$path" warmup; duration=$saved
done; done
log "warm-up done; instances: $(instances_now)"
instances_at_start=$(instances_now)

for i in $(seq "$runs"); do
  if [ $((i % 2)) = 1 ]; then order="direct pronto pronto-close"; else order="pronto-close pronto direct"; fi
  for kind in lat tput; do
    for path in $order; do
      [ "$kind/$path" = tput/pronto-close ] || wrk_run "$kind" "$path" "$i"
    done
  done
  rps() { awk '/^Requests\/sec:/{printf "%.0f", $2}' "$work/wrk/$1-$i.txt"; }
  p50() { awk '/^ +50%/{print $2}' "$work/wrk/$1-$i.txt"; }
  log "run $i/$runs ($order): c1 p50 direct $(p50 lat-direct) pronto $(p50 lat-pronto) pronto-close $(p50 lat-pronto-close); c8 req/s direct $(rps tput-direct) pronto $(rps tput-pronto)"
done
[ "$(instances_now)" = "$instances_at_start" ] \
  || echo "instances at the end of the warm runs [$(instances_now)] differ from the start [$instances_at_start]" >>"$notes"
P function delete lat >/dev/null
P function delete tput >/dev/null

# ---------------------------------------------------------------------------------------------
# 5. Cold starts: per sample, a new function invoked once, then deleted
wait_no_instances() {
  for _ in $(seq 200); do [ -z "$(instances_now)" ] && return 0; sleep 0.05; done
  echo "instances still present 10 s after delete: $(instances_now)" >>"$notes"
}
wait_no_instances
: >"$work/cold.txt"
cold_sample() { # $1 function name, $2 image ref
  P function create "$1" --image "$2" >/dev/null || fail_daemon "function create $1"
  invoke "$1"
  [ -n "$inv_cold" ] || die "$1: first invoke was not a cold start"
  echo "$1 $inv_total $inv_cold" >>"$work/cold.txt"
  P function delete "$1" >/dev/null
  wait_no_instances
}
for k in $(seq "$runs"); do
  cold_sample "pull$k" "$registry/bench/httpd:pull-$k"
  cold_sample "reuse$k" "$ref"
  log "cold sample $k/$runs: $(tail -2 "$work/cold.txt" | awk '{printf "%s total %.0f ms (%s)  ", $1, $2*1000, $3}')"
done

# ---------------------------------------------------------------------------------------------
# 6. Stop the daemon; check it left nothing behind
ids=$(our_ids)
daemon_status=0
stop_daemon
[ "$daemon_status" = 0 ] || { tail -30 "$work/serve.log" >&2; echo "pronto serve exited with $daemon_status" >>"$notes"; }
leftover=""
for id in $ids; do
  [ -e "/run/netns/pronto-$id" ] && leftover+=" netns:pronto-$id"
  compgen -G "/sys/fs/cgroup/*/pronto-$id" >/dev/null && leftover+=" cgroup:pronto-$id"
  [ -e "/sys/fs/cgroup/pronto-$id" ] && leftover+=" cgroup:pronto-$id"
done
[ -z "$(our_mounts)" ] || leftover+=" mounts:$(our_mounts | tr '\n' ' ')"
[ -z "$(ls "$data/node/instances" 2>/dev/null)" ] || leftover+=" instance-dirs:$(instances_now)"
n_ids=$(echo "$ids" | grep -c . || true)
if [ -n "$leftover" ]; then
  echo "left behind after SIGTERM:$leftover" >>"$notes"
  log "LEFT BEHIND:$leftover"
  leak_line="**Left behind after SIGTERM:**$leftover"
else
  leak_line="Teardown: after SIGTERM none of the $n_ids instances this run made has a netns, cgroup, mount or instance dir left."
fi
netns_after=$(ip netns list 2>/dev/null | awk '{print $1}' | grep '^pronto-' | sort || true)
others=$(comm -13 <(echo "$netns_before") <(echo "$netns_after") | grep -c . || true)
[ "$others" = 0 ] || leak_line+=" ($others pronto- netns created meanwhile by other processes on this machine — not this daemon's instances.)"

# ---------------------------------------------------------------------------------------------
# 7. Report
report_env "$work"
VERSIONS="pronto $pronto_version, $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}'), $(runc --version | head -1), $(busybox | head -1 | awk '{print $1, $2}')"
FUNC_DEFAULTS=$(jq -r '"memorySize \(.memorySize) MB, cpu \(.cpu), timeout \(.timeout) s"' "$work/lat.json")
LAT_CONC=$(jq -r .instanceConcurrency "$work/lat.json") TPUT_CONC=$(jq -r .instanceConcurrency "$work/tput.json")
export RUNS=$runs DURATION=$duration LEAK_LINE=$leak_line REF_DIGEST=$digest \
  MACHINE="$MACHINE, load average at the end $LOAD_END" VERSIONS FUNC_DEFAULTS LAT_CONC TPUT_CONC
"$PY" - "$work/wrk" "$work/cold.txt" "$notes" >"$work/report.md" <<'PY'
import os, re, statistics, sys
wrkdir, coldfile, notesfile = sys.argv[1:4]
e = os.environ
runs = int(e["RUNS"])
med = statistics.median
UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}

def parse(path):
    text = open(path).read()
    def pct(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M)
        return float(m.group(1)) * UNIT[m.group(2)] if m else float("nan")
    rps = float(re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M).group(1))
    reqs = int(re.search(r"^\s+(\d+) requests in", text, re.M).group(1))
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errs = sum(map(int, errs.groups())) if errs else 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    periods, throttled = map(int, open(path + ".throttle").read().split())
    return {"p50": pct(50), "p99": pct(99), "rps": rps, "reqs": reqs, "errs": errs,
            "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "thr": 100.0 * throttled / periods if periods else 0.0}

PATHS = {"lat": ("direct", "pronto", "pronto-close"), "tput": ("direct", "pronto")}
R = {(k, p): [parse(f"{wrkdir}/{k}-{p}-{i}.txt") for i in range(1, runs + 1)]
     for k in PATHS for p in PATHS[k]}
def m(k, p, f): return med([r[f] for r in R[(k, p)]])
def tot(k, p, f): return sum(r[f] for r in R[(k, p)])

ld50, lp50 = m("lat", "direct", "p50"), m("lat", "pronto", "p50")
ld99, lp99 = m("lat", "direct", "p99"), m("lat", "pronto", "p99")
ldr, lpr = m("lat", "direct", "rps"), m("lat", "pronto", "rps")
td, tp = m("tput", "direct", "rps"), m("tput", "pronto", "rps")
over = lp50 - ld50
# per-run overhead (paired within a run), to show its spread
pair = [R[("lat", "pronto")][i]["p50"] - R[("lat", "direct")][i]["p50"] for i in range(runs)]
ratio_runs = [R[("tput", "pronto")][i]["rps"] / R[("tput", "direct")][i]["rps"] for i in range(runs)]

cold = []
for line in open(coldfile):
    name, total, fields = line.split()
    d = dict(kv.split("=") for kv in fields.split(";"))
    cold.append({"name": name, "total": float(total) * 1e3, "pulled": d["imagePulled"] == "true",
                 **{k: float(d[k]) for k in ("imageReady", "containerStarted", "appReady", "firstByte")}})
def cold_row(label, rows):
    if not rows:
        return f"| {label} | 0 | – | – | – | – | – |"
    f = lambda k: f"{med([r[k] for r in rows]):.0f}"
    return (f"| {label} | {len(rows)} | {f('imageReady')} | {f('containerStarted')} | {f('appReady')} "
            f"| {f('firstByte')} | {f('total')} |")
pulled = [r for r in cold if r["pulled"]]
reused = [r for r in cold if not r["pulled"]]

notes = [l.strip() for l in open(notesfile) if l.strip()]
errs = {f"{k}/{p}": tot(k, p, "errs") for k, p in R}
non2xx = sum(tot(k, p, "non2xx") for k, p in R)
lc50, lc99, lcr = (m("lat", "pronto-close", f) for f in ("p50", "p99", "rps"))
thr = lambda k, p: f"{m(k, p, 'thr'):.0f}%"
verdict = "within" if over <= 1.0 else "over"
fmt = lambda xs, d=2: ", ".join(f"{x:.{d}f}" for x in xs)

print(f"""### Warm-invoke overhead and cold starts, {runs} runs × {e['DURATION']} s per wrk

Function: busybox `httpd -f -p 9000 -h /www` serving a 100-byte `index.html` (2 gzip layers, {e['REF_DIGEST']}); {e['FUNC_DEFAULTS']} (defaults).
Machine: {e['MACHINE']}. Versions: {e['VERSIONS']}.
Method: one `pronto serve`; per run, each wrk pair back to back on the same warm instance, order alternated (odd runs direct first). **direct** = `ip netns exec pronto-ID wrk … http://127.0.0.1:9000/index.html`; **pronto** = `wrk -H 'Authorization: Bearer …' http://127.0.0.1:PORT/invoke/NAME/index.html`. Medians over runs.

#### (a) Latency, `wrk -t1 -c1 --latency` (function with instanceConcurrency {e['LAT_CONC']})

| path | p50 ms | p99 ms | req/s | instance CPU-throttled periods |
|---|---|---|---|---|
| direct | {ld50:.3f} | {ld99:.3f} | {ldr:.0f} | {thr('lat', 'direct')} |
| pronto | {lp50:.3f} | {lp99:.3f} | {lpr:.0f} | {thr('lat', 'pronto')} |
| pronto − direct | **{over:+.3f}** | {lp99 - ld99:+.3f} | {lpr / ldr:.2f}× | |
| *diagnostic:* pronto, `Connection: close` | {lc50:.3f} | {lc99:.3f} | {lcr:.0f} | {thr('lat', 'pronto-close')} |

Overhead p50(pronto) − p50(direct) = **{over:.3f} ms** ({verdict} the 1 ms target). Per run (paired): {fmt(pair, 3)} ms.
The diagnostic row is the same request through pronto with a new client connection per request (as the direct path has, since busybox httpd closes every connection; wrk's latency excludes connecting): p50 − direct = {lc50 - ld50:+.3f} ms.

#### (b) Throughput, `wrk -t2 -c8` (function with instanceConcurrency {e['TPUT_CONC']})

| path | req/s | p50 ms | p99 ms | instance CPU-throttled periods |
|---|---|---|---|---|
| direct | {td:.0f} | {m('tput', 'direct', 'p50'):.3f} | {m('tput', 'direct', 'p99'):.3f} | {thr('tput', 'direct')} |
| pronto | {tp:.0f} | {m('tput', 'pronto', 'p50'):.3f} | {m('tput', 'pronto', 'p99'):.3f} | {thr('tput', 'pronto')} |

Ratio pronto / direct (median req/s): **{tp / td:.2f}**. Per run: {fmt(ratio_runs)}.

#### (c) Cold starts (`x-pronto-cold-start`, ms since the request reached the proxy; medians)

Each sample: `function create`, one `curl` invoke (client total = curl `time_total`), `function delete`. *pulled*: an image digest the node has never seen (a {runs}-variant family differing in one small file), so it is pulled and unpacked; *reused*: the already-unpacked benchmark image. Fields are cumulative: imageReady ⊂ containerStarted ⊂ appReady ⊂ firstByte.

| kind | n | imageReady | containerStarted | appReady | firstByte | client total |
|---|---|---|---|---|---|---|
{cold_row("pulled (imagePulled=true)", pulled)}
{cold_row("reused (imagePulled=false)", reused)}

Raw cold samples (ms, client total / firstByte): {'; '.join(f"{r['name']} {r['total']:.0f}/{r['firstByte']:.0f}" for r in cold)}.

#### Checks and raw numbers

- Same instance: {'every pronto wrk was served by the one warm instance of its function (instance set unchanged across each wrk, the invoke after it served by the same id, not a cold start).' if not notes else 'see problems below.'}
- wrk socket errors (summed over runs): {', '.join(f'{k} {v}' for k, v in errs.items())}; non-2xx responses: {non2xx}.
- {e['LEAK_LINE']}
- Throttled periods: share of the instance's CFS periods (cgroup `cpu.stat`, `nr_throttled / nr_periods`) in which its CPU quota ran out during that wrk; a throttled request waits for the next period (up to 65 ms with 0.35 CPU of a 100 ms period), on either path.
- Raw p50 ms, lat — direct: {fmt([r['p50'] for r in R[('lat', 'direct')]], 3)}; pronto: {fmt([r['p50'] for r in R[('lat', 'pronto')]], 3)}; pronto-close: {fmt([r['p50'] for r in R[('lat', 'pronto-close')]], 3)}.
- Raw req/s, tput — direct: {fmt([r['rps'] for r in R[('tput', 'direct')]], 0)}; pronto: {fmt([r['rps'] for r in R[('tput', 'pronto')]], 0)}.
- Whole benchmark script: {float(e['TOTAL_SECS']):.0f} s.""")
if notes:
    print("\n**Problems:**\n")
    for n in notes:
        print(f"- {n}")
PY
publish_report "$work/report.md" "$bench_dir/results/invoke-$REPORT_DATE.md"
