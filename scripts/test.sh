#!/usr/bin/env bash
# Runs every test weir has, on a fresh machine: the README's test command.
#
# What the tests need beyond cargo, installed and started here (loopback only):
# - bindfs + fuse3 (Debian): a FUSE mount standing in for JuiceFS in the folder-backend suite;
# - moto[server] (PyPI): an S3 server whose conditional writes are atomic, for the
#   concurrency and lease tests (s3s-fs, which runs inside the tests, is not atomic there);
# - PostgreSQL 15 binaries (Debian): the server tests make a throwaway cluster in a temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."

need_root() { [ "$(id -u)" = 0 ] || { echo "scripts/test.sh: installing $1 needs root (or install it yourself)" >&2; exit 1; }; }

if ! command -v bindfs >/dev/null || ! command -v fusermount3 >/dev/null; then
    need_root "bindfs and fuse3"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 bindfs >/dev/null
fi
PG_BIN=${WEIR_TEST_PG_BIN:-/usr/lib/postgresql/15/bin}
if [ ! -x "$PG_BIN/initdb" ]; then
    need_root "postgresql-15"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null
fi
export WEIR_TEST_PG_BIN="$PG_BIN" WEIR_TEST_REQUIRE_POSTGRES=1

if ! python3 -c 'import moto.server' 2>/dev/null; then
    python3 -m pip install -q 'moto[server]' 2>&1 | grep -v "Running pip as the 'root' user" || true
fi

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
moto_log=$(mktemp)
python3 -m moto.server -H 127.0.0.1 -p "$port" >"$moto_log" 2>&1 &
moto_pid=$!
trap 'kill "$moto_pid" 2>/dev/null || true; rm -f "$moto_log"' EXIT
moto_ready=""
for _ in $(seq 300); do
    if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/')" 2>/dev/null; then
        moto_ready=1
        break
    fi
    sleep 0.1
done
if [ -z "$moto_ready" ]; then
    echo "scripts/test.sh: moto did not start on 127.0.0.1:$port:" >&2
    cat "$moto_log" >&2
    exit 1
fi
export WEIR_TEST_MOTO_ENDPOINT="http://127.0.0.1:$port" WEIR_TEST_REQUIRE_MOTO=1
[ -e /dev/fuse ] && export WEIR_TEST_REQUIRE_FUSE=1

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
