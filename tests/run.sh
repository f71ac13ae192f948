#!/usr/bin/env bash
# Runs every test of secop-gateway on a fresh machine: installs what the tests need
# (Debian: prometheus for promtool and the prometheus binary the tests run, chromium for the
# browser test, strace for the syscall-filter test, socat for Modbus RTU over a pty
# pair; npm: playwright-core; PyPI: the
# pinned packages of tests/requirements.txt), then runs formatting and lint checks,
# the Rust unit and integration tests, and the Python tests against the real binary.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

echo "== installing test dependencies"
need=()
command -v promtool >/dev/null || need+=(prometheus)
[ -x /usr/bin/prometheus ] || need+=(prometheus)
command -v strace >/dev/null || need+=(strace)
command -v chromium >/dev/null || need+=(chromium)
command -v socat >/dev/null || need+=(socat)
if [ ${#need[@]} -gt 0 ]; then
  sudo_if_needed apt-get update -q
  # RUNLEVEL=1 keeps the package's init script from starting a Prometheus service on
  # install (the tests only need the binaries).
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 \
    apt-get install -y -q --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u)
fi
# A packaged Prometheus service is left alone, running or not: the tests start their own
# /usr/bin/prometheus on a free 127.0.0.1 port, with their own config and data directory
# (tests/python/test_prometheus.py), and use no port the packaged service listens on.
python3 -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)

echo "== cargo fmt / clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== cargo test"
cargo build --quiet
cargo test --workspace --quiet

echo "== benchmark smoke run (every scenario briefly; fails only on errors)"
python3 scripts/bench/run_all.py --smoke > target/bench-smoke.log 2>&1 || { tail -40 target/bench-smoke.log; exit 1; }
grep -E "^written:" target/bench-smoke.log || true

echo "== python tests (frappy client, WebSocket, Autobahn, browser, Prometheus, deploy, links, Modbus, remote nodes)"
SECOP_GATEWAY_BIN="$PWD/target/debug/secop-gateway" python3 -m pytest tests/python -q
