#!/usr/bin/env bash
# The test suite on a fresh machine: installs what it needs, then runs pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ROOT"
exec python -m pytest -q "$@"
