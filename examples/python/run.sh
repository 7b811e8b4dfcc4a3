#!/usr/bin/env bash
# Runs woof_client.py against a woof node: makes a virtualenv with grpcio and
# grpcio-tools (once), generates the Python stubs from the .proto into a
# build directory (never committed), then runs the client.
#
#   examples/python/run.sh [HOST:PORT]        # default 127.0.0.1:7700
#
# WOOF_PY_VENV   where the virtualenv lives   (default: $CARGO_TARGET_DIR or
#                                              target/, then python-venv)
# WOOF_PY_BUILD  where the stubs are written  (default: a temporary directory)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
server="${1:-127.0.0.1:7700}"
server="${server#http://}"

venv="${WOOF_PY_VENV:-${CARGO_TARGET_DIR:-$root/target}/python-venv}"
if ! "$venv/bin/python" -c 'import grpc, grpc_tools' 2>/dev/null; then
  echo "run.sh: installing grpcio and grpcio-tools into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'grpcio>=1.60' 'grpcio-tools>=1.60'
fi

build="${WOOF_PY_BUILD:-}"
if [ -z "$build" ]; then
  build="$(mktemp -d)"
  trap 'rm -rf "$build"' EXIT
fi
mkdir -p "$build"
"$venv/bin/python" -m grpc_tools.protoc -I "$root/proto/proto" \
  --python_out="$build" --grpc_python_out="$build" "$root/proto/proto/woof/v1/woof.proto"

PYTHONPATH="$build" "$venv/bin/python" "$here/woof_client.py" --server "$server"
