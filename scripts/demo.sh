#!/usr/bin/env bash
# The Pronto demo: a local registry, a real HTTP function image (busybox httpd with a CGI
# handler, built without a Docker engine), `pronto serve`, then create → invoke cold → invoke
# warm → update the image → invoke → logs → delete, with the cold-start timings. Also shows the
# full-pull path (`pronto image unpack`) checked against `skopeo copy` + `umoci unpack`.
# Run as root on Debian 12; it installs what it needs and leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

echo "== building pronto"
cargo build --release --quiet -p pronto-cli -p pronto-testkit
bin="${CARGO_TARGET_DIR:-target}/release"

work=$(mktemp -d /tmp/pronto-demo.XXXXXX)
registry_pid=""
serve_pid=""
cleanup() {
  if [ -n "$serve_pid" ]; then
    kill -TERM "$serve_pid" 2>/dev/null || true
    wait "$serve_pid" 2>/dev/null || true
  fi
  if [ -n "$registry_pid" ]; then
    kill "$registry_pid" 2>/dev/null || true
    wait "$registry_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
cat >"$work/registry.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $work/registry}}
http: {addr: 127.0.0.1:$port}
YML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
echo "== registry (Docker Distribution) on 127.0.0.1:$port"

# The function image: layer 1 busybox (httpd, sh), layer 2 the app, which also whites out a
# file of layer 1 (/etc/motd).
build_app() { # $1 tag, $2 greeting
  rm -rf "$work/base" "$work/app"
  mkdir -p "$work/base/bin" "$work/base/etc" "$work/app/www/cgi-bin" "$work/app/etc"
  cp /bin/busybox "$work/base/bin/busybox"
  for applet in sh httpd cat echo date hostname; do ln -s busybox "$work/base/bin/$applet"; done
  echo "welcome to the base layer" >"$work/base/etc/motd"
  echo "<h1>hello from pronto</h1>" >"$work/app/www/index.html"
  cat >"$work/app/www/cgi-bin/hello" <<SH
#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
echo "$2, \$GREETING! (instance \$(hostname), $1, \$REQUEST_METHOD \$QUERY_STRING)"
echo "request handled" >&2
SH
  chmod +x "$work/app/www/cgi-bin/hello"
  : >"$work/app/etc/.wh.motd"
  "$bin/pronto-mkimage" --entrypoint /bin/httpd --cmd -f --cmd -p --cmd 9000 --cmd -h --cmd /www \
    --layer "$work/base" --layer "$work/app" "127.0.0.1:$port/demo/hello:$1"
}
ref="127.0.0.1:$port/demo/hello"
echo "== pushed $ref:v1 ($(build_app v1 Hello))"

echo "== the full-pull path: pronto image unpack, checked against skopeo copy + umoci unpack"
"$bin/pronto" image unpack "$ref:v1" "$work/rootfs"
skopeo copy -q --insecure-policy --src-tls-verify=false "docker://$ref:v1" "oci:$work/layout:img"
umoci unpack --image "$work/layout:img" "$work/bundle" >/dev/null
if diff -r --no-dereference "$work/rootfs" "$work/bundle/rootfs" >/dev/null; then
  echo "   identical trees (and /etc/motd whited out: $([ -e "$work/rootfs/etc/motd" ] && echo no || echo yes))"
else
  echo "   trees differ!"; exit 1
fi

control=$(free_port); invoke=$(free_port)
"$bin/pronto" serve --data-dir "$work/data" --control-addr "127.0.0.1:$control" \
  --invoke-addr "127.0.0.1:$invoke" >"$work/serve.out" 2>"$work/serve.log" &
serve_pid=$!
for _ in $(seq 100); do curl -s "http://127.0.0.1:$control/" >/dev/null && break; sleep 0.1; done
echo "== pronto serve: control API on 127.0.0.1:$control, invocations on 127.0.0.1:$invoke"
p() { "$bin/pronto" --data-dir "$work/data" --api "http://127.0.0.1:$control" --invoke-url "http://127.0.0.1:$invoke" "$@"; }

echo "== pronto function create hello"
p function create hello --image "$ref:v1" --memory-size 128 --env GREETING=world \
  | jq -c '{functionName, image: .customContainerConfig.resolvedImageUri, memorySize}'

echo "== pronto invoke hello (cold, then warm)"
p invoke hello --path '/cgi-bin/hello?first'
for i in 1 2 3; do p invoke hello --path "/cgi-bin/hello?warm$i"; done
echo "   curl, the way Function Compute's examples do it:"
curl -s -H "x-fc-invocation-target: 2016-08-15/proxy/demo/hello" \
  -H "Authorization: Bearer $(cat "$work/data/api-token")" "http://127.0.0.1:$invoke/cgi-bin/hello?curl"

echo "== acceleration (accelerationType: Default): the image is converted in the background"
for _ in $(seq 100); do
  status=$(p function get hello | jq -r '.accelerationInfo.status')
  [ "$status" != Preparing ] && break
  sleep 0.2
done
p function get hello | jq -c '.accelerationInfo | {status, artifact, indexSize, storedBytes, durationSeconds, reason}'
echo "   pronto image verify: $("$bin/pronto" image verify "$ref:v1" --work-dir "$work/verify")"

echo "== new image v2, pronto function update, invoke"
echo "   pushed $ref:v2 ($(build_app v2 Bonjour))"
p function update hello --image "$ref:v2" \
  | jq -c '{image: .customContainerConfig.resolvedImageUri, lastUpdateStatus, acceleration: .accelerationInfo.status}'
echo "   until v2's acceleration is Ready, v1 keeps serving (no cold start takes the slow path):"
p invoke hello --path '/cgi-bin/hello?during-update'
for _ in $(seq 300); do
  [ "$(p function get hello | jq -r .lastUpdateStatus)" = Successful ] && break
  sleep 0.2
done
p function get hello | jq -c '{lastUpdateStatus, acceleration: .accelerationInfo.status}'
p invoke hello --path '/cgi-bin/hello?after-update'

echo "== pronto logs hello"
p logs hello --tail 5

echo "== pronto function delete hello, then stop pronto serve (SIGTERM)"
p function delete hello
kill -TERM "$serve_pid"; wait "$serve_pid" || true; serve_pid=""
left=$(ip netns list | grep -c '^pronto-' || true)
mounts=$(grep -c "$work/data" /proc/self/mountinfo || true)
echo "   left behind: $left network namespaces, $mounts mounts"
