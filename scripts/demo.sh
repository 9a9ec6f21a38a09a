#!/usr/bin/env bash
# demo.sh: sets up the host, builds envrig, and walks through an environment's life with
# Envfile.example, a container and a VM: up (both provisioned), commands in each, the two
# talking to each other by name, their logs, a file carried from one to the other, a snapshot of the whole environment, a break
# and the restore, an export to one file, destroy. Each command is printed as it runs;
# the whole takes a minute or two under TCG (README: the time measured).
#
# ENVRIG=path/to/envrig uses that binary (and the libvirt plugin beside it) instead of
# building a release one (CI passes its debug build).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
started=$(date +%s)

scripts/host-setup.sh
if [ -z "${ENVRIG:-}" ]; then
  echo "== building envrig (release)"
  cargo build --release --locked -q --workspace
  envrig="$repo/target/release/envrig"
else
  envrig=$(realpath "$ENVRIG")
fi

demo=$(mktemp -d -t envrig-demo.XXXXXX)
cleanup() { "$envrig" -C "$demo" destroy -f >/dev/null 2>&1 || true; rm -rf "$demo"; }
trap cleanup EXIT
cp Envfile.example "$demo/Envfile"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { step "envrig $*"; timeout 600 "$envrig" -C "$demo" "$@"; }

run validate
run up
run status
run exec web -- sh -c 'echo "$GREETING, I am $(hostname), role $ROLE"; cat /srv/www/index.html'
run exec db -- sh -c 'echo "I am $(hostname), role $ROLE, a VM with kernel $(uname -r)"; cat /srv/data/orders'
step "envrig exec web -- sh -c 'exit 7'   (the exit code is the command's)"
set +e; "$envrig" -C "$demo" exec web -- sh -c 'exit 7'; echo "exit code: $?"; set -e
run up
step "the container and the VM reach each other by name"
run exec web -- sh -c 'printf "GET /orders HTTP/1.0\r\n\r\n" | nc -w 5 db 8080 | grep "orders:"'
run exec db -- sh -c 'printf "GET / HTTP/1.0\r\n\r\n" | nc -w 5 web 80 | grep "<h1>"'
run logs db --tail 3
# A file from the VM to the container, through the host.
run cp db:/srv/data/orders "$demo/orders"
run cp "$demo/orders" web:/srv/www/orders.txt
run exec web -- cat /srv/www/orders.txt
run snapshot save before
step "break both: the site's page and the database's data"
"$envrig" -C "$demo" exec web -- rm /srv/www/index.html
"$envrig" -C "$demo" exec db -- rm /srv/data/orders
set +e; "$envrig" -C "$demo" exec db -- cat /srv/data/orders; echo "exit code: $?"; set -e
run snapshot restore before
run exec web -- cat /srv/www/index.html
run exec db -- cat /srv/data/orders
run export --snapshot before -o "$demo/demo.envrig"
ls -lh "$demo/demo.envrig"
run ls
run destroy -f
run status
echo
left=$(docker ps -aq --filter "label=dev.envrig.folder=$demo")
if [ -n "$left" ]; then echo "demo: containers were left behind: $left" >&2; exit 1; fi
if virsh -c qemu:///system list --all --name | grep -q '^envrig-demo'; then
  echo "demo: a domain was left behind" >&2; exit 1
fi
echo "demo done in $(( $(date +%s) - started )) s: nothing is left behind"
