#!/usr/bin/env bash
# Install what bootagent needs on a fresh Debian machine, then make .venv.
#   scripts/bootstrap.sh          the agent, the demo and the unit tests
#   scripts/bootstrap.sh --full   also the real-boot test's tools (QEMU, mmdebstrap, packer)
#                                 and the Debian package's build tools (scripts/build-deb.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(passwd openssh-client python3-venv libsystemd-dev pkg-config)
if [ "${1:-}" = "--full" ]; then
    packages+=(qemu-system-x86 qemu-utils mmdebstrap socat e2fsprogs packer openssh-server)
    packages+=(git dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all
               python3-setuptools lintian)
fi
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "bootstrap: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's own Python 3.11 when present: it starts without the pyenv shim's detour.
python=python3
[ -x /usr/bin/python3.11 ] && python=/usr/bin/python3.11
# bootagent/__init__.py holds the version the install records
if [ ! -x .venv/bin/bootagent ] || [ pyproject.toml -nt .venv/.installed ] ||
   [ bootagent/__init__.py -nt .venv/.installed ]; then
    "$python" -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test,systemd]'
    touch .venv/.installed
fi
