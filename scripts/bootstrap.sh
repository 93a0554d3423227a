#!/usr/bin/env bash
# Create .venv (once) and install reid-al with pinned versions. Sourced by serve.sh and test.sh,
# so each quickstart command does all of its own set-up on a fresh machine.
# Re-installs only when pyproject.toml or the pinned constraints change.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${REID_AL_VENV:-$ROOT/.venv}"
EXTRAS="${1:-}"
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "reid-al needs Python >= 3.10 (found $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
[ -x "$VENV/bin/python" ] || { echo "[bootstrap] creating $VENV"; "$PY" -m venv "$VENV"; }
STAMP="$VENV/.reid-al-installed${EXTRAS:+-$EXTRAS}"
HASH="$(cat "$ROOT/pyproject.toml" "$ROOT/requirements/constraints.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$HASH" ]; then
  echo "[bootstrap] installing reid-al${EXTRAS:+[$EXTRAS]} into $VENV (pinned: requirements/constraints.txt)"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # torch first and alone, pinned: it resolves to the CPU wheel where one is provided locally.
  "$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
  "$VENV/bin/python" -m pip install --quiet -c "$ROOT/requirements/constraints.txt" -e "$ROOT${EXTRAS:+[$EXTRAS]}"
  echo "$HASH" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
