"""The userdata step on a real scratch root, and its script runner with real processes:
hostile userData, scripts that hang, fork daemons or flood their output."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bootagent import script as executor
from bootagent.boot import Boot
from bootagent.imds.document import parse_document
from bootagent.imds.userdata import MAX_DECODED
from bootagent.state import InstanceState
from bootagent.steps import StepResult, userdata
from conftest import b64, examples

SAVED = "var/lib/bootagent/user-data"
OUTPUT = "var/lib/bootagent/user-data.output"


class ListLog:
    """A ctx.log that keeps its lines."""

    def __init__(self):
        self.lines: list[tuple[str, str, str | None]] = []

    def _add(self, level, message, step=None):
        self.lines.append((level, message, step))

    def info(self, message, step=None):
        self._add("info", message, step)

    def warning(self, message, step=None):
        self._add("warning", message, step)

    def error(self, message, step=None):
        self._add("error", message, step)

    def status(self, text):
        pass

    def text(self) -> str:
        return "\n".join(message for _, message, _ in self.lines)


def make_boot(document: dict, user_data: object, api_version: str = "2021-08-01") -> Boot:
    document["compute"]["userData"] = user_data
    return Boot(parse_document(document), InstanceState({"steps": {}}), api_version=api_version)


def mode_of(path: Path) -> int:
    return path.stat().st_mode & 0o7777


def test_a_yaml_userdata_is_kept_0600_once(root, make_ctx, document):
    ctx = make_ctx(log=ListLog())
    boot = make_boot(document, b64("#cloud-config\nhostname: web-01\npassword: s3cr3t-value\n"))
    outcome = userdata.run(ctx, boot)
    assert (outcome.status, outcome.changed) == ("changed", ["/var/lib/bootagent/user-data"])
    assert outcome.details == {"kind": "yaml"}
    assert (root / SAVED).read_bytes() == b"#cloud-config\nhostname: web-01\npassword: s3cr3t-value\n"
    assert mode_of(root / SAVED) == 0o600
    before = (root / SAVED).stat().st_mtime_ns
    assert userdata.run(ctx, make_boot(document, document["compute"]["userData"])).status == "unchanged"
    assert (root / SAVED).stat().st_mtime_ns == before
    assert "s3cr3t" not in ctx.log.text() + json.dumps(outcome.to_json())


def test_a_script_is_kept_0700_and_left_pending_for_the_runner(root, make_ctx, document):
    outcome = userdata.run(make_ctx(), make_boot(document, b64("#!/bin/sh\necho hi\n")))
    assert outcome.status == "changed"
    assert outcome.details == {"kind": "script", "script": "pending"}
    assert mode_of(root / SAVED) == 0o700


def test_other_bytes_are_kept_0600_and_gzip_is_undone(root, make_ctx, document):
    payload = bytes(range(256)) * 4
    outcome = userdata.run(make_ctx(), make_boot(document, b64(gzip.compress(payload))))
    assert outcome.details == {"kind": "other"}
    assert (root / SAVED).read_bytes() == payload
    assert mode_of(root / SAVED) == 0o600


def test_an_old_api_version_has_no_userdata(make_ctx, document):
    outcome = userdata.run(make_ctx(), make_boot(document, b64("x"), api_version="2020-09-01"))
    assert (outcome.status, outcome.reason) == ("skipped", "api-version 2020-09-01 has no userData")


@pytest.mark.parametrize("value", [None, "", "   "])
def test_no_userdata_is_skipped_and_an_earlier_instances_copy_removed(root, make_ctx, document, value):
    (root / "var/lib/bootagent").mkdir(parents=True)
    (root / SAVED).write_text("from the image's build VM")
    outcome = userdata.run(make_ctx(), make_boot(document, value))
    assert (outcome.status, outcome.reason) == ("skipped", "no userData")
    assert not (root / SAVED).exists()
    assert userdata.run(make_ctx(), make_boot(document, value)).changed == []


@pytest.mark.parametrize("value", ["not base64!!", "aGVsbG8", "aGVs bG8=", 12345])
def test_userdata_that_is_not_base64_fails_naming_the_field_only(root, make_ctx, document, value):
    ctx = make_ctx(log=ListLog())
    outcome = userdata.run(ctx, make_boot(document, value))
    assert outcome.status == "failed"
    assert outcome.error.startswith("compute.userData ")
    assert "\n" not in outcome.error and str(value) not in outcome.error
    assert not (root / SAVED).exists()


def test_a_gzip_bomb_is_refused_in_bounded_memory(root, make_ctx, document):
    bomb = gzip.compress(b"\0" * (200 << 20), compresslevel=9)   # 200 MiB of zeros
    encoded = b64(bomb)
    assert len(encoded) < 1 << 20
    tracemalloc.start()
    started = time.monotonic()
    try:
        outcome = userdata.run(make_ctx(), make_boot(document, encoded))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert outcome.status == "failed"
    assert outcome.error == f"compute.userData decompresses to more than {MAX_DECODED} bytes; refused"
    assert peak < 4 * MAX_DECODED + (4 << 20)
    assert time.monotonic() - started < 5
    assert not (root / SAVED).exists()


# --- the script, as the runner calls it after every other step -------------------------


def saved_script(make_ctx, document, body: str, **ctx_args):
    """The context and Boot after `run` saved `body` as this instance's userData script."""
    ctx = make_ctx(log=ListLog(), **ctx_args)
    boot = make_boot(document, b64(body))
    boot.results["userdata"] = userdata.run(ctx, boot)
    return ctx, boot


def test_a_script_is_not_run_when_the_root_is_not_slash(root, make_ctx, document):
    ctx, boot = saved_script(make_ctx, document, f"#!/bin/sh\ntouch {root}/ran\n")
    outcome = userdata.run_script(ctx, boot)
    assert outcome.status == "changed"
    assert (outcome.details["script"], outcome.details["script_reason"]) == ("skipped", "root is not /")
    assert not (root / "ran").exists()


@pytest.mark.parametrize("ctx_args, reason", [({"dry_run": True}, "dry run"),
                                              ({"config": {"userdata": {"run_scripts": False}}},
                                               "userdata.run_scripts is false")])
def test_a_script_is_not_run_in_dry_run_or_when_scripts_are_off(root, make_ctx, document, ctx_args, reason):
    ctx, boot = saved_script(make_ctx, document, f"#!/bin/sh\ntouch {root}/ran\n", **ctx_args)
    boot.results["userdata"] = StepResult("changed", details={"kind": "script", "script": "pending"})
    outcome = userdata.run_script(ctx, boot, force_live=True)
    assert (outcome.details["script"], outcome.details["script_reason"]) == ("skipped", reason)
    assert not (root / "ran").exists()


def test_nothing_pending_returns_the_result_as_it_was(make_ctx, document):
    ctx, boot = saved_script(make_ctx, document, "#cloud-config\na: 1\n")
    outcome = userdata.run_script(ctx, boot, force_live=True)
    assert outcome == boot.results["userdata"]


def test_a_script_that_succeeds_saves_its_output_and_logs_its_tail(root, make_ctx, document):
    body = "#!/bin/sh\n# token=TOP-SECRET-IN-USERDATA\necho line one\necho to stderr >&2\nexit 0\n"
    ctx, boot = saved_script(make_ctx, document, body)
    outcome = userdata.run_script(ctx, boot, force_live=True)
    assert outcome.status == "changed", outcome.error
    assert outcome.details["script"] == "exited" and outcome.details["script_exit_status"] == 0
    assert outcome.changed == ["/var/lib/bootagent/user-data", "/var/lib/bootagent/user-data.output"]
    assert (root / OUTPUT).read_bytes() == b"line one\nto stderr\n"
    assert mode_of(root / OUTPUT) == 0o600
    logged = ctx.log.text()
    assert "| line one" in logged and "| to stderr" in logged
    assert "TOP-SECRET" not in logged + json.dumps(outcome.to_json())


def test_a_failing_script_fails_the_step_with_one_line(root, make_ctx, document):
    ctx, boot = saved_script(make_ctx, document, "#!/bin/sh\necho oops\nexit 3\n")
    outcome = userdata.run_script(ctx, boot, force_live=True)
    assert outcome.status == "failed"
    assert outcome.error == ("userData script exited with status 3; its output is in "
                             "/var/lib/bootagent/user-data.output; it does not run again for this instance")
    assert outcome.details["script_exit_status"] == 3
    assert (root / OUTPUT).read_text() == "oops\n"


def test_a_script_that_cannot_start_fails_clearly(root, make_ctx, document):
    ctx, boot = saved_script(make_ctx, document, "#!/nonexistent/interpreter\n")
    outcome = userdata.run_script(ctx, boot, force_live=True)
    assert outcome.status == "failed" and outcome.details["script"] == "not started"
    assert "could not be started: No such file or directory" in outcome.error


def test_the_time_limit_from_the_configuration_kills_a_hanging_script(make_ctx, document):
    ctx, boot = saved_script(make_ctx, document, "#!/bin/sh\necho started\nsleep 600\n",
                             config={"userdata": {"script_timeout": 1}})
    started = time.monotonic()
    outcome = userdata.run_script(ctx, boot, force_live=True)
    assert time.monotonic() - started < 6
    assert outcome.status == "failed" and outcome.details["script"] == "killed"
    assert outcome.error.startswith("userData script was killed after 1 s (userdata.script_timeout)")


# --- the executor itself, with real processes --------------------------------------------


def script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "script"
    path.write_text(body)
    path.chmod(0o700)
    return str(path)


def group_alive(pgid: int) -> bool:
    """A live (not zombie: this sandbox's init reaps slowly) process is in the group."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def test_a_hanging_script_and_its_children_are_killed_at_the_limit(tmp_path):
    started = time.monotonic()
    ran = executor.execute(script(tmp_path, "#!/bin/sh\nsleep 600 &\nsleep 600\n"), 1)
    assert 1 <= time.monotonic() - started < 4
    assert ran.killed_after == 1 and ran.exit_status == -signal.SIGTERM
    time.sleep(0.2)
    assert not group_alive(ran.pgid)


@pytest.mark.parametrize("agent_nice, script_nice", [(-10, 0), (5, 5)])
def test_a_script_runs_at_the_ordinary_priority_not_the_units_raised_one(tmp_path, agent_nice, script_nice):
    # the unit starts the agent at Nice=-10; an admin's drop-in may make it nicer
    path = script(tmp_path, "#!/bin/sh\nnice\n")
    runner = (f"import os; os.setpriority(os.PRIO_PROCESS, 0, {agent_nice}); "
              f"from bootagent import script; print(script.execute({path!r}, 10).output.decode(), end='')")
    done = subprocess.run([sys.executable, "-c", runner], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{script_nice}\n"


def test_a_script_that_ignores_sigterm_gets_sigkill(tmp_path):
    started = time.monotonic()
    ran = executor.execute(script(tmp_path, "#!/bin/sh\ntrap '' TERM\nsleep 600\n"), 1)
    assert time.monotonic() - started < 1 + executor.KILL_GRACE + 2
    assert ran.killed_after == 1 and ran.exit_status == -signal.SIGKILL


def test_a_daemon_holding_the_output_open_does_not_hold_the_run(tmp_path):
    started = time.monotonic()
    ran = executor.execute(script(tmp_path, "#!/bin/sh\necho before\nsleep 60 &\necho after\nexit 0\n"), 30)
    try:
        assert time.monotonic() - started < 4
        assert ran.exit_status == 0 and ran.killed_after is None
        assert ran.output == b"before\nafter\n"
        assert group_alive(ran.pgid)          # the daemon is left running, as the script wanted
    finally:
        os.killpg(ran.pgid, signal.SIGKILL)


def test_megabytes_of_output_are_kept_bounded_head_and_tail(tmp_path):
    body = "#!/bin/sh\necho FIRST\nhead -c 20000000 /dev/zero | tr '\\0' 'x'\necho\necho LAST\nexit 4\n"
    ran = executor.execute(script(tmp_path, body), 60)
    total = len("FIRST\n") + 20_000_000 + len("\nLAST\n")
    assert ran.exit_status == 4
    assert len(ran.output) <= executor.MAX_OUTPUT + 100
    assert ran.output.startswith(b"FIRST\nxxx") and ran.output.endswith(b"xxx\nLAST\n")
    assert ran.dropped == total - executor.MAX_OUTPUT
    assert f"[bootagent: {ran.dropped} bytes of output dropped]".encode() in ran.output


def test_a_start_failure_is_reported_not_raised(tmp_path):
    ran = executor.execute(script(tmp_path, "no shebang, not a binary\n"), 5)
    assert ran.start_error == "Exec format error"


@settings(max_examples=examples(60), deadline=None)
@given(chunks=st.lists(st.binary(max_size=300), max_size=30), limit=st.integers(min_value=4, max_value=800))
def test_bounded_output_keeps_the_exact_head_and_tail(chunks, limit):
    kept = executor.BoundedOutput(limit)
    for chunk in chunks:
        kept.add(chunk)
    everything = b"".join(chunks)
    if len(everything) <= limit:
        assert kept.value() == everything and kept.dropped == 0
    else:
        head, tail = limit - limit // 4, limit // 4
        assert kept.dropped == len(everything) - head - tail
        note = f"\n[bootagent: {kept.dropped} bytes of output dropped]\n".encode()
        assert kept.value() == everything[:head] + note + everything[len(everything) - tail:]


def test_end_to_end_a_script_is_kept_but_not_run_on_a_scratch_root(root, document, tmp_path):
    from conftest import result_json, run_cli

    document["compute"]["userData"] = b64(f"#!/bin/sh\n# TOKEN-IN-USERDATA\ntouch {root}/ran\n")
    (tmp_path / "doc.json").write_text(json.dumps(document))
    done = run_cli("run", "--root", str(root), "--metadata-file", str(tmp_path / "doc.json"))
    assert done.returncode == 0, done.stderr
    step = result_json(root)["steps"]["userdata"]
    assert (step["status"], step["script"], step["script_reason"]) == ("changed", "skipped", "root is not /")
    assert not (root / "ran").exists()
    assert mode_of(root / SAVED) == 0o700
    record = (root / "run/bootagent/result.json").read_text()
    assert "TOKEN-IN-USERDATA" not in done.stdout + done.stderr + record
