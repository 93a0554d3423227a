#!/usr/bin/env bash
# Quickstart command 1: set up .venv (pinned) and bring the backend up on its embedded defaults
# (embedded Redis + RQ worker + web server, state under MODEL_DIR). Arguments go to `reid-al serve`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source "$ROOT/scripts/bootstrap.sh"
exec reid-al serve "$@"
