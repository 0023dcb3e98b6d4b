#!/usr/bin/env bash
# The Pronto demo, as it stands: start a local registry, build and push a sample image (busybox
# plus an app layer that deletes a file from the layer below), pull and unpack it with
# `pronto image unpack`, check the tree against `skopeo copy` + `umoci unpack`, and print a
# summary. Run as root on Debian 12; it installs what it needs and leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "ok installed" \
  || { apt-get install -y -qq busybox-static >/dev/null; }
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

echo "== building pronto"
cargo build --release --quiet -p pronto-cli -p pronto-testkit
bin="${CARGO_TARGET_DIR:-target}/release"

work=$(mktemp -d /tmp/pronto-demo.XXXXXX)
registry_pid=""
cleanup() {
  if [ -n "$registry_pid" ]; then
    kill "$registry_pid" 2>/dev/null || true
    wait "$registry_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/registry.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $work/registry}}
http: {addr: 127.0.0.1:$port}
YML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
echo "== registry (Docker Distribution) on 127.0.0.1:$port, pid $registry_pid"

# Layer 1: busybox with its applet links. Layer 2: an app, and a whiteout of /etc/motd.
mkdir -p "$work/base/bin" "$work/base/etc" "$work/app/srv/www" "$work/app/etc"
cp /bin/busybox "$work/base/bin/busybox"
for applet in sh ls cat httpd; do ln -s busybox "$work/base/bin/$applet"; done
echo "welcome to the base layer" >"$work/base/etc/motd"
echo "<h1>hello from pronto</h1>" >"$work/app/srv/www/index.html"
: >"$work/app/etc/.wh.motd"
ref="127.0.0.1:$port/demo/hello:v1"
digest=$("$bin/pronto-mkimage" --entrypoint /bin/httpd --cmd -f --cmd -p --cmd 9000 \
  --layer "$work/base" --layer "$work/app" "$ref")
echo "== pushed $ref ($digest)"

echo "== pronto image inspect"
"$bin/pronto" image inspect "$ref" | jq '{digest, layers: [.layers[] | {digest, size}], entrypoint: .config.config.Entrypoint}'

echo "== pronto image unpack"
"$bin/pronto" image unpack "$ref" "$work/rootfs"
echo "   /etc/motd whited out: $([ -e "$work/rootfs/etc/motd" ] && echo no || echo yes)"
echo "   /srv/www/index.html: $(cat "$work/rootfs/srv/www/index.html")"

echo "== ground truth: skopeo copy + umoci unpack"
skopeo copy -q --insecure-policy --src-tls-verify=false "docker://$ref" "oci:$work/layout:img"
umoci unpack --image "$work/layout:img" "$work/bundle" >/dev/null
if diff -r --no-dereference "$work/rootfs" "$work/bundle/rootfs" >/dev/null; then
  echo "   identical trees"
else
  echo "   trees differ!"; exit 1
fi
