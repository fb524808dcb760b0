#!/usr/bin/env bash
# The test suite, the real boot under QEMU included (it is marked `realboot`): ruff and
# mypy first (pinned in the `test` extras), then pytest; the exit status is non-zero when
# any of the three failed, and pytest runs whatever the linters said.
set -euo pipefail
cd "$(dirname "$0")/.."

# The real boot's tools: installed whenever one is missing, not only on a machine without
# .venv (`./demo.sh` makes .venv with the light bootstrap and nothing else).
realboot_tools=(qemu-system-x86_64 qemu-img mmdebstrap socat mkfs.ext4 packer sshd sshpass
                dpkg-buildpackage lintian)
missing=()
for tool in "${realboot_tools[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || [ -x "/sbin/$tool" ] || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "test: the real boot needs ${missing[*]}: installing" >&2
    scripts/bootstrap.sh --full
else
    scripts/bootstrap.sh  # makes or refreshes .venv when pyproject.toml changed
fi

status=0
echo "test: ruff check" >&2
.venv/bin/ruff check . || status=1
echo "test: mypy" >&2
.venv/bin/mypy || status=1
.venv/bin/pytest -ra "$@" || status=$?
exit "$status"
