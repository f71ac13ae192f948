#!/usr/bin/env bash
# Runs every test of secop-gateway on a fresh machine: installs what the tests need,
# then runs formatting and lint checks, the Rust unit and integration tests, and the
# Python interoperability tests against frappy's own client.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== installing test dependencies"
python3 -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt

echo "== cargo fmt / clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== cargo test"
cargo build --quiet
cargo test --workspace --quiet

echo "== python interoperability tests"
SECOP_GATEWAY_BIN="$PWD/target/debug/secop-gateway" python3 -m pytest tests/python -q
