#!/usr/bin/env bash
# demo.sh: sets up the host, builds envrig, and walks through an environment's life:
# up, status, a command inside, ls, destroy. Uses Envfile.example in a temporary folder.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

scripts/host-setup.sh
echo "== building envrig (release)"
cargo build --release --locked -q
envrig="$repo/target/release/envrig"

demo=$(mktemp -d -t envrig-demo.XXXXXX)
cleanup() { "$envrig" -C "$demo" destroy -f >/dev/null 2>&1 || true; rm -rf "$demo"; }
trap cleanup EXIT
cp Envfile.example "$demo/Envfile"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { step "envrig $*"; "$envrig" -C "$demo" "$@"; }

run validate
run up
run status
run exec web -- sh -c 'echo "$GREETING, I am $(hostname), role $ROLE"'
run exec db -- sh -c 'echo "db says: role $ROLE"'
step "envrig exec web -- sh -c 'exit 7'   (the exit code is the command's)"
set +e; "$envrig" -C "$demo" exec web -- sh -c 'exit 7'; echo "exit code: $?"; set -e
run up
run ls
run destroy -f
run status
echo
left=$(docker ps -aq --filter "label=dev.envrig.folder=$demo")
if [ -n "$left" ]; then echo "demo: containers were left behind: $left" >&2; exit 1; fi
echo "demo done: nothing is left behind"
