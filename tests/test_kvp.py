"""The Hyper-V KVP provisioning report: the pool format, appends, and what the value may hold."""

from __future__ import annotations

import os
import socket
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_report import OK_STEPS, make_boot, on_azure

from bootagent import __version__
from bootagent.platform import kvp
from bootagent.state import InstanceState
from bootagent.steps import StepResult, report
from conftest import b64, examples

WALL = 1700000000.0  # 2023-11-14T22:13:20Z


def read_pool(root):
    """An independent reader of the pool format: 512-byte key, 2048-byte value, NUL padded."""
    data = (root / "var/lib/hyperv/.kvp_pool_1").read_bytes()
    assert len(data) % 2560 == 0
    records = []
    for start in range(0, len(data), 2560):
        key, value = data[start:start + 512], data[start + 512:start + 2560]
        key_text, value_text = key.rstrip(b"\0"), value.rstrip(b"\0")
        assert b"\0" not in key_text and b"\0" not in value_text  # one string, then padding only
        assert key[-1] == 0 and value[-1] == 0                      # always NUL-terminated
        records.append((key_text.decode(), value_text.decode()))
    return records


def fields(value: str) -> dict:
    return dict(part.split("=", 1) for part in value.split("|"))


def test_record_round_trips_key_value_and_padding():
    record = kvp.encode_record("PROVISIONING_REPORT", "result=success|vm_id=abc")
    assert len(record) == 2560
    assert record[:19] == b"PROVISIONING_REPORT" and set(record[19:512]) == {0}
    assert record[512:536] == b"result=success|vm_id=abc" and set(record[536:]) == {0}
    assert kvp.decode_records(record * 2) == [("PROVISIONING_REPORT", "result=success|vm_id=abc")] * 2


def test_long_value_is_truncated_at_a_character_boundary_with_a_nul_left():
    record = kvp.encode_record("K", "é" * 3000)
    value = record[512:]
    assert len(value) == 2048 and value[-1] == 0
    text = value.rstrip(b"\0").decode("utf-8")  # no broken multibyte sequence
    assert text == "é" * 1023


@pytest.mark.parametrize("key", ["", "k" * 512, "a\0b", "é" * 256])
def test_unusable_keys_are_refused(key):
    with pytest.raises(ValueError):
        kvp.encode_record(key, "v")


def test_decode_refuses_a_partial_record():
    with pytest.raises(ValueError, match="whole"):
        kvp.decode_records(b"\0" * 2561)


@settings(max_examples=examples(200), deadline=None)
@given(value=st.text())
def test_any_value_encodes_to_one_record_and_reads_back_as_its_prefix(value):
    record = kvp.encode_record(kvp.REPORT_KEY, value)
    assert len(record) == kvp.RECORD_SIZE
    [(key, read)] = kvp.decode_records(record)
    assert key == kvp.REPORT_KEY
    assert value.replace("\0", " ").startswith(read)


def test_a_lone_surrogate_is_replaced_not_a_crash():
    [(key, read)] = kvp.decode_records(kvp.encode_record("K", "vm_id=\ud800x"))
    assert read == "vm_id=?x"


def test_report_value_sanitizes_the_reason_and_keeps_the_other_fields():
    value = kvp.report_value(False, "vm|1", "users: bad|name\nagent=evil", "2023-11-14T22:13:20Z")
    parts = fields(value)
    assert list(parts) == ["result", "reason", "agent", "vm_id", "timestamp"]
    assert parts["result"] == "error" and "|" not in parts["reason"] and "\n" not in parts["reason"]
    assert parts["agent"] == f"bootagent/{__version__}" and parts["vm_id"] == "vm 1"


def test_a_huge_reason_is_shortened_not_the_record_tail():
    value = kvp.report_value(False, "vm-1", "x" * 5000, "2023-11-14T22:13:20Z")
    assert len(value.encode()) <= 2047
    assert value.endswith("|vm_id=vm-1|timestamp=2023-11-14T22:13:20Z")


def test_report_appends_after_other_writers_records(root, make_ctx):
    pool = root / "var/lib/hyperv/.kvp_pool_1"
    pool.parent.mkdir(parents=True)
    other = kvp.encode_record("OTHER_WRITER", "keep me")
    pool.write_bytes(other)
    ctx = make_ctx(wall=lambda: WALL)
    assert kvp.report(ctx, True, "6FCE-1", None) == "/var/lib/hyperv/.kvp_pool_1"
    records = read_pool(root)
    assert records[0] == ("OTHER_WRITER", "keep me")
    assert pool.read_bytes()[:2560] == other
    assert records[1] == ("PROVISIONING_REPORT", f"result=success|agent=bootagent/{__version__}"
                                                 "|vm_id=6FCE-1|timestamp=2023-11-14T22:13:20Z")


def test_no_kvp_directory_means_no_record(root, make_ctx):
    assert kvp.report(make_ctx(), True, "vm", None) is None
    assert not (root / "var/lib/hyperv").exists()


def test_report_step_writes_the_outcome_to_kvp_without_user_data(root, make_ctx, fake_imds, document):
    on_azure(root)
    (root / "var/lib/hyperv").mkdir(parents=True)
    secret = "s3cret-token-value"
    document["compute"]["userData"] = b64(f"#cloud-config\napi_key: {secret}\n")
    ctx = make_ctx(config={"azure": {"wireserver": fake_imds.url}}, deadline=time.monotonic() + 10,
                   wall=lambda: WALL)
    results = dict(OK_STEPS, hostname=StepResult.failed(f"userData hostname is invalid ({secret})"))
    outcome = report.run(ctx, make_boot(document, results))

    assert outcome.status == "changed" and outcome.changed == ["/var/lib/hyperv/.kvp_pool_1"]
    [(key, value)] = read_pool(root)
    parts = fields(value)
    assert key == "PROVISIONING_REPORT" and parts["result"] == "error"
    assert parts["reason"].startswith("failed steps: hostname")
    assert parts["vm_id"] == document["compute"]["vmId"]
    assert parts["timestamp"] == "2023-11-14T22:13:20Z"
    assert secret not in value


def test_no_kvp_record_when_no_report_is_due(root, make_ctx, fake_imds, document):
    on_azure(root)
    (root / "var/lib/hyperv").mkdir(parents=True)
    ctx = make_ctx(config={"azure": {"wireserver": fake_imds.url}}, deadline=time.monotonic() + 10)
    boot = make_boot(document, steps={"report_ready": {"ok": True, "delivered": "Ready"}})
    assert report.run(ctx, boot).status == "unchanged"
    assert not (root / "var/lib/hyperv/.kvp_pool_1").exists()


def test_a_symlinked_kvp_directory_is_refused_and_the_report_still_goes(root, make_ctx, fake_imds,
                                                                        document, tmp_path):
    on_azure(root)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, root / "var/lib/hyperv")
    ctx = make_ctx(config={"azure": {"wireserver": fake_imds.url}}, deadline=time.monotonic() + 10)
    outcome = report.run(ctx, make_boot(document))
    assert outcome.status == "changed" and outcome.changed == []
    assert list(elsewhere.iterdir()) == []
    assert len(fake_imds.health_reports) == 1


def test_dry_run_appends_nothing(root, make_ctx, fake_imds, document):
    on_azure(root)
    (root / "var/lib/hyperv").mkdir(parents=True)
    ctx = make_ctx(config={"azure": {"wireserver": fake_imds.url}}, dry_run=True)
    report.run(ctx, make_boot(document))
    assert not (root / "var/lib/hyperv/.kvp_pool_1").exists()
    assert any(path == "/var/lib/hyperv/.kvp_pool_1" for path, _ in ctx.changes)


def test_a_wireserver_still_unreachable_adds_no_second_kvp_record(root, make_ctx, document):
    on_azure(root)
    (root / "var/lib/hyperv").mkdir(parents=True)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    state = InstanceState({"steps": {}})
    for _ in range(2):  # two boots of one instance, the second with the first's memory
        ctx = make_ctx(config={"azure": {"wireserver": f"http://127.0.0.1:{port}"}},
                       deadline=time.monotonic() + 0.5, wall=lambda: WALL)
        boot = make_boot(document, steps=state.data["steps"])
        assert report.run(ctx, boot).status == "failed"
        state = boot.state
    assert [key for key, _ in read_pool(root)] == ["PROVISIONING_REPORT"]
    assert not state.done("report_ready")  # the wireserver is still due

    failed = dict(OK_STEPS, users=StepResult.failed("useradd failed"))  # a new outcome: told again
    ctx = make_ctx(config={"azure": {"wireserver": f"http://127.0.0.1:{port}"}},
                   deadline=time.monotonic() + 0.5, wall=lambda: WALL)
    report.run(ctx, make_boot(document, failed, steps=state.data["steps"]))
    assert [fields(value)["result"] for _, value in read_pool(root)] == ["success", "error"]
