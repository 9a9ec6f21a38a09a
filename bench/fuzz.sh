#!/usr/bin/env bash
# fuzz.sh: runs envrig's fuzz targets (fuzz/, cargo-fuzz and libFuzzer) for a while each.
#
#   bench/fuzz.sh MINUTES [TARGET...]    each TARGET (default: envfile lock archive) MINUTES
#                                        minutes (a decimal: 0.5 is 30 s), one after another
#
# Environment:
#   FUZZ_SANITIZER=address|none   default address (ASan); none builds and runs faster
#
# Before fuzzing it writes the seed corpus (fuzz/seed.py: templates/, the tests' Envfiles,
# locks and archives, and fuzz/regressions/) and builds the targets. Each target grows its
# own corpus in fuzz/corpus/TARGET (not committed); a crash leaves its input in
# fuzz/artifacts/TARGET/. Prints, per target: runs, corpus size, crashes; exits 1 if any
# target crashed (or timed out or ran out of memory), 2 if it could not run at all.
#
# cargo-fuzz passes nightly-only `-Z` flags to rustc; RUSTC_BOOTSTRAP=1 lets the stable
# toolchain take them (scripts/host-setup.sh installs cargo-fuzz).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: bench/fuzz.sh MINUTES [envfile|lock|archive ...]" >&2; exit 2; }
[ $# -ge 1 ] || usage
minutes=$1
shift
[[ "$minutes" =~ ^[0-9]+(\.[0-9]+)?$ ]] || usage
seconds=$(python3 -c "print(max(1, round(float('$minutes') * 60)))")
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(envfile lock archive)
for t in "${targets[@]}"; do
  case "$t" in envfile | lock | archive) ;; *) echo "fuzz.sh: no target \`$t\`" >&2; usage ;; esac
done
sanitizer=${FUZZ_SANITIZER:-address}

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: cargo-fuzz is missing; run scripts/host-setup.sh (or: cargo install cargo-fuzz --locked)" >&2
  exit 2
fi
export RUSTC_BOOTSTRAP=1

python3 fuzz/seed.py

# The targets write scratch files under TMPDIR: one folder for this run, removed at the end.
scratch=$(mktemp -d "${TMPDIR:-/tmp}/envrig-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

echo "== building the targets (sanitizer: $sanitizer)"
start=$SECONDS
if ! cargo fuzz build -s "$sanitizer" >"$scratch/build.log" 2>&1; then
  tail -n 30 "$scratch/build.log" >&2
  echo "fuzz.sh: cannot build the fuzz targets" >&2
  exit 2
fi
echo "== built in $((SECONDS - start)) s"

failed=0
summary=()
for t in "${targets[@]}"; do
  corpus=fuzz/corpus/$t
  artifacts=fuzz/artifacts/$t
  mkdir -p "$corpus" "$artifacts"
  log=$scratch/$t.log
  touch "$scratch/t0"
  echo "== fuzzing $t for ${seconds}s"
  # -timeout: one input taking 10 s is a hang; -rss_limit_mb: 2 GiB is a leak or a bomb.
  set +e
  TMPDIR=$scratch cargo fuzz run -s "$sanitizer" "$t" "$corpus" -- \
    -max_total_time="$seconds" -dict=fuzz/dict -timeout=10 -rss_limit_mb=2048 \
    -max_len=65536 -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -n 1 | awk '{print $2}')
  # Without final stats (a crash that killed it), the last status line's count.
  [ -n "$runs" ] || runs=$(grep -o '^#[0-9]*' "$log" | tail -n 1 | tr -d '#')
  new=$(find "$artifacts" -type f -newer "$scratch/t0" | sort)
  crashes=$(printf '%s' "$new" | grep -c . || true)
  size=$(find "$corpus" -type f | wc -l)
  if [ "$rc" -ne 0 ] || [ "$crashes" -gt 0 ]; then
    failed=1
    [ "$crashes" -gt 0 ] || crashes="? (exit $rc)"
    echo "fuzz.sh: $t FAILED; what its log says:" >&2
    { grep -E -A4 "panicked at|==ERROR|ERROR: libFuzzer|SUMMARY: " "$log" || grep -v '^#[0-9]' "$log"; } | head -n 40 >&2
    printf '%s\n' "$new" | sed '/^$/d; s/^/  input: /' >&2
  fi
  line="$t: ${seconds}s, runs $runs, corpus $size, crashes $crashes"
  echo "$line"
  summary+=("$line")
done

echo "== summary (sanitizer $sanitizer)"
printf '%s\n' "${summary[@]}"
exit "$failed"
