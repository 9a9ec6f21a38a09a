#!/usr/bin/env bash
# test.sh: the whole test suite, as CI runs it (.ci/run calls this).
#
# Sets up the host (Docker engine, test image, loopback registry), checks formatting and
# lints, then runs every test, the end-to-end ones too: they are `#[ignore]`d so that a plain
# `cargo test` reports them as ignored rather than passed; here they run against the real
# engines and FAIL if one is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# A clean clone builds everything once: incremental caches would only take disk (17 GB of
# them, measured), and the disk is shared with the engines' images and the fuzz build.
export CARGO_INCREMENTAL=0
df -h . | awk 'NR == 2 {print "test.sh: disk free at the start: " $4}'

scripts/host-setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

# The rig of extra engines (Docker daemons in a Swarm, libvirt hosts, each in namespaces of
# its own) for the tests of machines over several engines; taken down whatever happens.
echo "== engine rig"
trap 'scripts/engines.sh down >/dev/null 2>&1 || true' EXIT
rig=$(scripts/engines.sh up 3 2)
echo "$rig"
ENVRIG_TEST_LIBVIRT_REMOTE=$(awk '$1 == "l1" {print $2}' <<<"$rig")
export ENVRIG_TEST_LIBVIRT_REMOTE

echo "== tests (end-to-end included)"
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast --failure-output final --run-ignored all
else
  cargo test --workspace --locked --no-fail-fast -- --include-ignored
fi

# The Docker end-to-end tests again where no libvirt library can be loaded (a mount
# namespace in which libvirt.so.0 is an empty file): envrig must not need it for Docker.
echo "== Docker end-to-end tests without libvirt's library"
lib=$(ldd target/debug/envrig-provider-libvirt | awk '$1 == "libvirt.so.0" {print $3}')
[ -n "$lib" ] || { echo "test.sh: the libvirt plugin links no libvirt.so.0?" >&2; exit 1; }
docker_e2e=(-p envrig --locked --test e2e_docker --test e2e_provision)
cargo nextest run "${docker_e2e[@]}" --no-run # built outside: nothing links libvirt inside
unshare --mount --propagation private sh -c 'mount --bind /dev/null "$0" && exec "$@"' "$lib" \
  cargo nextest run "${docker_e2e[@]}" --no-fail-fast --failure-output final --run-ignored ignored-only

# A short round of the scale benchmark on the rig: it checks that an environment spread
# over three engines comes up, resolves names across them and goes, timing nothing
# (bench/README.md: the 100-machine round and its targets).
echo "== scale benchmark, short round"
python3 bench/bench_scale.py --machines 12 --engines 3 --rounds 1 --short \
  --envrig "$PWD/target/debug/envrig"

# The getting-started page: every command on it runs again, end to end, against the real
# engines and must exit as the page says, and the page must be what its template makes
# (output that differs, such as the order of parallel machines' lines, is shown, not fatal).
echo "== docs/getting-started.md, end to end"
scripts/getting-started.sh --check

# The demo the README shows: a container and a VM through a whole life, with this build.
echo "== scripts/demo.sh"
ENVRIG=target/debug/envrig scripts/demo.sh

# Each fuzz target briefly, so a parser that learnt to panic shows (bench/README.md: the
# long round, the build time and the sanitizer).
echo "== fuzz targets, 30 s each"
df -h . | awk 'NR == 2 {print "test.sh: disk free before the fuzz build: " $4}'
bench/fuzz.sh 0.5
