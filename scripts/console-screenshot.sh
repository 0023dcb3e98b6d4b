#!/usr/bin/env bash
# Takes docs/console.png: a local registry, `pronto serve`, a function deployed from a file and
# invoked (a cold start, then warm ones), and the console's page of it in headless chromium,
# signed in through the login form (chromedriver, spoken to with curl). Run as root on Debian
# 12 after scripts/install-deps.sh; it leaves nothing running. Set PRONTO_BIN_DIR to use
# binaries already built (default: builds the debug ones).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-docs/console.png}"
if [ -z "${PRONTO_BIN_DIR:-}" ]; then
  cargo build --quiet -p pronto-cli -p pronto-testkit --bins
  PRONTO_BIN_DIR="${CARGO_TARGET_DIR:-target}/debug"
fi
bin="$PRONTO_BIN_DIR"

work=$(mktemp -d /tmp/pronto-shot.XXXXXX)
pids=()
cleanup() {
  # Our own processes only, by PID (chromedriver in its own process group, with its browser).
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
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
setsid docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done

mkdir -p "$work/base/bin" "$work/app/www/cgi-bin"
cp /bin/busybox "$work/base/bin/busybox"
for applet in sh httpd echo hostname; do ln -s busybox "$work/base/bin/$applet"; done
cat >"$work/app/www/cgi-bin/hello" <<'SH'
#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
echo "Hello, $GREETING! (instance $(hostname))"
echo "said hello to ${QUERY_STRING:-someone}" >&2
SH
chmod +x "$work/app/www/cgi-bin/hello"
"$bin/pronto-mkimage" --entrypoint /bin/httpd --cmd -f --cmd -p --cmd 9000 --cmd -h --cmd /www \
  --layer "$work/base" --layer "$work/app" "127.0.0.1:$port/demo/hello:v1" >/dev/null

control=$(free_port); invoke=$(free_port)
setsid "$bin/pronto" serve --data-dir "$work/data" --control-addr "127.0.0.1:$control" \
  --invoke-addr "127.0.0.1:$invoke" >"$work/serve.out" 2>"$work/serve.log" &
pids+=($!)
for _ in $(seq 100); do curl -s "http://127.0.0.1:$control/" >/dev/null && break; sleep 0.1; done
p() { "$bin/pronto" --data-dir "$work/data" --api "http://127.0.0.1:$control" --invoke-url "http://127.0.0.1:$invoke" "$@"; }

cat >"$work/hello.yaml" <<YAML
functionName: hello
description: the quick start's function
memorySize: 128
environmentVariables: {GREETING: world}
customContainerConfig:
  image: 127.0.0.1:$port/demo/hello:v1
  port: 9000
YAML
p deploy -f "$work/hello.yaml" --wait >/dev/null
p invoke hello --path '/cgi-bin/hello?console' >/dev/null
for i in 1 2; do p invoke hello --path "/cgi-bin/hello?warm$i" >/dev/null; done

driver=$(free_port)
setsid chromedriver --port="$driver" >"$work/driver.log" 2>&1 &
pids+=($!)
wd="http://127.0.0.1:$driver"
for _ in $(seq 100); do curl -sf "$wd/status" >/dev/null && break; sleep 0.1; done
caps=$(jq -n --arg p "$work/profile" '{capabilities: {alwaysMatch: {browserName: "chrome",
  "goog:chromeOptions": {binary: "/usr/bin/chromium", args: ["--headless=new", "--no-sandbox",
  "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1280,1500",
  ("--user-data-dir=" + $p)]}}}}')
session=$(curl -sf "$wd/session" -d "$caps" | jq -r .value.sessionId)
s="$wd/session/$session"
el() { curl -sf "$s/element" -d "$(jq -n --arg c "$1" '{using: "css selector", value: $c}')" \
  | jq -r '.value["element-6066-11e4-a52e-4f735466cecf"]'; }
console="http://127.0.0.1:$control/console"
curl -sf "$s/url" -d "$(jq -n --arg u "$console" '{url: $u}')" >/dev/null
# The token is typed into the form, as a person would; it is never in a URL.
curl -sf "$s/element/$(el '#token')/value" \
  -d "$(jq -n --arg t "$(cat "$work/data/api-token")" '{text: $t}')" >/dev/null
curl -sf "$s/element/$(el '#sign-in')/click" -d '{}' >/dev/null
curl -sf "$s/url" -d "$(jq -n --arg u "$console/functions/hello" '{url: $u}')" >/dev/null
curl -sf "$s/screenshot" | jq -r .value | base64 -d >"$out"
curl -sf -X DELETE "$s" >/dev/null || true
echo "wrote $out"
