#!/usr/bin/env bash
# Cold-start cost of the isolation layers. Three `pronto serve` daemons run side by side, one
# per node setting: `full` (the defaults: a user namespace per instance and an outbound
# network), `no-network` (`--instance-subnet none`) and `host-userns` (`--userns host
# --instance-subnet none`: the setting before both). Each round cold-starts the same
# busybox-httpd function once on each (create, one invoke, delete; the unpacked image is
# reused, so the start is setup + runtime + readiness), the order rotated per round. Reports the
# median of x-pronto-cold-start's total and its setup and start phases per setting, and the
# paired differences. See bench/README.md.
#
#   bash bench/isolation.sh [--runs N]   (default 15 rounds; root, Debian 12)
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

runs=15
opt --runs runs
parse_args "$@"
need_positive_int --runs "$runs"
need_root "pronto serve runs containers"

install_deps
build_pronto
bench_init pronto-bench-isolation
copy_binaries
start_registry

base="$work/layers/base"
mkdir -p "$base/bin" "$work/layers/app/www"
cp /bin/busybox "$base/bin/busybox"
ln -s busybox "$base/bin/httpd"
echo hello >"$work/layers/app/www/index.html"
ref="$registry/bench/httpd:v1"
"$bin/pronto-mkimage" --compression gzip --entrypoint /bin/httpd --cmd -f --cmd -p --cmd 9000 \
  --cmd -h --cmd /www --layer "$base" --layer "$work/layers/app" "$ref" >/dev/null

modes=(full no-network host-userns)
declare -A mode_env=(
  [full]=""
  [no-network]="PRONTO_INSTANCE_SUBNET=none"
  [host-userns]="PRONTO_USERNS=host PRONTO_INSTANCE_SUBNET=none"
)
declare -A c_port i_port d_pid d_data d_token
for m in "${modes[@]}"; do
  d_data[$m]="$work/data-$m"
  c_port[$m]=$(free_port)
  i_port[$m]=$(free_port)
  # shellcheck disable=SC2086 # the mode's variables, word by word
  env ${mode_env[$m]} "$bin/pronto" serve --data-dir "${d_data[$m]}" --control-addr "127.0.0.1:${c_port[$m]}" \
    --invoke-addr "127.0.0.1:${i_port[$m]}" >>"$work/serve-$m.log" 2>&1 &
  d_pid[$m]=$!
done
stop_all() {
  local m
  for m in "${modes[@]}"; do
    [ -n "${d_pid[$m]:-}" ] && kill -TERM "${d_pid[$m]}" 2>/dev/null || true
  done
  for m in "${modes[@]}"; do
    [ -n "${d_pid[$m]:-}" ] && wait "${d_pid[$m]}" 2>/dev/null || true
  done
}
at_exit stop_all
for m in "${modes[@]}"; do
  for _ in $(seq 200); do
    [ -s "${d_data[$m]}/api-token" ] && curl -s -o /dev/null "http://127.0.0.1:${c_port[$m]}/" && break
    sleep 0.1
  done
  [ -s "${d_data[$m]}/api-token" ] || { tail -20 "$work/serve-$m.log" >&2; die "$m: pronto serve did not start"; }
  d_token[$m]=$(tr -d '\n' <"${d_data[$m]}/api-token")
done
PM() { local m=$1; shift; "$bin/pronto" --data-dir "${d_data[$m]}" --api "http://127.0.0.1:${c_port[$m]}" \
  --invoke-url "http://127.0.0.1:${i_port[$m]}" "$@"; }

# sample MODE NAME: one cold start; appends "MODE total setup start" (ms) to samples.txt.
sample() {
  local m=$1 name=$2 hdr cold
  PM "$m" function create "$name" --image "$ref" --acceleration-type None -o json >/dev/null || die "$m: function create"
  hdr=$(curl -sS -D - -o /dev/null -H "Authorization: Bearer ${d_token[$m]}" \
    "http://127.0.0.1:${i_port[$m]}/invoke/$name/index.html") || die "$m: invoke"
  cold=$(awk -F': ' 'tolower($1) == "x-pronto-cold-start" { sub(/\r$/, "", $2); print $2 }' <<<"$hdr")
  [ -n "$cold" ] || die "$m: not a cold start: $hdr"
  PM "$m" function delete "$name" >/dev/null
  "$PY" - "$m" "$cold" >>"$work/samples.txt" <<'PY'
import sys
mode, header = sys.argv[1:3]
f = dict(kv.split("=", 1) for kv in header.split(";") if "=" in kv)
ms = lambda k: float(f[k].rstrip("ms")) if k in f else float("nan")
print(mode, ms("total"), ms("setup"), ms("start"))
PY
}
# The first start on each node pulls and unpacks: not counted.
for m in "${modes[@]}"; do sample "$m" warmup; done
: >"$work/samples.txt"
for r in $(seq "$runs"); do
  for k in 0 1 2; do
    m=${modes[$(((r + k) % 3))]}
    sample "$m" "r$r"
  done
  log "round $r/$runs: $(tail -3 "$work/samples.txt" | awk '{printf "%s %.0f ms  ", $1, $2}')"
done
stop_all
d_pid=()

report_env "$work"
out="${repo_root:-.}/bench/results/$(date +%Y-%m-%d)-isolation.md"
"$PY" - "$work/samples.txt" "$runs" "$pronto_version" >"$work/report.md" <<'PY'
import os, statistics, sys
path, runs, version = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = [l.split() for l in open(path)]
by = {}
for m, total, setup, start in rows:
    by.setdefault(m, []).append((float(total), float(setup), float(start)))
med = lambda xs: statistics.median(xs)
print(f"### Cold-start cost of the isolation layers, {runs} rounds\n")
print(f"Machine: {os.environ['MACHINE']}; load {os.environ['LOAD_START']} → {os.environ['LOAD_END']}. pronto {version}.")
print("Function: busybox httpd, unpacked image reused (no pull), 3 daemons side by side, order rotated per round. Milliseconds, medians.\n")
print("| setting | cold start total | setup | start (runc create + network + start) |")
print("|---|---|---|---|")
for m in ["host-userns", "no-network", "full"]:
    t = by[m]
    print(f"| {m} | {med([x[0] for x in t]):.1f} | {med([x[1] for x in t]):.1f} | {med([x[2] for x in t]):.1f} |")
base = {m: med([x[0] for x in by[m]]) for m in by}
print()
print(f"User namespace (no-network − host-userns): **{base['no-network'] - base['host-userns']:+.1f} ms**; "
      f"outbound network (full − no-network): **{base['full'] - base['no-network']:+.1f} ms** (medians of totals).")
PY
publish_report "$work/report.md" "$out"
