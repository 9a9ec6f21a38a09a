#!/usr/bin/env bash
# test.sh: the whole test suite, as CI runs it (.ci/run calls this).
#
# Sets up the host (Docker engine, test image, loopback registry), checks formatting and
# lints, then runs every test, the end-to-end ones too: they are `#[ignore]`d so that a plain
# `cargo test` reports them as ignored rather than passed; here they run against the real
# engines and FAIL if one is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/host-setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests (end-to-end included)"
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast --failure-output final --run-ignored all
else
  cargo test --workspace --locked --no-fail-fast -- --include-ignored
fi

# Each fuzz target briefly, so a parser that learnt to panic shows (bench/README.md: the
# long round, the build time and the sanitizer).
echo "== fuzz targets, 30 s each"
bench/fuzz.sh 0.5
