# Shared by the bench scripts (sourced). Needs from the caller: $repo_root, $PY, log(), and, for
# copy_binaries and start_registry, $work (a temp dir the caller's cleanup removes).

# Builds the release binaries; sets $built (their dir) and $pronto_version (commit, +dirty).
build_pronto() {
  log "building pronto (release)"
  cargo build --release --quiet -p pronto-cli -p pronto-testkit
  built="${CARGO_TARGET_DIR:-$repo_root/target}/release"
  case "$built" in /*) ;; *) built="$repo_root/$built" ;; esac
  pronto_version="$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- crates Cargo.toml Cargo.lock 2>/dev/null || echo '+dirty')"
}

# Measures a fixed copy: a concurrent `cargo build` in the tree must not swap binaries mid-run.
# Sets $bin.
copy_binaries() {
  bin="$work/bin"
  mkdir -p "$bin"
  cp "$built/pronto" "$built/pronto-mkimage" "$bin/"
}

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Starts docker-registry on a free loopback port with storage in $work/registry; sets $port and
# $registry_pid (the caller's cleanup kills it by PID).
start_registry() {
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
  curl -sf "http://127.0.0.1:$port/v2/" >/dev/null || { cat "$work/registry.log" >&2; echo "error: registry did not start" >&2; exit 1; }
  log "registry on 127.0.0.1:$port (pid $registry_pid)"
}
