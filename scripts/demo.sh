#!/usr/bin/env bash
# The main job on a fresh machine: trains a small BNN on the 8x8 digits, compiles it, compares it with PyTorch.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ROOT"
exec python examples/digits_demo.py "$@"
