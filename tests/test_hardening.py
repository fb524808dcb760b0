"""SPEC "Hardening": the rules every command keeps, each proved where a user meets it.

The system account never becomes the admin; result.json is written however the run
ends and `status` knows this boot by the kernel's boot id; an error line quotes input
on one line; header names fold case; a skipped step is never done; the root is live
when it is `/` however it is spelled. (The deadline while reading a body is proved in
test_client.py, the report's description in test_report.py, the userData script that
waits for `run_scripts` in test_reliability.py.)
"""

from __future__ import annotations

import gc
import io
import json
import os
from pathlib import Path

import pytest

from bootagent import accounts, writer
from bootagent.context import Context
from bootagent.errors import BootagentError, ConfigError, StepError, UnsafePath
from bootagent.fake.server import FakeImds
from bootagent.imds.document import parse_document
from bootagent.steps import ssh_keys, users
from conftest import b64, result_json, run_cli
from test_run import boot, hostile_boot, passwd_entry
from test_users import make_boot

# -- 1. a system account is never the admin ---------------------------------------------------

SYSTEM_ACCOUNTS = {
    "www-data": "www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin",
    "daemon": "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin",
    "root": None,  # already in the scratch root's passwd
}


@pytest.mark.parametrize("name", sorted(SYSTEM_ACCOUNTS))
def test_an_existing_system_account_never_becomes_the_admin(root, document, name):
    """users fails naming the field, ssh_keys fails with it; no key in the account's home,
    no sudo rule anywhere under /etc/sudoers.d."""
    if SYSTEM_ACCOUNTS[name]:
        with open(root / "etc/passwd", "a") as passwd:
            passwd.write(SYSTEM_ACCOUNTS[name] + "\n")
    (root / "var/www").mkdir(parents=True)
    (root / "etc/sudoers.d").mkdir()
    document["compute"]["osProfile"]["adminUsername"] = name
    done, record = hostile_boot(root, document, ("users", "ssh_keys"))
    why = record["steps"]["users"]["error"]
    assert why.startswith(f"compute.osProfile.adminUsername '{name}' is an existing system account")
    assert "UID_MIN 1000" in why
    assert record["steps"]["ssh_keys"]["error"].endswith(why)
    home = {"www-data": "var/www", "daemon": "usr/sbin", "root": "root"}[name]
    assert not (root / home / ".ssh").exists()
    assert list((root / "etc/sudoers.d").iterdir()) == []


def test_uid_min_is_the_roots_own(make_ctx, root, document):
    """An image whose login.defs puts UID_MIN at 500 has admins from 500 on; one at 2000
    makes a uid of 1500 a system account."""
    with open(root / "etc/passwd", "a") as passwd:
        passwd.write("azureuser:x:600:600::/home/azureuser:/bin/bash\n")
    (root / "etc/login.defs").write_text("# shadow's settings\nUID_MIN\t\t 500\nUID_MAX 60000\n")
    assert users.run(make_ctx(), make_boot(document)).status == "unchanged"
    (root / "etc/login.defs").write_text("UID_MIN 2000\n")
    with pytest.raises(StepError, match=r"\(uid 600, below UID_MIN 2000 of /etc/login.defs\)"):
        users.run(make_ctx(), make_boot(document))


def test_ssh_keys_refuses_a_system_account_the_users_step_did_not_check(make_ctx, root, document):
    """users done for this instance (gated), the account a system one: still no keys."""
    with open(root / "etc/passwd", "a") as passwd:
        passwd.write("azureuser:x:999:999::/home/azureuser:/bin/bash\n")
    (root / "home/azureuser").mkdir()
    boot_ = make_boot(document)
    boot_.results["users"] = ssh_keys.StepResult("unchanged")
    with pytest.raises(StepError, match="existing system account"):
        ssh_keys.run(make_ctx(), boot_)
    assert not (root / "home/azureuser/.ssh").exists()


@pytest.mark.parametrize("text,expected", [
    ("", 1000), ("UID_MIN 500\n", 500), ("#UID_MIN 500\n", 1000), ("UID_MIN\n", 1000),
    ("UID_MIN x\n", 1000), ("UID_MIN 500\nUID_MIN 700\n", 700), ("UID_MINIMUM 5\n", 1000),
])
def test_parse_uid_min(text, expected):
    assert accounts.parse_uid_min(text) == expected


# -- 2. result.json however the run ends --------------------------------------------------------


def test_an_unreadable_instance_state_is_recorded_and_status_tells_it(root, fake_imds):
    """instance.json a directory: no per-instance step runs (none may run twice), the run
    exits 1 with one line, result.json says why, and `status --wait` returns at once."""
    (root / "var/lib/bootagent/instance.json").mkdir(parents=True)
    done = boot(root, fake_imds)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    record = result_json(root)
    assert record["status"] == "error"
    assert record["error"].startswith("cannot read the instance state: refusing "
                                      "/var/lib/bootagent/instance.json: it is not a regular file")
    assert f"bootagent: {record['error']}" in done.stderr.splitlines()
    assert set(record["steps"]) == {"host_keys"}
    assert passwd_entry(root, "azureuser") is None
    status = run_cli("status", "--root", str(root), "--wait", "--timeout", "600")
    assert status.returncode == 1, status.stdout
    assert f"error: {record['error']}" in status.stdout


def test_a_bug_is_recorded_in_the_result_too(root, document, tmp_path, monkeypatch):
    """Whatever ends a run, result.json says so (here a bug inside the run itself)."""
    from bootagent import runner
    from bootagent.config import defaults

    def broken(*args, **kwargs):
        raise KeyError("oops")

    monkeypatch.setattr(runner, "_provision", broken)
    metadata = tmp_path / "doc.json"
    metadata.write_text(json.dumps(document))
    ctx = Context(root=str(root), config=defaults())
    code, record = runner.run(ctx, metadata_file=str(metadata))
    assert code == 1
    assert result_json(root) == record
    assert record["error"] == "internal error: KeyError: 'oops'; please report it"


# -- 3. "this boot" is the kernel's boot id -----------------------------------------------------


def this_boot() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def test_the_result_names_this_boot_and_status_counts_only_this_boots(root, fake_imds):
    assert boot(root, fake_imds).returncode == 0
    record = result_json(root)
    assert record["boot_id"] == this_boot()
    assert run_cli("status", "--root", str(root)).returncode == 0
    # the same record from another boot (a stepped clock makes its time say nothing)
    record["boot_id"] = "0f0f0f0f-0000-4000-8000-000000000000"
    (root / "run/bootagent/result.json").write_text(json.dumps(record))
    os.utime(root / "run/bootagent/result.json")
    status = run_cli("status", "--root", str(root))
    assert (status.returncode, status.stdout) == (3, "not finished: no result in this boot yet\n")
    del record["boot_id"]  # an agent that did not record its boot
    (root / "run/bootagent/result.json").write_text(json.dumps(record))
    assert run_cli("status", "--root", str(root)).returncode == 3


# -- 7. an error line quotes input on one line --------------------------------------------------


def assert_one_line(message: str) -> None:
    assert message and message.isprintable(), repr(message)


@pytest.mark.parametrize("text", [
    "\"users\\nx\": 1\n",                          # an unknown section
    "users:\n  \"gr\\noups\": []\n",               # an unknown key in a section
    "templates:\n  - {src: a, dest: /b, \"x\\ny\": 1}\n",
    "users:\n  groups: \"a\\nb\"\n",
    "imds:\n  timeout: \"1\\n2\"\n",
])
def test_configuration_errors_quote_input_on_one_line(root, text):
    from bootagent import config

    config_file = root / "etc/bootagent/bootagent.yaml"
    config_file.parent.mkdir(parents=True)
    config_file.write_text(text)
    with pytest.raises(ConfigError) as caught:
        config.load(Context(root=str(root)))
    assert_one_line(str(caught.value))
    done = run_cli("run", "--root", str(root), "--metadata-file", "/nonexistent")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr


def test_step_errors_quote_input_on_one_line(make_ctx, root, document):
    document["compute"]["osProfile"]["computerName"] = "web\n\x1b[31mred"
    document["compute"]["osProfile"]["adminUsername"] = "bad\nname"
    document["compute"]["publicKeys"] = [{"keyData": "ssh-evil\x1b]0;x\x07 AAAA", "path": None},
                                         {"keyData": "ssh-ed25519 AAAA", "path": "/etc/\n/x"}]
    instance = parse_document(document)
    from bootagent.steps.hostname import choose_hostname

    errors = []
    for call in (lambda: choose_hostname(instance, {}),
                 lambda: users.check_username(instance.admin_username),
                 lambda: users.password_disabled("tr\nue"),
                 lambda: ssh_keys.parse_key(instance.public_keys[0].key_data, 0),
                 lambda: ssh_keys.check_key_path(instance.public_keys[1].path, "/home/a", 1),
                 lambda: accounts.owner_ids(make_ctx(), "no\nbody", "root")):
        with pytest.raises(BootagentError) as caught:
            call()
        errors.append(str(caught.value))
    for message in errors:
        assert_one_line(message)
    assert "'web\\n\\x1b[31mred'" in errors[0]


# -- 8. header names fold case ------------------------------------------------------------------


def test_headers_are_looked_up_without_regard_to_case():
    from bootagent.http import Headers, Response

    headers = Headers({"retry-after": "3", "WWW-Authenticate": "Basic realm=x.key"})
    assert headers["Retry-After"] == "3" and headers.get("RETRY-AFTER") == "3"
    assert "www-authenticate" in headers and headers.get("Content-Type") is None
    headers["Retry-After"] = "4"
    assert dict(headers) == {"Retry-After": "4", "WWW-Authenticate": "Basic realm=x.key"}
    assert Response(401, {"www-authenticate": "Basic realm=/a/b.key"}, b"", "u").headers[
        "WWW-Authenticate"] == "Basic realm=/a/b.key"


def test_an_arc_challenge_in_lower_case_is_followed():
    from bootagent.http import Response
    from bootagent.platform import identity

    answer = Response(401, {"www-authenticate": "Basic realm=/var/opt/azcmagent/tokens/t.key"}, b"", "u")
    with pytest.raises(identity._Challenge) as caught:
        identity._accept(answer, challenge_ok=True)
    assert identity.realm_key_name(caught.value.header) == "t.key"


# -- 9. a skipped step is not done --------------------------------------------------------------


def test_a_skipped_userdata_script_leaves_the_step_to_run_again(root, document):
    """Offline (root not /) the script is skipped: the step is not recorded as done, so the
    booted image runs it (the live run's half is in test_reliability.py)."""
    document["compute"]["userData"] = b64("#!/bin/sh\necho hi\n")
    with FakeImds(document) as fake:
        assert boot(root, fake).returncode == 0
        first = result_json(root)["steps"]["userdata"]
        state = json.loads((root / "var/lib/bootagent/instance.json").read_text())
        assert boot(root, fake).returncode == 0
        second = result_json(root)["steps"]["userdata"]
    assert first["script"] == "skipped" and first["script_reason"] == "root is not /"
    assert "userdata" not in state["steps"] and state["steps"]["hostname"]["ok"] is True
    assert second["script"] == "skipped"  # the step ran again: a gated one has no details


# -- 10. fake-imds keeps the garbage collector and bounds its memory ----------------------------


def test_fake_imds_keeps_a_bounded_log_in_memory(document):
    import requests

    with FakeImds(document, keep_requests=3) as fake:
        for number in range(5):
            requests.get(f"{fake.url}/metadata/versions?n={number}", headers={"Metadata": "true"}, timeout=5)
        assert [entry["query"]["n"] for entry in fake.requests] == ["2", "3", "4"]
        assert fake.requests.dropped == 2


def test_the_fake_imds_command_runs_with_the_garbage_collector_on(monkeypatch, capsys):
    """The agent's own commands turn gc off (short runs); the fake may serve for days."""
    import threading

    from bootagent import cli
    from bootagent.fake import command

    stopped = threading.Event()
    stopped.set()  # serve once round its loop, then stop, as on SIGTERM
    monkeypatch.setattr(command, "_stop_on_signals", lambda: (stopped, {}))
    was = gc.isenabled()
    try:
        assert cli.main(["fake-imds", "--port", "0"]) == 0
        assert gc.isenabled()
    finally:
        (gc.enable if was else gc.disable)()
    assert capsys.readouterr().out.startswith("http://127.0.0.1:")


# -- 11. live is `/` itself, however spelled; checks never follow a link ------------------------


def test_the_root_is_live_when_it_is_slash_however_spelled(tmp_path):
    os.symlink("/", tmp_path / "slash")
    assert Context(root="/").live and Context(root="//").live and Context(root="/./").live
    assert Context(root=str(tmp_path / "slash")).live
    assert not Context(root=str(tmp_path)).live
    assert not Context(root=str(tmp_path / "missing")).live


def test_existence_checks_never_follow_a_symlink_on_the_way(make_ctx, root, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "sudoers.d").mkdir(parents=True)
    (elsewhere / "sshd_config").write_text("")
    os.rename(root / "etc/ssh", tmp_path / "ssh-moved")
    os.symlink(elsewhere, root / "etc/ssh")
    ctx = make_ctx()
    with pytest.raises(UnsafePath):
        writer.exists(ctx, "/etc/ssh/sshd_config")
    assert writer.exists(ctx, "/etc/ssh")  # the link itself is there
    assert not writer.is_dir(ctx, "/etc/ssh")
    os.symlink(elsewhere / "sudoers.d", root / "etc/sudoers.d")
    assert not writer.is_dir(ctx, "/etc/sudoers.d")
    assert writer.lstat(ctx, "/etc/nothing") is None


def test_a_symlinked_sudoers_directory_gets_no_rule(make_ctx, root, document, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / "etc/sudoers.d")
    assert users.run(make_ctx(log=None), make_boot(document)).status == "changed"
    assert list(outside.iterdir()) == []


def test_log_of_a_step_is_one_helper(capsys):
    """The run and `bootagent host-keys` log a step's outcome with the same line."""
    from bootagent.log import Log, log_step
    from bootagent.steps import StepResult

    stream = io.StringIO()
    ctx = Context(root="/", log=Log(env={}, stream=stream))
    log_step(ctx, "host_keys", StepResult.failed("ssh-keygen failed"))
    log_step(ctx, "users", StepResult.skipped("users disabled"))
    assert stream.getvalue().splitlines() == ["bootagent: host_keys: failed: ssh-keygen failed",
                                              "bootagent: users: skipped: users disabled"]
