"""The pieces around the media: discovery without side effects, hostname precedence, sshd's
Include, the configuration key, and (in a chroot jail, as on a live system) the customData
script running once, before the userData script."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import pytest

from bootagent.config import validate
from bootagent.errors import ConfigError, MediaError, StepError
from bootagent.fake.media import build_ovf
from bootagent.fake.server import default_document
from bootagent.imds.document import parse_document
from bootagent.media import find
from bootagent.sshd import includes
from bootagent.steps.hostname import choose_hostname
from conftest import result_json

# -- discovery ---------------------------------------------------------------------------------


def test_cd_devices_come_from_dev_and_udev_records(root: Path):
    (root / "dev").mkdir()
    for name in ("sr1", "sr0", "sda", "srx"):
        (root / "dev" / name).write_text("")
    udev = root / "run/udev/data"
    udev.mkdir(parents=True)
    (udev / "b11:0").write_text("S:cdrom\nE:ID_FS_TYPE=iso9660\n")          # sr0 again
    (udev / "b8:16").write_text("E:ID_FS_TYPE=udf\nE:ID_BUS=scsi\n")
    (udev / "b8:0").write_text("E:ID_FS_TYPE=ext4\n")
    (udev / "c4:1").write_text("E:ID_FS_TYPE=udf\n")                        # not a block device
    block = root / "sys/dev/block"
    block.mkdir(parents=True)
    os.symlink("../../devices/pci0000:00/ata1/block/sr0", block / "11:0")
    os.symlink("../../devices/vmbus/host1/block/sdb", block / "8:16")
    os.symlink("../../devices/vmbus/host0/block/sda", block / "8:0")
    from bootagent.context import Context
    assert find.cd_devices(Context(root=str(root))) == ["/dev/sr0", "/dev/sr1", "/dev/sdb"]


def test_auto_looks_at_nothing_off_a_live_azure_root(root: Path, make_ctx, monkeypatch):
    """A root that is not `/` (or not Azure, or Arc) has no media: no subprocess, no read."""
    def refuse(*args, **kwargs):
        raise AssertionError("a subprocess was started while looking for the media")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    (root / "dev").mkdir()
    (root / "dev/sr0").write_text("")
    assert find.read_media(make_ctx()) is None
    assert find.read_media(make_ctx(config={"azure": {"provisioning_media": "off"}})) is None


def test_a_configured_path_is_taken_under_the_root(root: Path, make_ctx):
    (root / "srv/media").mkdir(parents=True)
    (root / "srv/media/ovf-env.xml").write_bytes(b"<x/>")
    found = find.read_media(make_ctx(config={"azure": {"provisioning_media": "/srv/media"}}))
    assert found.data == b"<x/>" and found.source == str(root / "srv/media/ovf-env.xml")
    assert "<x/>" not in repr(found)


@pytest.mark.parametrize("setup, says", [
    (lambda p: None, "No such file"),
    (lambda p: p.mkdir(), "a directory without ovf-env.xml"),
    (lambda p: p.write_bytes(b"\x7fELF" + bytes(4096)), "no file system found"),
])
def test_a_path_that_holds_no_media_is_refused_in_one_line(tmp_path, setup, says):
    target = tmp_path / "media"
    setup(target)
    with pytest.raises(MediaError, match=says) as caught:
        find.read_path(str(target), f"--provisioning-media {target}")
    assert "\n" not in str(caught.value)


# -- hostname precedence -------------------------------------------------------------------


def instance(computer_name="computer", name="vm-name"):
    document = default_document()
    document["compute"]["osProfile"]["computerName"] = computer_name
    document["compute"]["name"] = name
    return parse_document(document)


@pytest.mark.parametrize("userdata, customdata, computer, media, expected", [
    ({"hostname": "from-userdata"}, {"hostname": "from-customdata"}, "computer", "media", "from-userdata"),
    ({}, {"hostname": "from-customdata"}, "computer", "media", "from-customdata"),
    ({}, {}, "computer", "media", "computer"),
    ({}, {}, "", "media", "media"),
    ({}, {}, "", None, "vm-name"),
])
def test_hostname_precedence(userdata, customdata, computer, media, expected):
    name, _ = choose_hostname(instance(computer_name=computer), userdata, customdata, media)
    assert name == expected


def test_an_invalid_custom_data_hostname_fails_without_quoting_it():
    with pytest.raises(StepError, match="the customData hostname is not a valid hostname") as caught:
        choose_hostname(instance(), {}, {"hostname": "bad_name!secret"})
    assert "secret" not in str(caught.value)


# -- sshd's Include, the configuration key ---------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("Include /etc/ssh/sshd_config.d/*.conf\n", True),                  # Debian 12
    ("  include sshd_config.d/*.conf  # relative\n", True),
    ('Include "/etc/ssh/sshd_config.d/50-bootagent.conf"\n', True),
    ("# Include /etc/ssh/sshd_config.d/*.conf\nPasswordAuthentication no\n", False),
    ("Include /etc/ssh/other.d/*.conf\n", False),
    ("", False),
])
def test_sshd_config_includes_the_drop_in(text, expected):
    assert includes(text) is expected


@pytest.mark.parametrize("value, ok", [("auto", True), ("off", True), ("/dev/sr1", True),
                                       ("media.iso", False), (True, False), ("", False)])
def test_the_provisioning_media_key(value, ok):
    raw = {"azure": {"provisioning_media": value}}
    if ok:
        assert validate(raw, "f.yaml").azure.provisioning_media == value
    else:
        with pytest.raises(ConfigError, match="azure.provisioning_media"):
            validate(raw, "f.yaml")


# -- live: the customData script runs once, before the userData script -----------------------


@pytest.fixture
def jail(tmp_path):
    from reliability import machine
    from reliability.jail import jail_root

    machine.require_root("a chroot in private namespaces")
    root = jail_root(tmp_path / "jail")
    (root / "etc/ssh/sshd_config").write_text("Include /etc/ssh/sshd_config.d/*.conf\n")
    return root


def test_live_the_custom_data_script_runs_once_before_the_user_data_script(jail):
    from bootagent.fake.server import FakeImds
    from reliability.jail import run_live

    document = default_document()
    document["compute"]["userData"] = base64.b64encode(
        b"#!/bin/sh\necho userData >> /tmp/order\n").decode()
    media = jail / "media"
    media.mkdir()
    (media / "ovf-env.xml").write_bytes(build_ovf(
        document, "Live-Pass 1", b"#!/bin/sh\necho customData >> /tmp/order\n"))
    with FakeImds(document, rate_limit=0) as fake:
        first = run_live(jail, "--imds-url", fake.url, "--provisioning-media", "/media")
        second = run_live(jail, "--imds-url", fake.url, "--provisioning-media", "/media")
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert (jail / "tmp/order").read_text() == "customData\nuserData\n"
    record = result_json(jail)
    assert record["steps"]["customdata"]["status"] == "unchanged"
    kept = jail / "var/lib/bootagent/custom-data"
    assert oct(kept.stat().st_mode & 0o777) == "0o700"
    assert (jail / "var/lib/bootagent/custom-data.output").read_bytes() == b""
    admin = document["compute"]["osProfile"]["adminUsername"]
    shadow = (jail / "etc/shadow").read_text()
    assert f"\n{admin}:$6$" in "\n" + shadow and "Live-Pass" not in shadow


def test_live_a_custom_data_script_skipped_by_configuration_runs_once_scripts_are_enabled(jail):
    """SPEC "Hardening": a step skipped by configuration is never recorded as done. The
    media is gone at the next boot, so the kept customData script waits and runs then."""
    from bootagent.fake.server import FakeImds
    from reliability.jail import JAIL_CONFIG, run_live

    document = default_document()
    media = jail / "media"
    media.mkdir()
    (media / "ovf-env.xml").write_bytes(build_ovf(document, None, b"#!/bin/sh\necho ran >> /tmp/runs\n"))
    config = jail / "etc/bootagent/bootagent.yaml"
    with FakeImds(document, rate_limit=0) as fake:
        config.write_text("userdata:\n  run_scripts: false\n" + JAIL_CONFIG)
        skipped = run_live(jail, "--imds-url", fake.url, "--provisioning-media", "/media")
        assert skipped.returncode == 0, skipped.stderr
        step = result_json(jail)["steps"]["customdata"]
        assert (step["script"], step["script_reason"]) == ("skipped", "userdata.run_scripts is false")
        assert not (jail / "tmp/runs").exists()
        config.write_text(JAIL_CONFIG)
        enabled = run_live(jail, "--imds-url", fake.url)      # the CD is gone at this boot
        again = run_live(jail, "--imds-url", fake.url)
    assert enabled.returncode == 0, enabled.stderr
    assert again.returncode == 0, again.stderr
    assert (jail / "tmp/runs").read_text() == "ran\n"


def test_a_device_is_mounted_read_only_and_unmounted_and_named_as_the_source(tmp_path):
    """A block device (a read-only loop device over an ISO): mounted in a private directory
    under /run/bootagent, read, unmounted, the directory removed; the source is the device."""
    from bootagent.fake.media import write_media

    if os.geteuid() != 0:
        pytest.skip("a loop device needs root")
    iso = tmp_path / "media.iso"
    write_media(str(iso), build_ovf(default_document(), None, b"x"))
    attach = subprocess.run(["losetup", "--find", "--show", "--read-only", str(iso)],
                            capture_output=True, text=True)
    if attach.returncode != 0:
        pytest.skip(f"no loop device here: {attach.stderr.strip()}")
    device = attach.stdout.strip()
    try:
        try:
            found = find.read_path(device, device)
        except MediaError as err:
            if "unknown filesystem type" in str(err) or "permission denied" in str(err).lower():
                pytest.skip(f"this kernel cannot mount the image: {err}")
            raise
        assert found.source == device and b"<Environment" in found.data
        mounts = Path("/proc/mounts").read_text()
        assert device not in mounts and ".media." not in mounts
        assert not [p for p in Path("/run/bootagent").iterdir() if p.name.startswith(".media.")]
    finally:
        subprocess.run(["losetup", "--detach", device])
