#!/usr/bin/env bash
# The test suite: installs what it needs, then runs every test of the workspace. Run as root
# (the tests create device nodes, set owners and xattrs, start real registries, run containers
# with runc in network namespaces and cgroups). Fails if the tests left namespaces, mounts or
# containers behind (network namespaces, instance overlays and disks with their loop devices,
# lazy rootfs FUSE mounts).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

# The tests make their data dirs and mount points with tempfile, under $TMPDIR: a directory of
# this run's own, so the mount check below counts only what this suite made (another Pronto on
# the machine, or another suite, mounts elsewhere).
suite_tmp=$(mktemp -d /tmp/pronto-suite.XXXXXX)
# Traversable like /tmp (the tests' own dirs inside are 0700): a test checks the lazy fs's
# permissions as another user, who must reach its mount point.
chmod 0755 "$suite_tmp"
export TMPDIR=$suite_tmp

leftovers() {
  { ip netns list 2>/dev/null | grep -o '^pronto-[0-9a-f]*' || true
    # Mounted here, or (instance rootfs overlays, under /run/pronto/) with their layers here.
    grep -E ' - (overlay|fuse|ext4) ' /proc/self/mountinfo | grep -F "$suite_tmp/" | awk '{print $5}' || true
    # Instance disks: loop devices backed by a file of this run's.
    cat /sys/block/loop*/loop/backing_file 2>/dev/null | grep -F "$suite_tmp/" | sed 's/^/loop:/' || true
  } | sort
}
before=$(leftovers)

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
log=$(mktemp)
# --one-file-system: never reach into a mount a failed test left (it is reported below).
trap 'rm -f "$log"; rm -rf --one-file-system "$suite_tmp" 2>/dev/null || true' EXIT
cargo test --workspace 2>&1 | tee "$log"

after=$(leftovers)
new=$(comm -13 <(echo "$before") <(echo "$after") | sed '/^$/d')
if [ -n "$new" ]; then
  echo "error: the tests left these behind:" >&2
  echo "$new" >&2
  exit 1
fi
echo "no network namespaces or instance mounts left behind"
# The hostile suite: every case listed in tests/hostile.list ran and passed.
hostile_total=0
hostile_missing=()
while read -r name _; do
  case "$name" in '' | '#'*) continue ;; esac
  hostile_total=$((hostile_total + 1))
  grep -qE "^test (.*::)?${name} \.\.\. ok\$" "$log" || hostile_missing+=("$name")
done <tests/hostile.list
echo "hostile cases: $((hostile_total - ${#hostile_missing[@]})) passed, ${#hostile_missing[@]} failed or missing (tests/hostile.list)"
if [ ${#hostile_missing[@]} -gt 0 ]; then
  printf 'error: hostile case did not pass: %s\n' "${hostile_missing[@]}" >&2
  exit 1
fi
# One closing line for the whole workspace (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
