#!/usr/bin/env bash
# Idempotent environment set-up: a .venv at the repo root with the pinned packages and tvm_bnn installed editable.
# Sourced by scripts/demo.sh and scripts/test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  "$PY" -m venv "$ROOT/.venv"
fi
STAMP="$ROOT/.venv/.tvm_bnn-installed"
if [ ! -f "$STAMP" ] || [ "$ROOT/requirements.txt" -nt "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  "$ROOT/.venv/bin/pip" install --disable-pip-version-check -q -r "$ROOT/requirements.txt"
  "$ROOT/.venv/bin/pip" install --disable-pip-version-check -q --no-deps -e "$ROOT"
  touch "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"
