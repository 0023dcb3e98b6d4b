#!/usr/bin/env bash
# The test suite: installs what it needs, then runs every test of the workspace. Run as root
# (the tests create device nodes, set owners and xattrs, and start real registries).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace
