#!/usr/bin/env bash
# Start a fresh release Cordon on loopback, run the load tool against it, stop it.
#
#   benches/load.sh [--collision] [--qdrant URL] [--sealed] [-- LOAD TOOL FLAGS...]
#
#   --collision   start the server with CORDON_COLLECTION_HEX_CHARS=${HEX_CHARS:-1}
#                 and CORDON_COLLISION_DRILL=true (users share collections and
#                 only the guard keeps them apart); the tool then fails unless
#                 the server counted requests on shared collections and
#                 guard drops.
#   --qdrant URL  use a running Qdrant 1.18+ (gRPC URL) instead of the embedded
#                 engine; collections get a fresh prefix and are erased by the
#                 tool's users at the end.
#   --sealed      start the server with a fresh KEK: memories encrypted at rest.
#   --tier TIER   start the server with CORDON_TIER=TIER (`per-user`, the
#                 default, or `shared`); with --collision, the shared tier
#                 keeps its own names unless HEX_CHARS is set.
#
# The load tool is `cordon load` of this checkout's release build. CORDON_BIN
# runs that server binary instead of the same build (for before/after runs of
# the same load tool against two builds).
#
# Everything after `--` goes to the load tool (see `cordon load --help`),
# e.g. `-- --users 1000 --json /tmp/load.json`. The server's log is kept in
# $LOAD_LOG (default: a temporary file, printed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

collision=false
qdrant_url=""
sealed=false
tier=per-user
while [ $# -gt 0 ]; do
  case "$1" in
    --collision) collision=true; shift ;;
    --qdrant) qdrant_url="${2:?--qdrant needs a gRPC URL}"; shift 2 ;;
    --sealed) sealed=true; shift ;;
    --tier) tier="${2:?--tier needs per-user or shared}"; shift 2 ;;
    --) shift; break ;;
    *) echo "load.sh: unknown flag $1" >&2; exit 2 ;;
  esac
done

scripts/setup >/dev/null
cargo build --release --locked --quiet --bin cordon
load_bin="$CARGO_TARGET_DIR/release/cordon"
CORDON_BIN="${CORDON_BIN:-$load_bin}"

data=$(mktemp -d)
log=${LOAD_LOG:-$(mktemp --suffix=.cordon-server.log)}
hex() { python3 -c 'import secrets; print(secrets.token_hex(32))'; }
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export CORDON_JWT_HS256_SECRET; CORDON_JWT_HS256_SECRET=$(hex)
server_env=(
  CORDON_BIND="127.0.0.1:$port"
  CORDON_SERVER_SECRET="$(hex)"
  RUST_LOG="${RUST_LOG:-warn}"
  CORDON_TIER="$tier"
)
if $collision; then
  # The drill measures what the guard drops; fail-closed would end each
  # such request (and quarantine the collection) instead.
  server_env+=(CORDON_BREACH_POLICY=drop)
  if [ "$tier" = shared ] && [ -z "${HEX_CHARS:-}" ]; then
    server_env+=(CORDON_COLLISION_DRILL=true)
  else
    server_env+=(CORDON_COLLECTION_HEX_CHARS="${HEX_CHARS:-1}" CORDON_COLLISION_DRILL=true)
  fi
  set -- --collision "$@"
fi
if $sealed; then
  server_env+=(CORDON_KEK="$(hex)")
fi
# Each engine refuses the other's settings.
if [ -n "$qdrant_url" ]; then
  server_env+=(CORDON_STORE=qdrant CORDON_QDRANT_URL="$qdrant_url"
               CORDON_COLLECTION_PREFIX="load_$(hex | cut -c1-8)_")
else
  server_env+=(CORDON_DATA_DIR="$data")
fi

server=""
cleanup() {
  if [ -n "$server" ]; then kill -TERM "$server" 2>/dev/null && wait "$server" 2>/dev/null || true; fi
  rm -rf "$data"
}
trap cleanup EXIT
env "${server_env[@]}" "$CORDON_BIN" serve >"$log" 2>&1 &
server=$!

ready() {
  python3 - "http://127.0.0.1:$port/readyz" <<'PY'
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=1)
except Exception:
    sys.exit(1)
PY
}
up=false
for _ in $(seq 1 120); do
  if ready; then up=true; break; fi
  if ! kill -0 "$server" 2>/dev/null; then cat "$log" >&2; exit 2; fi
  sleep 0.5
done
if ! $up; then
  echo "load.sh: the server was not ready after 60 s; its log:" >&2
  cat "$log" >&2
  exit 2
fi

echo "load.sh: server on 127.0.0.1:$port ($([ -n "$qdrant_url" ] && echo "Qdrant at $qdrant_url" || echo embedded)), tier: $tier, collision drill: $collision, sealed: $sealed" >&2
rc=0
"$load_bin" load --url "http://127.0.0.1:$port" "$@" || rc=$?
echo "server log: $log ($(grep -c cross_tenant_leak_detected "$log" || true) cross_tenant_leak_detected lines)"
exit "$rc"
