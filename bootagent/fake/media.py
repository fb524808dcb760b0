"""The provisioning media for a fake-imds document: ovf-env.xml in a directory, or an image.

Built as Azure's own media is serialised (`wa:` sections, default-namespace children),
from the document's osProfile and publicKeys, with the admin password read from a file
(never the command line) and customData from a file. An ISO 9660 image (Rock Ridge and
Joliet names) is made by xorriso, else genisoimage; a UDF image (with an ISO 9660
bridge, so no loop mount and no root are needed) by genisoimage -udf.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
from xml.sax.saxutils import escape

OVF_NS = "http://schemas.dmtf.org/ovf/environment/1"
WA_NS = "http://schemas.microsoft.com/windowsazure"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"


def _element(name: str, value: object) -> str:
    return f"        <{name}>{escape(str(value))}</{name}>\n"


def build_ovf(document: dict, password: str | None = None, custom_data: bytes | None = None,
              preprovisioned: bool = False) -> bytes:
    """ovf-env.xml for `document` (its compute.osProfile and publicKeys)."""
    compute = document.get("compute", {}) if isinstance(document, dict) else {}
    profile = compute.get("osProfile") or {}
    parts = ["        <ConfigurationSetType>LinuxProvisioningConfiguration</ConfigurationSetType>\n"]
    hostname = profile.get("computerName") or compute.get("name")
    if hostname:
        parts.append(_element("HostName", hostname))
    if profile.get("adminUsername"):
        parts.append(_element("UserName", profile["adminUsername"]))
    parts.append(_element("UserPassword", password or ""))
    disable = profile.get("disablePasswordAuthentication")
    if disable not in (None, ""):
        parts.append(_element("DisableSshPasswordAuthentication", str(disable).lower()))
    keys = [k for k in compute.get("publicKeys") or [] if isinstance(k, dict) and k.get("keyData")]
    if keys:
        parts.append("        <SSH>\n          <PublicKeys>\n")
        for key in keys:
            parts.append("            <PublicKey>\n")
            if key.get("path"):
                parts.append(f"              <Path>{escape(str(key['path']))}</Path>\n")
            parts.append(f"              <Value>{escape(str(key['keyData']))}</Value>\n")
            parts.append("            </PublicKey>\n")
        parts.append("          </PublicKeys>\n        </SSH>\n")
    if custom_data:
        parts.append(_element("CustomData", base64.b64encode(custom_data).decode("ascii")))
    text = (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<Environment xmlns="{OVF_NS}" xmlns:oe="{OVF_NS}" xmlns:wa="{WA_NS}" xmlns:i="{XSI_NS}">\n'
        "  <wa:ProvisioningSection>\n"
        "    <wa:Version>1.0</wa:Version>\n"
        f'    <LinuxProvisioningConfigurationSet xmlns="{WA_NS}" xmlns:i="{XSI_NS}">\n'
        + "".join(parts) +
        "    </LinuxProvisioningConfigurationSet>\n"
        "  </wa:ProvisioningSection>\n"
        "  <wa:PlatformSettingsSection>\n"
        "    <wa:Version>1.0</wa:Version>\n"
        f'    <PlatformSettings xmlns="{WA_NS}" xmlns:i="{XSI_NS}">\n'
        "      <KmsServerHostname>kms.core.windows.net</KmsServerHostname>\n"
        "      <ProvisionGuestAgent>false</ProvisionGuestAgent>\n"
        f"      <PreprovisionedVm>{'true' if preprovisioned else 'false'}</PreprovisionedVm>\n"
        f"      <PreprovisionedVMType>{'Unknown' if preprovisioned else 'None'}</PreprovisionedVMType>\n"
        "    </PlatformSettings>\n"
        "  </wa:PlatformSettingsSection>\n"
        "</Environment>\n")
    return text.encode("utf-8")


def write_media(out: str, xml: bytes, media_format: str | None = None) -> str:
    """Write `xml` as ovf-env.xml into directory `out`, or as an image at `out` (a name
    ending in .iso or .img, or `media_format` iso9660/udf). Returns what was made."""
    fmt = media_format or ("iso9660" if out.endswith((".iso", ".img")) else "dir")
    if fmt == "dir":
        os.makedirs(out, mode=0o700, exist_ok=True)
        path = os.path.join(out, "ovf-env.xml")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(xml)
        return f"{path} (ovf-env.xml)"
    staging = tempfile.mkdtemp(prefix="fake-media.")
    try:
        with open(os.path.join(staging, "ovf-env.xml"), "wb") as handle:
            handle.write(xml)
        if fmt == "udf":
            _udf(staging, out)
        else:
            _iso(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    os.chmod(out, 0o600)
    return f"{out} ({fmt} image)"


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=120)
    if done.returncode != 0:
        tail = " ".join(done.stderr.split())[-200:]
        raise ValueError(f"{argv[0]} failed (exit {done.returncode}): {tail}")


def _iso(staging: str, out: str) -> None:
    if shutil.which("xorriso"):
        _run(["xorriso", "-as", "mkisofs", "-quiet", "-R", "-J", "-V", "rd_rdfe", "-o", out, staging])
    elif shutil.which("genisoimage"):
        _run(["genisoimage", "-quiet", "-R", "-J", "-V", "rd_rdfe", "-o", out, staging])
    else:
        raise ValueError("making an ISO image needs xorriso or genisoimage (apt-get install xorriso)")


def _udf(staging: str, out: str) -> None:
    """A UDF 1.02 image with an ISO 9660 bridge (genisoimage -udf): blkid and udev see UDF,
    and the guest mounts it as UDF; no loop mount, so no root, is needed to make it."""
    if not shutil.which("genisoimage"):
        raise ValueError("--media-format udf needs genisoimage (apt-get install genisoimage)")
    _run(["genisoimage", "-quiet", "-udf", "-R", "-J", "-V", "rd_rdfe", "-o", out, staging])
