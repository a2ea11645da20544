#!/usr/bin/env bash
# Idempotent environment set-up: a .venv at the repo root with the pinned packages and tvm_bnn installed editable.
# Sourced by scripts/demo.sh and scripts/test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"

# Cross toolchains and emulators for the bare-metal (Cortex-M) and ARM Linux targets, from Debian, when root.
DEB_PACKAGES="gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf libc6-dev-armhf-cross clang make cmake"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  missing=""
  for p in $DEB_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    echo "installing Debian packages:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  fi
fi
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
# The emulated aarch64 board for the RPC tuning test: Debian's arm64 CPython + TVM's aarch64 wheels, run by
# qemu-aarch64 (cached in ~/.cache/tvm_bnn/aarch64-board; a no-op once built).
if command -v qemu-aarch64 >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  bash "$ROOT/scripts/aarch64_rpc_board.sh" setup
fi
