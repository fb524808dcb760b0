"""The provisioning media in a real run (SPEC "Provisioning media"): the installed CLI on a
scratch root, the fake IMDS on loopback, the real useradd/chpasswd --root, ISO images made
by the fake's own --media-out code. IMDS stays the source of truth; a broken media fails
only the customdata step (or, for the password, users) and names the field."""

from __future__ import annotations

import base64
import gzip
import json
import os
import stat
import subprocess
import warnings
from pathlib import Path

import pytest
from test_media_parse import azure_form, fields, ns0_ns1, wa_everywhere

from bootagent.fake.media import build_ovf, write_media
from conftest import result_json, run_cli

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt as crypt_module

PASSWORD = "Correct-Horse 7 battery"
CUSTOM_SECRET = "customdata-secret-7f3a"
CUSTOM_DATA = f"#cloud-config\ngreeting: hello from customData\nnote: {CUSTOM_SECRET}\n"
CONFIG = """\
azure:
  report_ready: true
  wireserver: {url}
templates:
  - src: custom.j2
    dest: /etc/custom.conf
"""
TEMPLATE = "greeting={{ customdata.get('greeting', 'none') }} user={{ admin_user }}\n"
CUSTOM_DATA_FILE = "var/lib/bootagent/custom-data"


def install(root: Path, fake, sshd_include: bool = True) -> None:
    (root / "etc/bootagent/templates").mkdir(parents=True, exist_ok=True)
    (root / "etc/bootagent/bootagent.yaml").write_text(CONFIG.format(url=fake.url))
    (root / "etc/bootagent/templates/custom.j2").write_text(TEMPLATE)
    (root / "etc/sudoers.d").mkdir(parents=True, exist_ok=True)
    if sshd_include:
        (root / "etc/ssh/sshd_config").write_text("Include /etc/ssh/sshd_config.d/*.conf\n"
                                                  "KbdInteractiveAuthentication no\n")


def media_dir(tmp_path: Path, data: bytes, name: str = "media") -> Path:
    directory = tmp_path / name
    directory.mkdir()
    (directory / "ovf-env.xml").write_bytes(data)
    return directory


def boot(root: Path, fake, media: Path | str | None = None):
    extra = ["--provisioning-media", str(media)] if media is not None else []
    return run_cli("run", "--root", str(root), "--imds-url", fake.url, "--timeout", "30", *extra)


def shadow_hash(root: Path, name: str) -> str:
    for line in (root / "etc/shadow").read_text().splitlines():
        fields_ = line.split(":")
        if fields_[0] == name:
            return fields_[1]
    raise AssertionError(f"{name} not in shadow")


def statuses(record: dict) -> dict:
    return {name: step["status"] for name, step in record["steps"].items()}


def everything_under(root: Path, skip: tuple[str, ...] = ()) -> list[tuple[str, bytes]]:
    out = []
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            relative = str(path.relative_to(root))
            if relative in skip or path.is_symlink() or not path.is_file():
                continue
            out.append((relative, path.read_bytes()))
    return out


def full_media(document: dict) -> bytes:
    return build_ovf(document, PASSWORD, CUSTOM_DATA.encode())


# -- the media gives the password and customData ---------------------------------------------


def test_password_and_custom_data_are_provisioned_and_leave_no_trace(root, fake_imds, document, tmp_path):
    install(root, fake_imds)
    media = media_dir(tmp_path, full_media(document))
    first = boot(root, fake_imds, media)
    record = result_json(root)
    assert first.returncode == 0, (first.stderr, record)
    admin = document["compute"]["osProfile"]["adminUsername"]
    assert statuses(record)["customdata"] == "changed"
    assert record["steps"]["users"]["password"] == "set from the provisioning media"
    # the hash verifies against the password, and only against it
    hashed = shadow_hash(root, admin)
    assert hashed.startswith("$6$")
    assert crypt_module.crypt(PASSWORD, hashed) == hashed
    assert crypt_module.crypt(PASSWORD + "x", hashed) != hashed
    # sudo asks for the password now that there is one
    sudoers = (root / "etc/sudoers.d/90-bootagent-users").read_text()
    assert f"{admin} ALL=(ALL) ALL\n" in sudoers and "NOPASSWD" not in sudoers
    # customData kept 0600, templates see it
    kept = root / CUSTOM_DATA_FILE
    assert kept.read_bytes() == CUSTOM_DATA.encode()
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert (root / "etc/custom.conf").read_text() == f"greeting=hello from customData user={admin}\n"
    # the default document says disablePasswordAuthentication: sshd's drop-in follows IMDS
    disabled = document["compute"]["osProfile"]["disablePasswordAuthentication"] == "true"
    assert (root / "etc/ssh/sshd_config.d/50-bootagent.conf").read_text().endswith(
        f"PasswordAuthentication {'no' if disabled else 'yes'}\n")
    # the password is nowhere: no file under the root, no output, no result, no report
    for relative, data in everything_under(root):
        assert PASSWORD.encode() not in data, relative
        if relative != CUSTOM_DATA_FILE:
            assert CUSTOM_SECRET.encode() not in data, relative
    for text in (first.stdout, first.stderr, json.dumps(record), json.dumps(fake_imds.health_reports)):
        assert PASSWORD not in text and CUSTOM_SECRET not in text
    # a second boot changes nothing, shadow included (its mtime too)
    before = (root / "etc/shadow").stat().st_mtime_ns
    second = boot(root, fake_imds, media)
    assert second.returncode == 0, second.stderr
    assert (root / "etc/shadow").stat().st_mtime_ns == before
    assert shadow_hash(root, admin) == hashed
    again = result_json(root)
    assert statuses(again)["customdata"] == "unchanged"
    assert PASSWORD not in second.stdout + second.stderr


def test_a_later_boot_without_the_cd_still_renders_custom_data(root, fake_imds, document, tmp_path):
    install(root, fake_imds)
    assert boot(root, fake_imds, media_dir(tmp_path, full_media(document))).returncode == 0
    (root / "etc/bootagent/templates/custom.j2").write_text("again={{ customdata.greeting }}\n")
    later = boot(root, fake_imds)          # auto: not a live root, so no media at all
    assert later.returncode == 0, later.stderr
    assert (root / "etc/custom.conf").read_text() == "again=hello from customData\n"
    assert statuses(result_json(root))["customdata"] == "unchanged"


def test_a_media_with_neither_password_nor_custom_data(root, fake_imds, document, tmp_path):
    install(root, fake_imds)
    done = boot(root, fake_imds, media_dir(tmp_path, build_ovf(document)))
    record = result_json(root)
    assert done.returncode == 0, done.stderr
    assert record["steps"]["customdata"] == {**record["steps"]["customdata"], "status": "skipped",
                                             "reason": "no customData on the provisioning media"}
    admin = document["compute"]["osProfile"]["adminUsername"]
    assert f"{admin} ALL=(ALL) NOPASSWD:ALL" in (root / "etc/sudoers.d/90-bootagent-users").read_text()
    assert not shadow_hash(root, admin).startswith("$")
    assert (root / "etc/custom.conf").read_text().startswith("greeting=none")


@pytest.mark.parametrize("form", [azure_form, wa_everywhere, ns0_ns1])
def test_peers_serialisations_fill_in_what_the_document_lacks(root, fake_imds, document, tmp_path, form):
    """A document without osProfile or keys: the media's admin name, password-auth and key."""
    del document["compute"]["osProfile"]
    document["compute"]["publicKeys"] = []
    fake_imds.document = document
    install(root, fake_imds)
    done = boot(root, fake_imds, media_dir(tmp_path, form()))
    record = result_json(root)
    assert done.returncode == 0, (done.stderr, record)
    assert (root / "home/azureuser/.ssh/authorized_keys").read_text().startswith("ssh-ed25519 ")
    assert crypt_module.crypt("S3cret-pass phrase!", shadow_hash(root, "azureuser")) == shadow_hash(root, "azureuser")
    assert (root / "etc/hostname").read_text() == "media-host\n"
    assert (root / "etc/ssh/sshd_config.d/50-bootagent.conf").read_text().endswith("PasswordAuthentication yes\n")


def test_imds_stays_the_source_of_truth(root, fake_imds, document, tmp_path):
    install(root, fake_imds)
    document["compute"]["osProfile"]["disablePasswordAuthentication"] = "true"
    fake_imds.document = document
    data = ns0_ns1()                                   # the media says admin azureuser, "false"
    assert boot(root, fake_imds, media_dir(tmp_path, data)).returncode == 0
    admin = document["compute"]["osProfile"]["adminUsername"]
    # the password is applied to IMDS's admin (console, sudo), sshd's password login stays off
    assert crypt_module.crypt("S3cret-pass phrase!", shadow_hash(root, admin)) == shadow_hash(root, admin)
    assert (root / "etc/ssh/sshd_config.d/50-bootagent.conf").read_text().endswith("PasswordAuthentication no\n")
    assert (root / "etc/hostname").read_text().strip() == document["compute"]["osProfile"]["computerName"]


def test_without_an_include_sshd_is_left_alone_and_the_step_says_why(root, fake_imds, document, tmp_path):
    install(root, fake_imds, sshd_include=False)
    done = boot(root, fake_imds, media_dir(tmp_path, full_media(document)))
    assert done.returncode == 0
    record = result_json(root)
    assert "does not Include /etc/ssh/sshd_config.d" in record["steps"]["users"]["sshd"]
    assert not (root / "etc/ssh/sshd_config.d").exists()


def test_an_iso_image_is_read_without_mounting(root, fake_imds, document, tmp_path):
    install(root, fake_imds)
    iso = tmp_path / "media.iso"
    write_media(str(iso), full_media(document))
    done = boot(root, fake_imds, iso)
    assert done.returncode == 0, done.stderr
    assert (root / CUSTOM_DATA_FILE).read_bytes() == CUSTOM_DATA.encode()


def test_a_udf_image_is_udf_to_blkid_and_is_read_unchanged(root, fake_imds, document, tmp_path):
    install(root, fake_imds)
    image = tmp_path / "media.udf"
    write_media(str(image), full_media(document), "udf")
    probe = subprocess.run(["blkid", "-p", "-o", "value", "-s", "TYPE", str(image)],
                           capture_output=True, text=True)
    assert probe.stdout.strip() == "udf", probe
    checksum = image.read_bytes()
    done = boot(root, fake_imds, image)
    assert done.returncode == 0, done.stderr
    assert (root / CUSTOM_DATA_FILE).read_bytes() == CUSTOM_DATA.encode()
    assert image.read_bytes() == checksum            # nothing written to the media


# -- bad media: everything IMDS gives is provisioned, only what the media broke fails -----------


def gzip_bomb() -> str:
    return base64.b64encode(gzip.compress(b"\0" * (64 << 20), 9)).decode()


def bad_cases(tmp_path: Path):
    return {
        "malformed": (azure_form()[:-50], "customdata", "not well-formed"),
        "billion-laughs": (b"""<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">
<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>
<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1">&c;</Environment>""", "customdata", "DTD"),
        "two-mib": (azure_form() + b" " * (2 << 20), "customdata", "larger than"),
        "not-base64": (azure_form(fields(custom="not*base64!")), "customdata",
                       "ovf-env.xml CustomData is not valid base64"),
        "gzip-bomb": (azure_form(fields(custom=gzip_bomb())), "customdata",
                      "ovf-env.xml CustomData decompresses to more than"),
        "long-password": (azure_form(fields(password="p" * 73)), "users", "ovf-env.xml UserPassword is 73 bytes"),
        "empty-username": (azure_form(fields().replace("<UserName>azureuser</UserName>", "<UserName></UserName>")),
                           "customdata", "UserName is empty"),
    }


@pytest.mark.parametrize("case", ["malformed", "billion-laughs", "two-mib", "not-base64", "gzip-bomb",
                                  "long-password", "empty-username", "not-a-filesystem"])
def test_a_broken_media_fails_only_what_it_broke(root, fake_imds, document, tmp_path, case):
    install(root, fake_imds)
    if case == "not-a-filesystem":
        media: Path = tmp_path / "disk.img"
        media.write_bytes(os.urandom(1 << 16))
        failing, says = "customdata", "no file system found"
    else:
        data, failing, says = bad_cases(tmp_path)[case]
        media = media_dir(tmp_path, data)
    done = boot(root, fake_imds, media)
    record = result_json(root)
    assert done.returncode == 1, done.stderr
    failed = {name for name, status in statuses(record).items() if status == "failed"}
    assert failed == {failing}, record
    assert says in record["steps"][failing]["error"]
    # everything IMDS gives is there
    admin = document["compute"]["osProfile"]["adminUsername"]
    assert (root / f"home/{admin}/.ssh/authorized_keys").is_file()
    assert (root / "etc/hostname").read_text().strip() == document["compute"]["osProfile"]["computerName"]
    assert (root / "etc/custom.conf").read_text().startswith("greeting=none")
    # the report names the field; the long password is in no output
    [health] = fake_imds.health_reports
    assert health["state"] == "NotReady" and failing in health["description"]
    assert says.split(" is ")[0] in health["description"]
    assert "p" * 73 not in done.stdout + done.stderr + json.dumps(record) + health["description"]
    if case == "long-password":
        assert "NOPASSWD:ALL" in (root / "etc/sudoers.d/90-bootagent-users").read_text()


def test_a_preprovisioned_media_is_refused_and_reported_not_ready(root, fake_imds, document, tmp_path):
    install(root, fake_imds)
    data = build_ovf(document, PASSWORD, None, preprovisioned=True)
    done = boot(root, fake_imds, media_dir(tmp_path, data))
    record = result_json(root)
    assert done.returncode == 1
    assert "PreprovisionedVm is true" in record["steps"]["customdata"]["error"]
    assert statuses(record)["users"] == "skipped" and statuses(record)["hostname"] == "skipped"
    assert not (root / "home").joinpath(document["compute"]["osProfile"]["adminUsername"]).exists()
    [health] = fake_imds.health_reports
    assert health["state"] == "NotReady" and "PreprovisionedVm" in health["description"]


# -- the commands beside run ---------------------------------------------------------------


def test_metadata_media_shows_what_the_media_gives_without_secrets(root, document, tmp_path):
    media = media_dir(tmp_path, full_media(document))
    shown = run_cli("metadata", "--root", str(root), "--media", str(media))
    assert shown.returncode == 0, shown.stderr
    facts = json.loads(shown.stdout)
    assert facts["password"] == "(set)"
    assert facts["custom_data"] == f"{len(CUSTOM_DATA.encode())} bytes"
    assert facts["username"] == document["compute"]["osProfile"]["adminUsername"]
    assert PASSWORD not in shown.stdout + shown.stderr and CUSTOM_SECRET not in shown.stdout
    text = run_cli("metadata", "--root", str(root), "--media", str(media), "--format", "text")
    assert "password: (set)" in text.stdout
    none = run_cli("metadata", "--root", str(root), "--media")
    assert none.returncode == 1 and "no provisioning media" in none.stderr


def test_fake_imds_writes_a_media_with_the_password_from_a_file(tmp_path):
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    custom = tmp_path / "custom"
    custom.write_text(CUSTOM_DATA)
    iso = tmp_path / "out.iso"
    process = subprocess.Popen([str(Path(run_cli.__globals__["BOOTAGENT"])), "fake-imds", "--media-out",
                                str(iso), "--password-file", str(secret), "--custom-data", str(custom)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    assert "provisioning media" in err and PASSWORD not in err
    shown = run_cli("metadata", "--media", str(iso))
    facts = json.loads(shown.stdout)
    assert facts["password"] == "(set)" and facts["custom_data"] == f"{len(CUSTOM_DATA)} bytes"


def test_a_dry_run_with_a_media_says_what_it_would_do_and_changes_nothing(root, fake_imds, document, tmp_path):
    install(root, fake_imds)
    before = {relative: data for relative, data in everything_under(root)}
    done = run_cli("run", "--root", str(root), "--imds-url", fake_imds.url, "--timeout", "30", "--dry-run",
                   "--provisioning-media", str(media_dir(tmp_path, full_media(document))))
    assert done.returncode == 0, done.stderr
    assert "password set from the provisioning media" in done.stdout
    assert "custom-data" in done.stdout
    assert PASSWORD not in done.stdout + done.stderr and CUSTOM_SECRET not in done.stdout + done.stderr
    assert {relative: data for relative, data in everything_under(root)
            if not relative.startswith(("run/bootagent", "var/lib/bootagent"))} == \
        {relative: data for relative, data in before.items()
         if not relative.startswith(("run/bootagent", "var/lib/bootagent"))}
    assert not (root / CUSTOM_DATA_FILE).exists()
