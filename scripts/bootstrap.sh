#!/usr/bin/env bash
# Install what bootagent needs on a fresh Debian machine, then make .venv.
#   scripts/bootstrap.sh          the agent, the demo and the unit tests
#   scripts/bootstrap.sh --full   also the real-boot test's tools (QEMU, mmdebstrap, packer)
#                                 and the Debian package's build tools (scripts/build-deb.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

# systemd (its systemd-networkd) and netplan.io read the network step's files in the tests;
# openssl verifies and signs attested documents; xorriso and genisoimage read and make the
# provisioning media's images; fdisk, e2fsprogs and ntfs-3g (sfdisk, mkfs.ext4, mkntfs,
# ntfsls) make and probe the resource disk's
packages=(passwd openssh-client python3-venv libsystemd-dev pkg-config systemd netplan.io openssl
          xorriso genisoimage fdisk e2fsprogs ntfs-3g)
if [ "${1:-}" = "--full" ]; then
    packages+=(qemu-system-x86 qemu-utils mmdebstrap socat e2fsprogs packer openssh-server)
    packages+=(sshpass)   # the media real boot logs in with the admin's password
    # the Debian package: built in the test run (scripts/build-deb.sh) and checked by lintian
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
