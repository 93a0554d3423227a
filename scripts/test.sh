#!/usr/bin/env bash
# Quickstart command 2: set up .venv (pinned) and run the whole test suite, end-to-end included.
# Extra arguments go to pytest, e.g. `./scripts/test.sh -m "not e2e"` or `./scripts/test.sh -k np3`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source "$ROOT/scripts/bootstrap.sh" dev
exec python -m pytest "$@"
