#!/usr/bin/env bash
# The test suite, the real boot under QEMU included (it is marked `realboot`).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/pytest ] || scripts/bootstrap.sh --full
exec .venv/bin/pytest -ra "$@"
