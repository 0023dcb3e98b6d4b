#!/usr/bin/env bash
# Installs the system parts Pronto and its tests use, from Debian's archive. Idempotent, and
# silent when everything is already there. Run as root on Debian 12.
set -euo pipefail

packages=(
  docker-registry # the real OCI registry (Docker Distribution) the tests and demo start
  skopeo umoci    # ground truth in tests and the unpack benchmark
  runc fuse3 iproute2
  nftables        # the NAT and filter rules of instances' outbound network
  dnsmasq-base    # the tests' stand-in for the internet's DNS
  busybox-static  # the HTTP server (httpd + CGI) of the test and demo function images
  cmake pkg-config build-essential # zlib-ng (gzip backend) builds with cmake
  ca-certificates curl jq
  chromium chromium-driver # the web console's browser test (tests/console.rs) and docs screenshot
)

missing=()
for p in "${packages[@]}"; do
  if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The package enables a system registry on :5000; Pronto starts its own on free ports.
if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled docker-registry >/dev/null 2>&1; then
  systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi

if ! command -v cargo >/dev/null 2>&1; then
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found; install Rust (rustup, toolchain in rust-toolchain.toml)" >&2
  exit 1
fi
