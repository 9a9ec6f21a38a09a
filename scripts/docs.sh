#!/usr/bin/env bash
# Regenerates the reference pages made from the code: docs/cli.md and the man pages in
# docs/man/ (from the clap definitions in src/cli/mod.rs). The same test, without
# UPDATE_DOCS, runs in the normal test suite and fails when the checked-in pages differ, so
# they never drift; docs/envfile.md is written by hand and checked by that test too.
set -euo pipefail
cd "$(dirname "$0")/.."
UPDATE_DOCS=1 cargo test --quiet -p envrig --test docs
git status --short -- docs/cli.md docs/man
