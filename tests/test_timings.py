"""Timings: result.json records each step's duration_ms and the fetch's; `bootagent status
--timings` lists them slowest first, and --json carries them. No timed assertion: only
that every duration is there, a whole number of milliseconds, in the order shown."""

from __future__ import annotations

import json
import re

from bootagent import status
from bootagent.steps import ORDER
from conftest import result_json, run_cli


def first_boot(root, fake_imds):
    done = run_cli("run", "--root", str(root), "--imds-url", fake_imds.url, "--timeout", "30")
    assert done.returncode == 0, done.stderr
    return result_json(root)


def test_result_json_has_each_steps_duration_and_the_fetchs(root, fake_imds):
    record = first_boot(root, fake_imds)
    assert isinstance(record["imds"]["duration_ms"], int) and record["imds"]["duration_ms"] >= 0
    assert isinstance(record["duration_ms"], int)
    assert list(record["steps"]) == list(ORDER)
    for name, step in record["steps"].items():
        assert isinstance(step["duration_ms"], int) and step["duration_ms"] >= 0, name
    assert isinstance(record["metadata_env"]["duration_ms"], int)


def test_status_timings_lists_a_real_result_slowest_first(root, fake_imds):
    record = first_boot(root, fake_imds)
    done = run_cli("status", "--root", str(root), "--timings")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "status: ok" and lines[1] == f"run: {record['duration_ms']} ms"
    rows = [re.fullmatch(r"\s+(\d+) ms  (\S+)", line) for line in lines[3:]]
    assert all(rows), lines
    listed = [(row.group(2), int(row.group(1))) for row in rows]
    expected = {"imds": record["imds"]["duration_ms"], "metadata_env": record["metadata_env"]["duration_ms"],
                **{name: step["duration_ms"] for name, step in record["steps"].items()}}
    assert dict(listed) == expected and len(listed) == len(expected)
    assert [ms for _, ms in listed] == sorted((ms for _, ms in listed), reverse=True)


def test_status_timings_json_carries_them(root, fake_imds):
    record = first_boot(root, fake_imds)
    done = run_cli("status", "--root", str(root), "--timings", "--json")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["status"] == "ok" and shown["duration_ms"] == record["duration_ms"]
    assert [t["name"] for t in shown["timings"]] == [name for name, _ in status.timings(record)]
    plain = json.loads(run_cli("status", "--root", str(root), "--json").stdout)
    assert plain["steps"]["users"]["duration_ms"] == record["steps"]["users"]["duration_ms"]


def test_a_failed_run_still_times_the_fetch(root, tmp_path):
    doc = tmp_path / "doc.json"
    doc.write_text("[]")
    assert run_cli("run", "--root", str(root), "--metadata-file", str(doc)).returncode == 2
    done = run_cli("status", "--root", str(root), "--timings")
    assert done.returncode == 1
    assert re.search(r"^\s+\d+ ms  imds$", done.stdout, re.M) and "host_keys" in done.stdout


def test_a_result_without_timings_says_so():
    text = status._timings_text({"status": "ok", "steps": {"users": {"status": "changed"}}})
    assert text == "status: ok\nno timings in this result (written by an agent that kept none)\n"
    assert status.timings({"imds": {"duration_ms": 5}, "steps": {"a": {"duration_ms": 5},
                                                                "b": {"duration_ms": 9}}}) == \
        [("b", 9), ("a", 5), ("imds", 5)]


def test_status_not_finished_with_timings_is_exit_3(root):
    done = run_cli("status", "--root", str(root), "--timings")
    assert done.returncode == 3 and "not finished" in done.stdout
