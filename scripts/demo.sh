#!/usr/bin/env bash
# The product in a browser within minutes: Label Studio (its own cached venv), the backend on its
# embedded defaults, and a connected project with the ORL faces ingested; prints the URL and the login.
# Arguments go to scripts/demo.py (--check: stop once the first pair tasks are in Label Studio).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source "$ROOT/scripts/bootstrap.sh" dev
exec python "$ROOT/scripts/demo.py" "$@"
