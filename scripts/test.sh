#!/usr/bin/env bash
# Runs every test weir has, on a fresh machine: the README's test command.
# Everything the tests need (today: nothing beyond cargo) is set up here.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
