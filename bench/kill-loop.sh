#!/usr/bin/env bash
# The kill-9 loop (issue 17): `kill -9` of `pronto serve` at random moments during pulls,
# conversions and invocations, then a restart on the same data dir and ports, and checks: every
# function present and serving (HTTP 200), interrupted acceleration jobs ending Ready (or Failed
# with a reason), and nothing the killed daemon made left over once the restarted one has run its
# crash cleanup (instance dirs, mounts, loop devices, network namespaces, cgroups, runc
# containers, processes, temp dirs of pulls and conversions). Every few iterations, and at the
# end, the daemon is stopped cleanly (SIGTERM) and the machine checked for anything of it at all.
# See bench/README.md.
#
#   bash bench/kill-loop.sh [--iterations N] [--seed S] [--out DIR] [--stop-every K]
#                           [--big-mb M] [--files F]
#   (defaults 30 iterations, a random seed (printed; pass it back to replay the same plan),
#   bench-results/DATE-kill-loop, a clean stop every 5 iterations, a big layer of 32 MB of random
#   bytes and 40000 files of 512 B; root)
#
# Activities, as many of each (shuffled by the seed): pull (a function updated to an image digest
# the node has never seen, with the big layer, then invoked: the kill lands in its cold-start
# pull), convert (the same with accelerationType Default: the kill lands in its conversion), and
# invoke (`pronto bench load` on two small functions, one lazily mounted: cold starts and
# requests in flight). The kill comes 0-2 s (seeded) after the activity began.
#
# Registry, images and the daemon's data dir live in a temp dir removed on exit; the registry and
# the daemon are stopped by PID. Exit status 1 if any check failed or anything was left over.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

iterations=30
seed=""
stop_every=5
big_mb=32
files=40000
out=""
opt --iterations iterations
opt --seed seed
opt --stop-every stop_every
opt --big-mb big_mb
opt --files files
opt --out out
parse_args "$@"
need_positive_int --iterations "$iterations"
need_positive_int --stop-every "$stop_every"
need_positive_int --big-mb "$big_mb" MB
need_positive_int --files "$files"
[ -n "$seed" ] || seed=$((($(date +%s%N) / 1000) % 1000000))
[[ "$seed" =~ ^[0-9]+$ ]] || usage_error "--seed must be a number"
need_root "pronto serve runs containers"
: "${out:=bench-results/$(date +%Y-%m-%d)-kill-loop}"

install_deps
build_pronto
bench_init pronto-bench-kill
data="$work/data"
copy_binaries
start_registry
RANDOM=$seed
log "seed $seed"

# ---------------------------------------------------------------------------------------------
# What this daemon made, and what is left of it

seen_ids="$work/ids.seen"   # instance ids: from response headers and the instance dirs
seen_links="$work/links.seen" # "ID NETWORK" of the instances' /30s
seen_pids="$work/pids.seen" # "PID STARTTIME ID" of the instances' container inits
: >"$seen_ids"
: >"$seen_pids"
bg_pids=() # background activity (curl, pronto bench load), ended by PID

starttime() { awk '{ sub(/^.*\) /, ""); print $20 }' "/proc/$1/stat" 2>/dev/null || true; }
# alive PID STARTTIME: the same process (not a reused PID) and not a zombie
alive() {
  local st
  [ -r "/proc/$1/stat" ] || return 1
  st=$(awk '{ sub(/^.*\) /, ""); print $1, $20 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [ "${st#* }" = "$2" ] && [ "${st%% *}" != Z ]
}
# record_instances: what is on disk now goes to the seen lists
record_instances() {
  local d id pid
  for d in "$data"/node/instances/*/; do
    [ -d "$d" ] || continue
    id=$(basename "$d")
    echo "$id" >>"$seen_ids"
    # Its /30, once its outbound network is wired: the veth and the claim to check later.
    jq -r --arg id "$id" 'select(.network) | "\($id) \(.network)"' "$d/state.json" 2>/dev/null >>"$seen_links" || true
    if [ -s "$d/pid" ]; then
      pid=$(tr -dc 0-9 <"$d/pid")
      [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] && echo "$pid $(starttime "$pid") $id" >>"$seen_pids"
    fi
  done
  sort -u -o "$seen_ids" "$seen_ids"
  sort -u -o "$seen_pids" "$seen_pids"
}
our_ids() { grep -E '^[0-9a-f]{12}$' "$seen_ids" | sort -u || true; }
# "MOUNTID MOUNTPOINT" of the mounts under the data dir, and of the rootfs overlays (under
# /run/pronto/) whose layers are there
our_mounts() { awk -v d="$data/" 'index($0, d) > 0 { print $1, $5 }' /proc/self/mountinfo; }
# "loopN BACKINGFILE" of the loop devices backed by a file under the data dir
our_loops() {
  local f b
  for f in /sys/block/loop*/loop/backing_file; do
    [ -r "$f" ] || continue
    b=$(cat "$f" 2>/dev/null) || continue
    case $b in "$data"/*) echo "$(basename "$(dirname "$(dirname "$f")")") $b" ;; esac
  done
}
runc_ids() { runc --root "$data/node/runc" list -q 2>/dev/null || true; }
temp_dirs() {
  compgen -G "$data/node/images/.*.partial-*" || true
  compgen -G "$data/node/images/.*.blobs-*" || true
  compgen -G "$data/convert/pronto-convert-*" || true
}
# descendants PID: "PID STARTTIME COMM" of every process under PID
descendants() {
  local p
  for p in $(ps -e -o pid=,ppid= | awk -v root="$1" '
      { parent[$1] = $2 }
      END { for (p in parent) { q = parent[p]; while (q > 1) { if (q == root) { print p; break } q = parent[q] } } }'); do
    echo "$p $(starttime "$p") $(cat "/proc/$p/comm" 2>/dev/null)"
  done
}
# instance_leftovers ID...: what is left of these instances (netns, cgroup, dir, container)
instance_leftovers() {
  local id rl
  rl=" $(runc_ids | tr '\n' ' ') "
  for id in "$@"; do
    [ -e "/run/netns/pronto-$id" ] && echo "netns pronto-$id"
    compgen -G "/sys/fs/cgroup/*/pronto-$id" | sed 's/^/cgroup /' || true
    [ -e "/sys/fs/cgroup/pronto-$id" ] && echo "cgroup /sys/fs/cgroup/pronto-$id"
    [ -e "$data/node/instances/$id" ] && echo "instance dir node/instances/$id"
    compgen -G "/run/pronto/*/$id" | sed 's/^/mount point dir /' || true
    local net hex
    for net in $(awk -v id="$id" '$1 == id { print $2 }' "$seen_links" 2>/dev/null); do
      hex=$(printf 'pn%02x%02x%02x%02x' ${net//./ })
      [ -e "/sys/class/net/$hex" ] && echo "veth $hex ($net/30)"
      [ -e "/run/pronto/net/$net" ] && echo "address claim /run/pronto/net/$net"
    done
    [[ "$rl" == *" $id "* ]] && echo "runc container $id"
  done
  return 0
}
# pid_leftovers FILE: the processes of FILE ("PID STARTTIME REST...") still alive
pid_leftovers() {
  local pid st rest
  while read -r pid st rest; do
    [ -n "$pid" ] && alive "$pid" "$st" && echo "process $pid ($rest) alive: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-80)"
  done <"$1"
  return 0
}

# Only finds something if the daemon's teardown failed: undo what it left, loudly (after the
# daemon and the registry are stopped).
undo_leftovers() {
  local p id m l
  for p in "${bg_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -d "$data" ] || return 0
  for id in $(runc_ids); do
    warn "runc container $id left behind; deleting it"
    runc --root "$data/node/runc" delete --force "$id" >/dev/null 2>&1 || true
  done
  for id in $(our_ids); do
    if [ -e "/run/netns/pronto-$id" ]; then
      warn "netns pronto-$id left behind; deleting it"
      ip netns delete "pronto-$id" 2>/dev/null || true
    fi
    for m in /sys/fs/cgroup/*/pronto-"$id" /sys/fs/cgroup/pronto-"$id"; do
      [ -d "$m" ] && { warn "cgroup $m left behind; removing it"; rmdir "$m" 2>/dev/null || true; }
    done
  done
  for m in $(our_mounts | awk '{ print $2 }' | sort -r); do
    warn "$m still mounted; unmounting it"
    umount -l "$m" 2>/dev/null || true
  done
  our_loops | while read -r l _; do
    warn "/dev/$l backed by a file under the data dir; detaching it"
    losetup -d "/dev/$l" 2>/dev/null || true
  done
}
at_exit undo_leftovers

# ---------------------------------------------------------------------------------------------
# Images: busybox httpd (small), and the same with a layer of random bytes (big)

base="$work/layers/base"
mkdir -p "$base/bin" "$work/layers/app/www" "$work/layers/big/data"
cp /bin/busybox "$base/bin/busybox"
ln -s busybox "$base/bin/sh"
ln -s busybox "$base/bin/httpd"
printf 'ok\n' >"$work/layers/app/www/index.html"
head -c "$((big_mb << 20))" /dev/urandom >"$work/layers/big/data/random.bin"
# and many small files: an unpack and a conversion cost per file too, so both take a few
# seconds (the kill lands in them) without many GB on disk
"$PY" - "$work/layers/big/data/files" "$files" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"{i % 200:03d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"{i}.bin"), "wb") as f:
        f.write(os.urandom(512))
PY
mkimage() { # REF LAYER...
  local ref=$1 l args=()
  shift
  for l in "$@"; do args+=(--layer "$l"); done
  "$bin/pronto-mkimage" --compression gzip --entrypoint /bin/httpd --cmd -f --cmd -p --cmd 9000 \
    --cmd -h --cmd /www "${args[@]}" "$ref" >/dev/null
}
mkimage "$registry/kill/small:v1" "$base" "$work/layers/app"
mkimage "$registry/kill/big:v1" "$base" "$work/layers/big" "$work/layers/app"
save_manifest kill/big v1 "$work/big-manifest"
log "pushed kill/small:v1 and kill/big:v1 (a layer of $big_mb MB of random bytes and $files files of 512 B)"
# variant N: kill/big's image under a digest the node has never seen (its manifest with an
# annotation), in a repository of its own (so the converter's memo knows none of its layers);
# its blobs are mounted from kill/big, nothing is uploaded. Prints the reference.
variant() {
  jq -c --arg v "$1" '.annotations = ((.annotations // {}) + {"bench.kill-loop/variant": $v})' \
    "$work/big-manifest.json" >"$work/variant.json"
  cp "$work/big-manifest.type" "$work/variant.type"
  fresh_repo kill/big "kill/v$1" v1 "$work/variant"
}

# ---------------------------------------------------------------------------------------------
# The daemon and its functions

functions=(small small-accel big big-accel)
wait_api() { # SECONDS: until the control API answers
  local i
  for ((i = 0; i < $1 * 10; i++)); do
    curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$cport/" && return 0
    kill -0 "$daemon_pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
serve_log_from() { tail -c +"$(($1 + 1))" "$work/serve.log" 2>/dev/null || true; }
log_size() { stat -c %s "$work/serve.log" 2>/dev/null || echo 0; }
url_of() { echo "http://127.0.0.1:$iport/invoke/$1/index.html"; }
header_of() { awk -v h="$2" -F': ' 'tolower($1) == h { sub(/\r$/, "", $2); print $2 }' "$1"; }
# invoke FUNCTION MAXTIME: one request; sets inv_code, inv_instance, inv_cold; 0 on HTTP 200
invoke() {
  inv_code=$(curl -s -o "$work/body" -D "$work/hdr" -w '%{http_code}' --max-time "$2" \
    -H "Authorization: Bearer $token" "$(url_of "$1")" 2>/dev/null) || inv_code=${inv_code:-000}
  inv_instance=$(header_of "$work/hdr" x-pronto-instance 2>/dev/null || true)
  inv_cold=$(header_of "$work/hdr" x-pronto-cold-start 2>/dev/null || true)
  [ -z "$inv_instance" ] || echo "$inv_instance" >>"$seen_ids"
  [ "$inv_code" = 200 ]
}
accel_status() { P function get "$1" 2>/dev/null | jq -r '.accelerationInfo.status // "none"' || echo "?"; }

start_daemon
wait_api 60 || die "pronto serve did not answer"
log "pronto serve: control 127.0.0.1:$cport, invoke 127.0.0.1:$iport (pid $daemon_pid)"
P function create small --image "$registry/kill/small:v1" --acceleration-type None \
  --instance-concurrency 4 >/dev/null
P function create small-accel --image "$registry/kill/small:v1" --acceleration-type Default \
  --instance-concurrency 4 >/dev/null
P function create big --image "$registry/kill/big:v1" --acceleration-type None >/dev/null
P function create big-accel --image "$registry/kill/big:v1" --acceleration-type Default >/dev/null
for f in small-accel big-accel; do
  for ((k = 0; k < 600; k++)); do
    s=$(accel_status "$f")
    [ "$s" = Ready ] && break
    [ "$s" = Failed ] && die "$f: the first conversion failed: $(P function get "$f" | jq -r .accelerationInfo.reason)"
    sleep 0.5
  done
  [ "$s" = Ready ] || die "$f: not Ready after 300 s"
done
for f in "${functions[@]}"; do invoke "$f" 120 || die "$f does not serve before the loop (HTTP $inv_code)"; done
log "4 functions created and serving (small/big, acceleration None/Default)"

# ---------------------------------------------------------------------------------------------
# The loop

# The plan: as many of each activity, shuffled; a delay (ms) per iteration.
acts=(pull convert invoke)
plan=()
for ((i = 0; i < iterations; i++)); do plan+=("${acts[i % 3]}"); done
for ((i = iterations - 1; i > 0; i--)); do
  j=$((RANDOM % (i + 1)))
  t=${plan[i]} plan[i]=${plan[j]} plan[j]=$t
done
delays=()
for ((i = 0; i < iterations; i++)); do delays+=($((RANDOM % 2001))); done

rows="$work/rows.md"     # one table row per iteration
stops="$work/stops.md"   # one row per clean stop
findings="$work/findings.md"
: >"$rows"
: >"$stops"
: >"$findings"
failures=0
leftovers=0
declare -A act_count=() act_fail=() act_left=() act_inflight=()
# finding KIND ITERATION ACTIVITY TEXT [LOGFROM]: a failure or a leftover, with the daemon's
# warnings and errors since LOGFROM (bytes into serve.log)
finding() {
  {
    printf -- '- **%s**, iteration %s (%s): %s\n' "$1" "$2" "$3" "$4"
    if [ -n "${5:-}" ]; then
      serve_log_from "$5" | grep -E 'WARN|ERROR' | tail -8 | sed -E 's/ invoke\{[^}]*\}:/:/; s/ image=sha256:[0-9a-f]{64}//g' | cut -c1-600 | sed 's/^/      /; 1i\    daemon log (warnings and errors since the restart):\n\n    ```' \
        | sed '$a\    ```' || true
    fi
  } >>"$findings"
}

# note ITERATION ACTIVITY TEXT LOGFROM: something that is not a failure but worth reading
note() {
  printf -- '- Iteration %s (%s): %s\n' "$1" "$2" "$3" >>"$notes"
  serve_log_from "$4" | grep -E 'WARN|ERROR' | grep -v -E 'left by a previous daemon|interrupted (image pull|conversion) left' \
    | tail -4 | sed -E 's/ invoke\{[^}]*\}:/:/; s/ image=sha256:[0-9a-f]{64}//g' | cut -c1-600 | sed 's/^/      /; 1i\    daemon log (warnings and errors since the restart, crash cleanup left out):\n\n    ```' \
    | sed '$a\    ```' >>"$notes" || true
}
notes="$work/notes.md"
: >"$notes"
ran=0
for ((it = 1; it <= iterations; it++)); do
  if [ "$(df --output=avail -k "$work" | tail -1)" -lt 1048576 ]; then
    warn "less than 1 GiB free on $(df --output=target "$work" | tail -1): stopping before iteration $it"
    echo "- Stopped before iteration $it: less than 1 GiB free on the disk." >>"$notes"
    stop_daemon
    break
  fi
  ran=$it
  act=${plan[it - 1]}
  delay_ms=${delays[it - 1]}
  delay=$(awk -v m="$delay_ms" 'BEGIN { printf "%.3f", m / 1000 }')
  act_count[$act]=$((${act_count[$act]:-0} + 1))
  problems=()
  left=()
  bg_pids=()
  detail=""

  # 1. The activity, then the kill
  case $act in
    pull)
      ref=$(variant "$it")
      P function update big --image "$ref" >/dev/null
      curl -s -o /dev/null --max-time 120 -H "Authorization: Bearer $token" "$(url_of big)" &
      bg_pids+=($!)
      ;;
    convert)
      ref=$(variant "$it")
      P function update big-accel --image "$ref" --acceleration-type Default >/dev/null
      # and a request, served by the configuration before the update until Ready
      curl -s -o /dev/null --max-time 120 -H "Authorization: Bearer $token" "$(url_of big-accel)" &
      bg_pids+=($!)
      ;;
    invoke)
      for f in small small-accel; do
        "$bin/pronto" bench load "$(url_of "$f")" --header "Authorization: Bearer $token" \
          --concurrency 8 --duration 3s --timeout 10s --json --record-header x-pronto-instance \
          >"$work/load-$it-$f.json" 2>/dev/null &
        bg_pids+=($!)
      done
      ;;
  esac
  sleep "$delay"
  record_instances
  descendants "$daemon_pid" >"$work/desc-$it"
  # what was in flight, just before the kill
  n_partial=$(compgen -G "$data/node/images/.*.partial-*" | wc -l || true)
  n_scratch=$(compgen -G "$data/convert/pronto-convert-*" | wc -l || true)
  n_inst=$(find "$data/node/instances" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
  case $act in
    pull) if kill -0 "${bg_pids[0]}" 2>/dev/null; then inflight="cold start under way"; else inflight="cold start done"; fi ;;
    convert) inflight="big-accel $(accel_status big-accel)" ;;
    invoke) inflight="load running" ;;
  esac
  kill -9 "$daemon_pid"
  wait "$daemon_pid" 2>/dev/null || true
  daemon_pid=""
  for p in "${bg_pids[@]}"; do
    wait "$p" 2>/dev/null || true # curl fails at once; bench load ends after its 3 s
  done
  bg_pids=()
  for f in small small-accel; do
    if [ -s "$work/load-$it-$f.json" ]; then
      jq -r '.recordHeader.values // {} | keys[]' "$work/load-$it-$f.json" >>"$seen_ids" 2>/dev/null || true
    fi
  done
  case $act in
    pull) detail="$inflight, $n_partial pull temp dir(s)" ;;
    convert) detail="$inflight, $n_scratch scratch dir(s)" ;;
    invoke) detail="$inflight, $n_inst instance(s)" ;;
  esac
  if [[ "$inflight" =~ (under\ way|Preparing|running)$ ]]; then
    act_inflight[$act]=$((${act_inflight[$act]:-0} + 1))
  fi
  # what the killed daemon left, to be cleaned by the next one
  record_instances
  find "$data/node/instances" -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | grep -E '^[0-9a-f]{12}$' >"$work/killed-ids-$it" || true
  cp "$work/killed-ids-$it" "$work/killed-ids"
  awk 'NR == FNR { want[$1] = 1; next } ($3 in want)' "$work/killed-ids" "$seen_pids" >"$work/killed-pids-$it"
  our_mounts >"$work/killed-mounts-$it"
  our_loops >"$work/killed-loops-$it"
  temp_dirs >"$work/killed-temps-$it"
  n_killed=$(wc -l <"$work/killed-ids-$it")
  detail+="; left: $n_killed instance(s), $(wc -l <"$work/killed-mounts-$it") mount(s), $(wc -l <"$work/killed-loops-$it") loop(s), $(wc -l <"$work/killed-temps-$it") temp dir(s)"

  # 2. Restart
  from=$(log_size)
  t0=$EPOCHREALTIME
  start_daemon
  if ! wait_api 120; then
    problems+=("the restarted daemon did not answer in 120 s")
    restart_s="–"
  else
    restart_s=$(secs_since "$t0" 2)
  fi

  # 3. The killed daemon's leftovers, after the restarted one's crash cleanup
  mapfile -t l < <(
    # shellcheck disable=SC2046 # ids are hex
    instance_leftovers $(cat "$work/killed-ids-$it")
    pid_leftovers "$work/killed-pids-$it"
    # processes the killed daemon had started (container inits aside, checked above)
    while read -r pid st comm; do
      [ -n "$pid" ] && alive "$pid" "$st" && echo "process $pid ($comm), a child of the killed daemon, alive"
    done <"$work/desc-$it"
    awk 'NR == FNR { now[$1] = 1; next } ($1 in now) { print "mount " $2 }' \
      <(our_mounts) "$work/killed-mounts-$it"
    awk 'NR == FNR { now[$1 " " $2] = 1; next } (($1 " " $2) in now) { print "loop device /dev/" $1 " backed by " $2 }' \
      <(our_loops) "$work/killed-loops-$it"
    while read -r d; do [ -n "$d" ] && [ -e "$d" ] && echo "temp dir ${d#"$data"/}"; done <"$work/killed-temps-$it"
  )
  left+=("${l[@]}")

  # 4. Every function present and serving
  if [ "$restart_s" != "–" ]; then
    names=$(P function list 2>/dev/null | jq -r '.functions[].functionName' | sort | tr '\n' ' ' || true)
    for f in "${functions[@]}"; do
      [[ " $names " == *" $f "* ]] || problems+=("function $f missing from the list ($names)")
    done
    for f in "${functions[@]}"; do
      ok=""
      codes=""
      for ((k = 0; k < 30; k++)); do
        elapsed=$(secs_since "$t0")
        [ "$elapsed" -lt 120 ] || break
        if invoke "$f" 60; then ok=1; break; fi
        codes+="$inv_code "
        sleep 1
      done
      [ -n "$ok" ] || problems+=("function $f not serving within 120 s of the restart (HTTP ${codes% })")
      if [ -n "$codes" ] && [ -n "$ok" ]; then
        detail+="; $f served after HTTP ${codes% }"
        note "$it" "$act" "\`$f\` answered HTTP ${codes% } before it served a 200, $(secs_since "$t0") s after the restart" "$from"
      fi
    done
    served_s=$(secs_since "$t0" 2)
    # 5. Acceleration jobs: Ready or Failed (with a reason) in a bounded time
    for f in small-accel big-accel; do
      s="?"
      for ((k = 0; k < 600; k++)); do
        s=$(accel_status "$f")
        case $s in Ready | Failed) break ;; esac
        sleep 0.5
      done
      case $s in
        Ready) ;;
        Failed)
          reason=$(P function get "$f" | jq -r '.accelerationInfo.reason // ""')
          if [ -n "$reason" ]; then detail+=", $f Failed: $reason"; else problems+=("$f acceleration Failed with no reason"); fi ;;
        *) problems+=("$f acceleration still $s 300 s after the restart") ;;
      esac
    done
    accel_s=$(secs_since "$t0" 1)
    # the release, once Ready, serves
    if [ "$act" = convert ] && [ "$(accel_status big-accel)" = Ready ]; then
      invoke big-accel 60 || problems+=("big-accel not serving after its conversion ended Ready (HTTP $inv_code)")
      [[ "$inv_cold" != *rootfs=* ]] || detail+="; then big-accel Ready, its cold start $(grep -o 'rootfs=[a-z]*' <<<"$inv_cold")"
    fi
  else
    served_s="–"
    accel_s="–"
  fi
  record_instances

  # 6. Every few iterations and at the end: a clean stop, and nothing of the daemon left
  stop_note=""
  if ((it % stop_every == 0 || it == iterations)); then
    ids=$(our_ids)
    t1=$EPOCHREALTIME
    daemon_status=0
    stop_daemon
    stop_s=$(secs_since "$t1" 1)
    sl=()
    [ "$daemon_status" = 0 ] || sl+=("pronto serve exited with status $daemon_status on SIGTERM")
    # shellcheck disable=SC2086 # ids are hex
    mapfile -t l < <( (
      instance_leftovers $ids
      pid_leftovers "$seen_pids"
      our_mounts | awk '{ print "mount " $2 }'
      our_loops | awk '{ print "loop device /dev/" $1 " backed by " $2 }'
      for id in $(runc_ids); do echo "runc container $id"; done
      find "$data/node/instances" -mindepth 1 -maxdepth 1 2>/dev/null | sed "s|^$data/|instance dir |"
      temp_dirs | sed "s|^$data/|temp dir |"
      find "$data/convert" -mindepth 1 -maxdepth 1 ! -name 'pronto-convert-*' 2>/dev/null | sed "s|^$data/|left in |"
      find "$data/node/lazy" -mindepth 1 -maxdepth 1 2>/dev/null | sed "s|^$data/|lazy mount dir |"
      # The daemon's nftables table goes with it (named after its run dir: 12 hex digits of
      # the SHA-256 of the node's data dir).
      t="pronto_$(printf '%s' "$(realpath "$data/node")" | sha256sum | cut -c1-12)"
      nft list table inet "$t" >/dev/null 2>&1 && echo "nftables table $t"
    ) | awk '!seen[$0]++')
    sl+=("${l[@]}")
    n_ids=$(echo "$ids" | grep -c . || true)
    if [ ${#sl[@]} -gt 0 ]; then
      leftovers=$((leftovers + 1))
      for x in "${sl[@]}"; do finding "Left after SIGTERM" "$it" "clean stop" "$x" "$from"; done
      stop_res="**$(printf '%s; ' "${sl[@]}")**"
    else
      stop_res="nothing left (of the $n_ids instances seen so far)"
    fi
    printf '| %s | %s | %s | %s |\n' "$it" "$stop_s" "$daemon_status" "$stop_res" >>"$stops"
    stop_note=" + clean stop"
    # Forget the unpacked images: the next pulls start from nothing.
    find "$data/node/images" -mindepth 1 -maxdepth 1 -type d -regextype egrep -regex '.*/[0-9a-f]{64}' \
      -exec rm -rf {} +
    if ((it < iterations)); then
      start_daemon
      wait_api 120 || die "pronto serve did not answer after a clean stop"
    fi
  fi

  # 7. The row
  if [ ${#problems[@]} -gt 0 ]; then
    failures=$((failures + 1))
    act_fail[$act]=$((${act_fail[$act]:-0} + 1))
    for x in "${problems[@]}"; do finding FAILURE "$it" "$act" "$x" "$from"; done
  fi
  if [ ${#left[@]} -gt 0 ]; then
    leftovers=$((leftovers + 1))
    act_left[$act]=$((${act_left[$act]:-0} + 1))
    for x in "${left[@]}"; do finding "Left after the restart's cleanup" "$it" "$act" "$x" "$from"; done
  fi
  res="ok"
  [ ${#problems[@]} = 0 ] && [ ${#left[@]} = 0 ] || res="**$(printf '%s; ' "${problems[@]}" "${left[@]}")**"
  res=${res//; \*\*/**}
  printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$it" "$act" "$delay" "$detail" "$restart_s" \
    "$served_s" "$accel_s" "$res$stop_note" >>"$rows"
  log "iteration $it/$iterations: $act, kill after ${delay} s ($detail); restart ${restart_s} s, all serving at ${served_s} s; $res$stop_note"
done

# ---------------------------------------------------------------------------------------------
# Report

report_env "$work"
summary="$ran iterations, $failures failures, $leftovers leftovers"
{
  echo "# The kill-9 loop ($REPORT_DATE)"
  echo
  echo "Machine: $MACHINE; load average $LOAD_START at the start, $LOAD_END at the end; $TOTAL_SECS s in all."
  echo "pronto $pronto_version, $(runc --version | head -1); seed $seed (\`--seed $seed\` replays the same plan and delays)."
  echo
  echo "**$summary.** (Failures: iterations with a check that failed; leftovers: iterations, or clean"
  echo "stops, after which something was left.)"
  echo
  echo "| activity | iterations | killed while in flight | with a failure | with a leftover |"
  echo "|---|---|---|---|---|"
  for a in "${acts[@]}"; do
    echo "| $a | ${act_count[$a]:-0} | ${act_inflight[$a]:-0} | ${act_fail[$a]:-0} | ${act_left[$a]:-0} |"
  done
  echo
  echo "Functions: \`small\` (busybox httpd, acceleration None, instanceConcurrency 4), \`small-accel\`"
  echo "(the same, Default: lazily mounted), \`big\` (plus a layer of $big_mb MB of random bytes and $files files of 512 B, None),"
  echo "\`big-accel\` (the same, Default). Per iteration, an activity, then \`kill -9\` of \`pronto serve\`"
  echo "after the delay, and a restart (same data dir and ports):"
  echo
  echo "- **pull**: \`big\` updated to a digest the node has never seen (kill/big's manifest with an"
  echo "  annotation, in a new repository), then invoked: the kill lands in its cold-start pull."
  echo "- **convert**: \`big-accel\` updated the same way: the kill lands in its conversion."
  echo "- **invoke**: \`pronto bench load\` on \`small\` and \`small-accel\` (8 workers each, 3 s)."
  echo
  echo "Checks after each restart: (a) what the killed daemon left (its instances: netns, cgroups,"
  echo "instance dir, runc container, container init processes; its other child processes; its mounts"
  echo "and loop devices under the data dir, by mount id and device; its temp dirs of pulls and"
  echo "conversions) is gone once the control API answers; (b) \`function list\` has all four and"
  echo "each serves an HTTP 200 (retried, within 120 s of the restart); (c) both acceleration jobs"
  echo "end Ready, or Failed with a reason, within 300 s (after a convert iteration, \`big-accel\` is"
  echo "invoked again once Ready). Every $stop_every iterations and at the end: SIGTERM, then nothing"
  echo "of any instance seen so far (ids from the instance dirs and \`x-pronto-instance\`), no mount or"
  echo "loop device under the data dir, no runc container, no instance, lazy-mount, temp or scratch"
  echo "dir; then the unpacked images are deleted (the next pulls start from nothing)."
  echo
  echo "*Killed while in flight*: the pull's invocation had not answered yet (its cold start was under"
  echo "way), \`big-accel\` was still Preparing, the load was running (just before the kill)."
  echo
  echo "Columns: *at the kill*: what was in flight just before it and what the dead daemon left;"
  echo "*restart*: s from the restart to the control API answering (the crash cleanup included);"
  echo "*serving*: s from the restart until every function had served a 200; *accel*: s until both"
  echo "acceleration jobs were Ready or Failed."
  echo
  echo "| # | activity | delay s | at the kill | restart s | serving s | accel s | result |"
  echo "|---|---|---|---|---|---|---|---|"
  cat "$rows"
  echo
  echo "## Clean stops (SIGTERM)"
  echo
  echo "| after # | stop s | exit status | left |"
  echo "|---|---|---|---|"
  cat "$stops"
  echo
  echo "Under the data dir at the end (after the last clean stop and the deletion of the unpacked images):"
  echo
  echo '```'
  (cd "$data" && for e in * node/*; do du -sh -- "$e"; done 2>/dev/null)
  echo '```'
  echo
  echo "## Failures and leftovers"
  echo
  if [ -s "$findings" ]; then cat "$findings"; else echo "None."; fi
  echo
  echo "## Notes"
  echo
  if [ -s "$notes" ]; then cat "$notes"; else echo "None."; fi
  echo
  echo "The daemon's warnings and errors over the whole run (\`serve.log\` beside this report), by kind:"
  echo
  echo "| count | level | where | message |"
  echo "|---|---|---|---|"
  "$PY" - "$work/serve.log" <<'PY'
import collections, re, sys
kinds = collections.Counter()
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"\S+\s+(WARN|ERROR)\s+(?:\w+\{.*?\}:\s*)*(\S+):\s+(.*)", line)
    if not m:
        continue
    msg = re.split(r"\s\w+=", m.group(3), maxsplit=1)[0].strip()
    kinds[(m.group(1), m.group(2), msg)] += 1
for (level, target, msg), n in sorted(kinds.items(), key=lambda kv: -kv[1]):
    print(f"| {n} | {level} | `{target}` | {msg} |")
PY
} >"$work/report.md"
publish_report "$work/report.md" "$out/report.md"
# The API token the first start printed stays out of the published log.
sed -E 's/(api-token: )[0-9a-f]{64}/\1<redacted>/' "$work/serve.log" >"$out/serve.log" 2>/dev/null || true
log "$summary"
[ "$failures" = 0 ] && [ "$leftovers" = 0 ]
