"""The cloud-init image that the real-boot bench compares bootagent with, and
the provisioning CD that Azure attaches to a new VM.

The image is the real-boot base (same packages, same hooks) plus Debian's
``cloud-init`` package (22.4 in bookworm) with only the Azure datasource, and no
bootagent. It reaches IMDS and the wireserver at their Azure addresses through
the same guestfwd as the bootagent image (see qemu.py).

What cloud-init 22.4 needs to provision from IMDS alone (read in its
DataSourceAzure.crawl_metadata): it looks for ovf-env.xml in its seed directory,
then mounts /dev/sr0 (always tried) and every iso9660/udf device. When a mount
fails (an empty drive, as QEMU's default DVD drive is, or no drive at all), it
takes the IMDS path: admin user, host name and password setting from
compute.osProfile, keys from compute.publicKeys, userData from compute.userData,
and it writes itself a minimal ovf-env.xml. Then it reports Ready to the
wireserver from its pre-network stage. So no CD is needed; 23.1 made the
IMDS-only path explicit. Azure does attach a CD with ovf-env.xml to every new VM;
``provisioning_iso`` makes one (ISO 9660, genisoimage) naming the same admin,
key and host name as the fake's document, for the bench's ``--ovf-cd``.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import tempfile
from pathlib import Path
from xml.sax.saxutils import escape

from .image import Variant

# Debian's cloud-init pulls in isc-dhcp-client (its Azure datasource runs its
# own DHCP before the network is configured), eject, and its Python libraries.
CUSTOMIZE = r"""
set -eu
R="$1"
mkdir -p "$R/etc/cloud/cloud.cfg.d"
# Only the Azure datasource, as on an image made for Azure.
printf 'datasource_list: [ Azure ]\n' > "$R/etc/cloud/cloud.cfg.d/99-azure-only.cfg"
chmod 0644 "$R/etc/cloud/cloud.cfg.d/99-azure-only.cfg"
# Captured-image state: cloud-init has never run in this root.
rm -rf "$R/var/lib/cloud" "$R/var/log/cloud-init.log" "$R/var/log/cloud-init-output.log"
"""

VARIANT = Variant(name="cloud-init", packages=("cloud-init",), customize=CUSTOMIZE)

# QEMU's MAC for the first NIC when none is given: the document's interface
# carries it, as Azure's IMDS carries the VM's own, so that the network
# configuration cloud-init renders from IMDS matches the guest's NIC.
QEMU_FIRST_MAC = "525400123456"


def ovf_env_xml(*, admin: str, hostname: str, public_key: str,
                disable_password: bool = True) -> bytes:
    """An ovf-env.xml as Azure puts it on the provisioning CD (Linux
    provisioning configuration set, namespaced as Azure writes it): the admin
    user, the host name and the admin's SSH key (fingerprint, path, value)."""
    blob = base64.b64decode(public_key.split()[1])
    fingerprint = hashlib.sha1(blob).hexdigest().upper()
    path = f"/home/{admin}/.ssh/authorized_keys"
    fields = {
        "admin": escape(admin), "hostname": escape(hostname), "path": escape(path),
        "key": escape(public_key.strip()), "fingerprint": fingerprint,
        "nopass": "true" if disable_password else "false",
    }
    return ("""<?xml version="1.0" encoding="utf-8"?>
<ns0:Environment xmlns:ns0="http://schemas.dmtf.org/ovf/environment/1"
    xmlns:ns1="http://schemas.microsoft.com/windowsazure"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <ns1:ProvisioningSection>
    <ns1:Version>1.0</ns1:Version>
    <ns1:LinuxProvisioningConfigurationSet>
      <ns1:ConfigurationSetType>LinuxProvisioningConfiguration</ns1:ConfigurationSetType>
      <ns1:UserName>{admin}</ns1:UserName>
      <ns1:DisableSshPasswordAuthentication>{nopass}</ns1:DisableSshPasswordAuthentication>
      <ns1:SSH>
        <ns1:PublicKeys>
          <ns1:PublicKey>
            <ns1:Fingerprint>{fingerprint}</ns1:Fingerprint>
            <ns1:Path>{path}</ns1:Path>
            <ns1:Value>{key}</ns1:Value>
          </ns1:PublicKey>
        </ns1:PublicKeys>
      </ns1:SSH>
      <ns1:HostName>{hostname}</ns1:HostName>
    </ns1:LinuxProvisioningConfigurationSet>
  </ns1:ProvisioningSection>
  <ns1:PlatformSettingsSection>
    <ns1:Version>1.0</ns1:Version>
    <ns1:PlatformSettings>
      <ns1:KmsServerHostname>kms.core.windows.net</ns1:KmsServerHostname>
      <ns1:ProvisionGuestAgent>false</ns1:ProvisionGuestAgent>
      <ns1:GuestAgentPackageName xsi:nil="true" />
      <ns1:PreprovisionedVm>false</ns1:PreprovisionedVm>
    </ns1:PlatformSettings>
  </ns1:PlatformSettingsSection>
</ns0:Environment>
""".format(**fields)).encode()


def provisioning_iso(dest: Path, ovf_env: bytes) -> Path:
    """An ISO 9660 image (Rock Ridge, Joliet) holding ovf-env.xml at its root."""
    with tempfile.TemporaryDirectory(prefix="vm-ovf-") as tmp:
        (Path(tmp) / "ovf-env.xml").write_bytes(ovf_env)
        subprocess.run(["genisoimage", "-quiet", "-J", "-r", "-V", "rd_rdfe_stable",
                        "-o", str(dest), tmp], check=True)
    return dest


def cdrom_args(iso: Path) -> list[str]:
    """QEMU arguments attaching `iso` as the guest's CD-ROM (IDE, /dev/sr0)."""
    return ["-drive", f"file={iso},media=cdrom,readonly=on,if=ide,index=2,format=raw"]
