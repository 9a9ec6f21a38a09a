#!/usr/bin/env bash
# test.sh: the whole test suite, as CI runs it (.ci/run calls this).
#
# Sets up the host (Docker engine, test image, loopback registry), checks formatting and
# lints, then runs every test with ENVRIG_E2E=1, so end-to-end tests run against the real
# engine and FAIL if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/host-setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests (ENVRIG_E2E=1)"
export ENVRIG_E2E=1
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast --failure-output final
else
  cargo test --workspace --locked --no-fail-fast
fi
