"""Step `users` with the real `useradd --root` on a scratch root: creation, groups, the
password lock, validation before any change, an existing user left alone, dry-run, and
useradd failing or missing."""

from __future__ import annotations

import io
import os

import pytest

from bootagent import tools
from bootagent.accounts import Account
from bootagent.boot import Boot
from bootagent.errors import StepError
from bootagent.imds.document import parse_document
from bootagent.log import Log
from bootagent.state import InstanceState
from bootagent.steps import users

DATABASES = ("passwd", "shadow", "group", "gshadow")


def make_boot(doc: dict) -> Boot:
    return Boot(parse_document(doc), InstanceState({"steps": {}}))


def databases(root) -> dict:
    return {name: (root / "etc" / name).read_bytes() for name in DATABASES}


def shadow_field(root, name: str) -> str:
    for line in (root / "etc/shadow").read_text().splitlines():
        if line.split(":")[0] == name:
            return line.split(":")[1]
    raise AssertionError(f"{name} not in shadow")


def test_creates_the_admin_with_home_bash_groups_and_a_locked_password(make_ctx, root, document):
    boot = make_boot(document)
    result = users.run(make_ctx(), boot)
    assert result.status == "changed", result.error
    assert {"/etc/passwd", "/etc/shadow", "/home/azureuser"} <= set(result.changed)
    entry = [line for line in (root / "etc/passwd").read_text().splitlines()
             if line.startswith("azureuser:")]
    assert len(entry) == 1
    fields = entry[0].split(":")
    assert fields[5:] == ["/home/azureuser", "/bin/bash"]
    home = (root / "home/azureuser").stat()
    assert (home.st_uid, home.st_gid) == (int(fields[2]), int(fields[3]))
    assert "azureuser" in (root / "etc/group").read_text().split("sudo:x:27:")[1].split("\n")[0]
    assert shadow_field(root, "azureuser").startswith("!")
    assert boot.admin == Account("azureuser", int(fields[2]), int(fields[3]), "/home/azureuser", "/bin/bash")


@pytest.mark.parametrize("value", [True, False, "false", None])
def test_password_flag_forms_are_accepted(make_ctx, root, document, value):
    if value is None:
        del document["compute"]["osProfile"]["disablePasswordAuthentication"]
    else:
        document["compute"]["osProfile"]["disablePasswordAuthentication"] = value
    assert users.run(make_ctx(), make_boot(document)).status == "changed"
    assert "azureuser:" in (root / "etc/passwd").read_text()


def test_missing_groups_are_skipped_with_a_warning(make_ctx, root, document):
    stream = io.StringIO()
    ctx = make_ctx(config={"users": {"groups": ["wheel", "sudo", "docker"]}}, log=Log(env={}, stream=stream))
    assert users.run(ctx, make_boot(document)).status == "changed"
    group = (root / "etc/group").read_text()
    assert "sudo:x:27:azureuser" in group and "wheel" not in group
    warnings = stream.getvalue().splitlines()
    assert any("wheel" in line for line in warnings) and any("docker" in line for line in warnings)


def test_no_groups_configured(make_ctx, root, document):
    assert users.run(make_ctx(config={"users": {"groups": []}}), make_boot(document)).status == "changed"
    assert "sudo:x:27:\n" in (root / "etc/group").read_text()


def test_existing_user_is_left_as_it_is(make_ctx, root, document):
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n"
                                     "azureuser:x:1500:1500:hand made:/srv/admin:/bin/zsh\n")
    (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\nazureuser:$6$salt$hash:19000::::::\n")
    before = databases(root)
    boot = make_boot(document)
    result = users.run(make_ctx(), boot)
    assert (result.status, result.changed) == ("unchanged", [])
    assert databases(root) == before
    assert boot.admin == Account("azureuser", 1500, 1500, "/srv/admin", "/bin/zsh")
    assert not (root / "home/azureuser").exists()


@pytest.mark.parametrize("name", ["Admin", "root;rm -rf /", "a" * 33, "-oops", "1abc", "a b",
                                  "user$", "../etc", 42, ["azureuser"]])
def test_invalid_admin_username_fails_naming_the_field_and_creates_nothing(make_ctx, root, document, name):
    document["compute"]["osProfile"]["adminUsername"] = name
    before = databases(root)
    with pytest.raises(StepError) as caught:
        users.run(make_ctx(), make_boot(document))
    assert "compute.osProfile.adminUsername" in str(caught.value)
    assert "\n" not in str(caught.value)
    assert databases(root) == before
    assert os.listdir(root / "home") == []


@pytest.mark.parametrize("value", ["yes", "True", "1", 1, 0, {"x": 1}, ["true"]])
def test_invalid_password_flag_fails_naming_the_field_and_creates_nothing(make_ctx, root, document, value):
    document["compute"]["osProfile"]["disablePasswordAuthentication"] = value
    before = databases(root)
    with pytest.raises(StepError) as caught:
        users.run(make_ctx(), make_boot(document))
    assert "compute.osProfile.disablePasswordAuthentication" in str(caught.value)
    assert databases(root) == before
    assert os.listdir(root / "home") == []


def test_no_os_profile_is_skipped(make_ctx, root, document):
    del document["compute"]["osProfile"]
    result = users.run(make_ctx(), make_boot(document))
    assert (result.status, result.reason) == ("skipped", "no osProfile in the document")


def test_no_admin_username_is_skipped(make_ctx, root, document):
    document["compute"]["osProfile"]["adminUsername"] = ""
    result = users.run(make_ctx(), make_boot(document))
    assert (result.status, result.reason) == ("skipped", "no adminUsername in the document")


def test_disabled_in_config_is_skipped(make_ctx, root, document):
    before = databases(root)
    result = users.run(make_ctx(config={"users": {"enabled": False}}), make_boot(document))
    assert result.status == "skipped" and result.reason
    assert databases(root) == before


def test_dry_run_records_and_creates_nothing(make_ctx, root, document):
    before = databases(root)
    ctx = make_ctx(dry_run=True)
    boot = make_boot(document)
    result = users.run(ctx, boot)
    assert result.status == "changed"
    assert databases(root) == before
    assert os.listdir(root / "home") == []
    assert any("would create user azureuser in groups sudo" in text for _, text in ctx.changes)
    assert boot.admin is None


def test_useradd_failing_is_one_clear_line(make_ctx, root, document):
    (root / "etc/passwd.lock").write_text("")  # another tool holds the lock: useradd refuses
    before = databases(root)
    with pytest.raises(StepError) as caught:
        users.run(make_ctx(), make_boot(document))
    message = str(caught.value)
    assert message.startswith("useradd failed for azureuser") and "lock" in message
    assert "\n" not in message
    assert databases(root) == before


def test_useradd_not_found(make_ctx, root, document, tmp_path, monkeypatch):
    monkeypatch.setattr(tools, "SYSTEM_BIN_DIRS", ())
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    with pytest.raises(StepError) as caught:
        users.run(make_ctx(env={"PATH": str(empty)}), make_boot(document))
    assert "useradd not found" in str(caught.value) and "\n" not in str(caught.value)


def test_lock_password_locks_an_unlocked_account_with_usermod(make_ctx, root, document):
    ctx = make_ctx()
    document["compute"]["osProfile"]["disablePasswordAuthentication"] = "false"
    users.run(ctx, make_boot(document))
    shadow = (root / "etc/shadow").read_text()
    field = shadow_field(root, "azureuser")
    (root / "etc/shadow").write_text(shadow.replace(f"azureuser:{field}:", "azureuser:$6$salt$hash:"))
    assert users.lock_password(ctx, "azureuser") is True
    assert shadow_field(root, "azureuser") == "!$6$salt$hash"
    assert users.lock_password(ctx, "azureuser") is False


def test_a_new_admin_may_sudo_without_a_password_it_never_had(make_ctx, root, document):
    (root / "etc/sudoers.d").mkdir()
    result = users.run(make_ctx(), make_boot(document))
    assert users.SUDOERS_FILE in result.changed
    rule = root / "etc/sudoers.d/90-bootagent-users"
    assert "azureuser ALL=(ALL) NOPASSWD:ALL\n" in rule.read_text()
    info = rule.stat()
    assert (info.st_mode & 0o777, info.st_uid, info.st_gid) == (0o440, 0, 0)


def test_no_sudo_rule_when_turned_off_or_without_sudo(make_ctx, root, document):
    users.run(make_ctx(), make_boot(document))  # no /etc/sudoers.d: sudo is not installed
    assert not (root / "etc/sudoers.d").exists()
    (root / "etc/sudoers.d").mkdir()
    document["compute"]["osProfile"]["adminUsername"] = "second"
    result = users.run(make_ctx(config={"users": {"sudo": False}}), make_boot(document))
    assert result.status == "changed"
    assert list((root / "etc/sudoers.d").iterdir()) == []
