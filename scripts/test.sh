#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, property and end-to-end tests.
# `.ci/run` calls exactly this; run it from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --workspace --locked 2>&1 | tee target/test-output.txt
