#!/usr/bin/env bash
# The demo: bootagent provisions a scratch root from the project's own fake IMDS,
# twice: the first boot changes everything, the second nothing.
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh
exec .venv/bin/python scripts/demo.py "$@"
