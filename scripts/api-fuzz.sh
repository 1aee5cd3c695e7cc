#!/usr/bin/env bash
# Fuzzes the server's API against its own OpenAPI document with schemathesis 4 (PyPI):
# every operation the document lists, every check (`--checks all`: no 5xx, answers as
# documented, schema-valid requests accepted, schema-invalid ones refused, the API key
# enforced). Any finding fails the run. Called by scripts/test.sh; runs alone too.
#
# A real `weir server start` on loopback, SQLite in a temp dir, with an API key. Bounded:
# WEIR_FUZZ_EXAMPLES cases per operation and phase (default 20), the whole run at most
# WEIR_FUZZ_TIMEOUT seconds (default 600). WEIR_FUZZ_SEED replays a run.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${XDG_CACHE_HOME:-$HOME/.cache}/weir-test/schemathesis
ST=$venv/bin/schemathesis
if ! "$ST" --version 2>/dev/null | grep -q 'version 4\.'; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q 'schemathesis>=4,<5'
fi

cargo build -q -p weir-cli
WEIR=$(realpath "${CARGO_TARGET_DIR:-target}/debug/weir")

work=$(mktemp -d)
server_pid=""
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

key=fuzz-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
WEIR_HOME="$work/home" WEIR_API_KEY="$key" WEIR_LOG=warn WEIR_PROFILE= WEIR_DATABASE_URL= \
    "$WEIR" server start --host 127.0.0.1 --port 0 >"$work/server.out" 2>"$work/server.log" &
server_pid=$!
addr=""
for _ in $(seq 300); do
    addr=$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$work/server.out" || true)
    [ -n "$addr" ] && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$addr" ]; then
    echo "scripts/api-fuzz.sh: the server did not start:" >&2
    cat "$work/server.out" "$work/server.log" >&2
    exit 1
fi

# `follow` long-polls for up to 60 s by design: fuzzing it would spend the run waiting.
cat >"$work/schemathesis.toml" <<'TOML'
[parameters]
"query.follow" = "0"
TOML
seed_args=()
[ -n "${WEIR_FUZZ_SEED:-}" ] && seed_args=(--seed "$WEIR_FUZZ_SEED")
status=0
# From the temp dir: schemathesis keeps a cache folder where it runs.
(cd "$work" && timeout "${WEIR_FUZZ_TIMEOUT:-600}" "$ST" --config-file "$work/schemathesis.toml" run "$addr/api/v1/openapi.json" \
    --checks all \
    -H "Authorization: Bearer $key" \
    --max-examples "${WEIR_FUZZ_EXAMPLES:-20}" \
    --request-timeout 70 \
    --generation-database none \
    --no-color \
    "${seed_args[@]}") || status=$?
if [ "$status" != 0 ]; then
    echo "scripts/api-fuzz.sh: schemathesis found problems (exit $status); the server's log:" >&2
    tail -n 50 "$work/server.log" >&2
    exit 1
fi
