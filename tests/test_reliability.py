"""Reliability (issue 8, SPEC "Every file the agent writes is written atomically"): a run
killed at any write point leaves every file old or new and the next run finishes the job;
a full disk, a read-only /etc and a missing or failing useradd fail only their steps; two
runs at once are serialised; hostile documents end in an exit code, never a traceback.

Everything goes through the installed `bootagent run` on scratch roots, against the
project's fake IMDS and wireserver on loopback, started once per module.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings

from bootagent.fake.server import FakeImds, default_document
from conftest import BOOTAGENT, examples, result_json, run_cli
from reliability import machine
from reliability.jail import JAIL_CONFIG, jail_root, run_live
from reliability.scenario import copy_root, scenario_root
from reliability.snapshot import judge_killed, judge_recovered, snapshot, temp_files
from reliability.strategies import hostile_documents

MIN_KILL_POINTS = 50     # a first boot of the scenario has about 70; fewer means lost seams
SWEEP_WORKERS = 3


@pytest.fixture(scope="module")
def fake():
    """One fake IMDS + wireserver for the module; no rate limit (the sweep boots ~3 times a
    second, and what is tested here is not the client's backoff)."""
    with FakeImds(default_document(), rate_limit=0) as server:
        yield server


@pytest.fixture(scope="module")
def image(fake, tmp_path_factory) -> Path:
    """The pristine scenario root; tests copy it, never change it."""
    return scenario_root(tmp_path_factory.mktemp("image") / "root", fake.url)


@pytest.fixture(scope="module")
def uninterrupted(fake, image, tmp_path_factory) -> tuple[dict, dict]:
    """(the image's snapshot, the snapshot after one uninterrupted first boot of a copy)."""
    old = snapshot(image)
    whole = copy_root(image, tmp_path_factory.mktemp("uninterrupted") / "root")
    done = boot(whole, fake)
    assert done.returncode == 0, done.stderr
    return old, snapshot(whole)


def boot(root: Path, fake, *extra: str, env: dict | None = None):
    return run_cli("run", "--root", str(root), "--imds-url", fake.url, *extra, env=env, timeout=120)


def boot_alone(root: Path, fake, env: dict) -> subprocess.CompletedProcess:
    """A boot in a session of its own; once it ends, whatever it started (useradd,
    ssh-keygen) is waited for, so that a snapshot judges the agent's own writes."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BOOTAGENT_")}
    full_env.update(env)
    argv = [BOOTAGENT, "run", "--root", str(root), "--imds-url", fake.url]
    agent = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env,
                             start_new_session=True)
    stdout, stderr = agent.communicate(timeout=120)
    machine.wait_for_group(agent.pid)
    return subprocess.CompletedProcess(argv, agent.returncode, stdout, stderr)


def steps(root: Path) -> dict[str, str]:
    return {name: step["status"] for name, step in result_json(root)["steps"].items()}


def errors(root: Path) -> dict[str, str]:
    return {name: step["error"] for name, step in result_json(root)["steps"].items() if step["error"]}


def one_line_per_failure(stderr: str) -> None:
    """What a user sees: every line the agent's own, no traceback, no internal error."""
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    assert all(line.startswith("bootagent: ") for line in stderr.splitlines()), stderr


@contextmanager
def serving(fake, document: dict):
    saved = fake.document
    fake.document = document
    try:
        yield
    finally:
        fake.document = saved


@pytest.fixture
def mounts():
    machine.require_root("mounting a full or read-only file system")
    made = machine.Mounts()
    try:
        yield made
    finally:
        made.unmount_all()


# ---- 1. crash consistency at every write point ------------------------------------

@pytest.mark.parametrize("dmi", [False, True], ids=["host keys after the fetch", "host keys beside the fetch"])
def test_a_run_killed_at_any_write_point_leaves_old_or_new_and_the_next_run_finishes(
        dmi, fake, image, tmp_path, capsys):
    """Count the write points N of a full first boot, then for each k in 1..N boot a fresh
    copy killed (SIGKILL, through the writer's seam) at point k: every file must be old or
    new, no temporary file visible under a name other programs read; the next run exits 0
    and leaves the root an uninterrupted run leaves. With a DMI UUID (every Azure VM) the
    host keys are made on a thread beside the fetch, so that interleaving is swept too."""
    base = copy_root(image, tmp_path / "base")
    if dmi:
        (base / "sys/class/dmi/id").mkdir(parents=True)
        (base / "sys/class/dmi/id/product_uuid").write_text("6F0B7C1E-2A3D-4E5F-8A9B-0C1D2E3F4A5B\n")
    old = snapshot(base)
    whole = copy_root(base, tmp_path / "whole")
    assert snapshot(whole) == old
    count_file = tmp_path / "write-points"
    done = boot(whole, fake, env={"BOOTAGENT_FAULT_COUNT_FILE": str(count_file)})
    assert done.returncode == 0, done.stderr
    status = steps(whole)
    assert status.pop("network") == "skipped"        # the image has no network backend
    assert status.pop("customdata") == "skipped"     # no provisioning media
    assert status.pop("resource_disk") == "skipped"  # a root that is not / has no disks
    assert set(status) == {"hostname", "users", "ssh_keys", "host_keys", "userdata", "templates",
                           "report_ready"}
    assert set(status.values()) == {"changed"}, result_json(whole)
    new = snapshot(whole)
    points = int(count_file.read_text())
    assert points >= MIN_KILL_POINTS, f"only {points} write points in a full first boot"

    def kill_at(k: int) -> tuple[int, list[str], int]:
        root = copy_root(base, tmp_path / f"k{k}")
        killed = boot_alone(root, fake, env={"BOOTAGENT_FAULT_KILL_AT": str(k)})
        if killed.returncode != -signal.SIGKILL:
            return k, [f"not killed (exit {killed.returncode}): {killed.stderr[-300:]}"], 0
        after_kill = snapshot(root)
        problems = [f"after the kill: {p}" for p in judge_killed(old, new, after_kill)]
        again = boot(root, fake)
        if again.returncode != 0:
            problems.append(f"the next run exited {again.returncode}: {again.stderr.strip()[-500:]}")
        problems += [f"after the next run: {p}" for p in judge_recovered(old, new, snapshot(root))]
        shutil.rmtree(root)
        return k, problems, len(temp_files(after_kill))

    with ThreadPoolExecutor(SWEEP_WORKERS) as pool:
        outcomes = list(pool.map(kill_at, range(1, points + 1)))
    failures = [f"killed at write point {k}: {p}" for k, problems, _ in outcomes for p in problems]
    left_temps = sum(1 for _, _, temps in outcomes if temps)
    with capsys.disabled():
        print(f"\ncrash consistency ({'DMI UUID' if dmi else 'no DMI UUID'}): {points} write points of "
              f"a first boot, each killed with SIGKILL; {left_temps} kills left a hidden temporary file, "
              "every one removed by the next run")
    assert not failures, "\n".join(failures[:40])


def test_a_run_killed_while_making_host_keys_leaves_no_key_material_outside_the_root(
        fake, image, uninterrupted, tmp_path):
    """ssh-keygen writes into a private work directory. A run killed (its whole process
    group, as systemd stops a unit) while the keys are being made must not leave that
    directory, private keys in it, outside the root; the next run removes it and finishes."""
    root = copy_root(image, tmp_path / "root")
    scratch_tmp, bin_dir, made = tmp_path / "tmp", tmp_path / "bin", tmp_path / "keys-made"
    scratch_tmp.mkdir()
    bin_dir.mkdir()
    (bin_dir / "ssh-keygen").write_text(
        f'#!/bin/sh\n/usr/bin/ssh-keygen "$@"\nstatus=$?\ntouch "{made}"\n'
        "sleep 60  # holds the agent inside key generation until the test kills it\nexit $status\n")
    os.chmod(bin_dir / "ssh-keygen", 0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOTAGENT_")}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", TMPDIR=str(scratch_tmp))
    agent = subprocess.Popen([BOOTAGENT, "run", "--root", str(root), "--imds-url", fake.url],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not made.exists() and time.monotonic() < deadline and agent.poll() is None:
            time.sleep(0.02)
        assert made.exists(), "ssh-keygen never ran"
    finally:
        os.killpg(agent.pid, signal.SIGKILL)
        agent.wait()
    assert list(scratch_tmp.iterdir()) == []
    again = boot(root, fake)
    assert again.returncode == 0, again.stderr
    old, new = uninterrupted
    assert judge_recovered(old, new, snapshot(root)) == []


# ---- 2. faults of the machine -----------------------------------------------------

ETC_STEPS_FAIL = {"hostname", "users", "ssh_keys", "host_keys", "templates"}


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_a_full_or_read_only_etc_fails_its_steps_clearly_keeps_every_old_file_and_the_rest_runs(
        fault, fake, image, uninterrupted, mounts, tmp_path):
    """/etc a full tmpfs (ENOSPC) or a read-only bind mount: every step that writes there
    fails with one line naming the file and the cause, nothing under /etc changes, userData
    is still kept and NotReady reported; once the disk is fixed the next run finishes."""
    root = copy_root(image, tmp_path / "root")
    if fault == "full":
        pristine = copy_root(root / "etc", tmp_path / "etc-copy")
        mounts.tmpfs(root / "etc", "2m")
        subprocess.run(["cp", "-a", f"{pristine}/.", str(root / "etc")], check=True)
        assert machine.fill(root / "etc") > 0
        cause = "No space left on device"
    else:
        mounts.read_only(root / "etc")
        cause = "Read-only file system"
    before = snapshot(root / "etc")
    done = boot(root, fake)
    assert done.returncode == 1, done.stderr
    one_line_per_failure(done.stderr)
    after = snapshot(root / "etc")
    assert {p: after.get(p) for p in before} == before       # every old file intact
    assert not temp_files(after)
    # a full tmpfs still has room for an inode: the empty /etc/profile.d the templates step
    # made (with its final mode, atomically) and useradd's empty lock file
    assert set(after) - set(before) <= ({"profile.d", ".pwd.lock"} if fault == "full" else set())
    status = steps(root)
    assert {name for name, value in status.items() if value == "failed"} == ETC_STEPS_FAIL, status
    assert status["userdata"] == "changed" and status["report_ready"] == "changed"
    why = errors(root)
    assert f"cannot write /etc/hostname: {cause}" in why["hostname"]
    assert f"/etc/ssh/ssh_host_ed25519_key.pub: {cause}" in why["host_keys"]
    assert f"cannot write /etc/motd: {cause}" in why["templates"]
    assert "useradd failed for azureuser" in why["users"]
    assert "could not be had" in why["ssh_keys"]
    for name in ETC_STEPS_FAIL:
        assert f"bootagent: {name}: failed: {why[name]}" in done.stderr.splitlines()

    mounts.unmount_all()                                     # the disk is fixed
    again = boot(root, fake)
    assert again.returncode == 0, again.stderr
    old, new = uninterrupted
    assert judge_recovered(old, new, snapshot(root)) == []


def test_a_full_disk_under_one_template_fails_only_that_template(fake, image, mounts, tmp_path):
    root = copy_root(image, tmp_path / "root")
    target = root / "etc/profile.d"
    target.mkdir()
    mounts.tmpfs(target, "64k")
    (target / "azure-tags.sh").write_bytes(b"# the old tags\n")
    machine.fill(target)
    before = snapshot(target)
    done = boot(root, fake)
    assert done.returncode == 1, done.stderr
    one_line_per_failure(done.stderr)
    assert snapshot(target) == before
    status = steps(root)
    assert status.pop("templates") == "failed"
    assert status.pop("network") == "skipped"
    assert status.pop("customdata") == "skipped"                 # no provisioning media
    assert status.pop("resource_disk") == "skipped"  # a root that is not / has no disks
    assert set(status.values()) == {"changed"}, status
    assert errors(root)["templates"] == (
        "templates: environment.j2: cannot write /etc/profile.d/azure-tags.sh: No space left on device; "
        "check free space and that the file system is writable")
    assert (root / "etc/motd").read_bytes().startswith(b"Welcome to demo-vm-01")  # the other template


def test_a_read_only_home_fails_ssh_keys_with_one_clear_line(fake, image, mounts, tmp_path):
    root = copy_root(image, tmp_path / "root")
    with open(root / "etc/passwd", "a") as passwd:
        passwd.write("azureuser:x:1000:1000::/home/azureuser:/bin/bash\n")
    with open(root / "etc/group", "a") as group:
        group.write("azureuser:x:1000:\n")
    (root / "home/azureuser").mkdir()
    os.chown(root / "home/azureuser", 1000, 1000)
    mounts.read_only(root / "home")
    done = boot(root, fake)
    assert done.returncode == 1, done.stderr
    one_line_per_failure(done.stderr)
    assert steps(root)["ssh_keys"] == "failed"
    assert result_json(root)["steps"]["users"]["changed"] == ["/etc/sudoers.d/90-bootagent-users"]
    assert "cannot make directory /home/azureuser/.ssh: Read-only file system" in errors(root)["ssh_keys"]
    assert list((root / "home/azureuser").iterdir()) == []


def test_a_state_that_cannot_be_saved_is_the_runs_error_and_status_tells_it(fake, image, mounts, tmp_path):
    """/var/lib/bootagent full: the steps ran, but the instance state could not be saved:
    result.json still records the run (its error says so), exit 1, and `status --wait`
    returns at once instead of waiting out its timeout (SPEC "Hardening")."""
    root = copy_root(image, tmp_path / "root")
    state_dir = root / "var/lib/bootagent"
    state_dir.mkdir(parents=True, exist_ok=True)
    pristine = copy_root(state_dir, tmp_path / "state-copy")
    mounts.tmpfs(state_dir, "1m")
    subprocess.run(["cp", "-a", f"{pristine}/.", str(state_dir)], check=True)
    (state_dir / "lock").touch()
    assert machine.fill(state_dir) > 0
    done = boot(root, fake)
    assert done.returncode == 1, done.stderr
    one_line_per_failure(done.stderr)
    record = result_json(root)
    assert record["status"] == "error"
    assert record["error"].startswith("cannot save the instance state: cannot write "
                                      "/var/lib/bootagent/instance.json: No space left on device")
    assert steps(root)["hostname"] == "changed"
    assert not (state_dir / "instance.json").exists()
    status = run_cli("status", "--root", str(root), "--wait", "--timeout", "600")
    assert status.returncode == 1 and f"error: {record['error']}" in status.stdout


def test_a_read_only_root_is_one_clear_line_and_exit_1(fake, image, mounts, tmp_path):
    root = copy_root(image, tmp_path / "root")
    mounts.read_only(root)
    before = snapshot(root)
    done = boot(root, fake)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "bootagent: error: cannot take the run lock /var/lib/bootagent/lock: Read-only file system; "
        "check free space and that the file system is writable"]
    assert snapshot(root) == before


def test_useradd_missing_fails_users_and_ssh_keys_saying_so_and_the_rest_runs(fake, image, tmp_path):
    machine.require_root("hiding useradd in a private mount namespace")
    root = copy_root(image, tmp_path / "root")
    passwd = (root / "etc/passwd").read_bytes()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOTAGENT_")}
    done = subprocess.run(machine.without_program("/usr/sbin", [BOOTAGENT, "run", "--root", str(root),
                                                                "--imds-url", fake.url]),
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 1, done.stderr
    one_line_per_failure(done.stderr)
    status, why = steps(root), errors(root)
    assert status["users"] == "failed" and status["ssh_keys"] == "failed"
    assert why["users"].startswith("useradd not found (searched ")
    assert why["users"].endswith("install the distribution's passwd package")
    assert why["ssh_keys"] == f"user compute.osProfile.adminUsername could not be had: {why['users']}"
    assert {status[n] for n in ("hostname", "host_keys", "userdata", "templates", "report_ready")} == {"changed"}
    assert (root / "etc/passwd").read_bytes() == passwd
    assert not (root / "home/azureuser").exists()


def test_useradd_failing_fails_users_and_ssh_keys_with_its_own_words(fake, image, tmp_path):
    root = copy_root(image, tmp_path / "root")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "useradd").write_text("#!/bin/sh\necho 'useradd: cannot lock /etc/passwd; try again later.' >&2\n"
                                     "exit 1\n")
    os.chmod(bin_dir / "useradd", 0o755)
    done = boot(root, fake, env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert done.returncode == 1, done.stderr
    one_line_per_failure(done.stderr)
    why = errors(root)
    assert why["users"] == "useradd failed for azureuser (exit 1): cannot lock /etc/passwd; try again later."
    assert why["ssh_keys"] == f"user compute.osProfile.adminUsername could not be had: {why['users']}"
    assert set(errors(root)) == {"users", "ssh_keys"}
    assert not (root / "home/azureuser").exists()


# ---- 3. racing runs ---------------------------------------------------------------

@pytest.mark.parametrize("attempt", range(3))
def test_two_runs_at_once_are_serialised_both_exit_0_and_the_result_is_one_runs(
        attempt, fake, image, uninterrupted, tmp_path):
    root = copy_root(image, tmp_path / "root")
    reports = len(fake.health_reports)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOTAGENT_")}
    argv = [BOOTAGENT, "run", "--root", str(root), "--imds-url", fake.url]
    both = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for _ in range(2)]
    outcomes = [(run.wait(timeout=120), run.communicate()[1]) for run in both]
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    for _, stderr in outcomes:
        one_line_per_failure(stderr)
    old, new = uninterrupted
    assert judge_recovered(old, new, snapshot(root)) == []
    # serialised: the second saw the first's work done, so one report, one KVP record
    assert len(fake.health_reports) == reports + 1
    assert (root / "var/lib/hyperv/.kvp_pool_1").stat().st_size == 2560
    assert sorted(stderr.count(": changed") > 0 for _, stderr in outcomes) == [False, True]


def test_a_lock_held_by_a_run_that_is_killed_never_blocks_the_next(image, tmp_path):
    """A runs and holds the lock while IMDS hangs; B waits for it; A is SIGKILLed; B
    then finishes at once. (A killed run's lock file stays; the kernel dropped its flock.)"""
    root = copy_root(image, tmp_path / "root")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOTAGENT_")}
    with FakeImds(default_document(), faults="hang", rate_limit=0) as slow:
        argv = [BOOTAGENT, "run", "--root", str(root), "--imds-url", slow.url, "--timeout", "60"]
        first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            deadline = time.monotonic() + 30
            while not slow.requests and time.monotonic() < deadline:
                time.sleep(0.02)
            assert slow.requests, "the first run never asked IMDS"
            second = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            time.sleep(1.0)
            assert second.poll() is None, "the second run did not wait for the first one's lock"
            assert len(slow.requests) == 1
        finally:
            first.kill()
            first.wait()
        started = time.monotonic()
        code = second.wait(timeout=60)
        _, stderr = second.communicate()
    assert code == 0, stderr
    assert time.monotonic() - started < 10
    assert (root / "var/lib/bootagent/lock").exists()
    assert result_json(root)["status"] == "ok"


# ---- 5. hostile documents end to end ----------------------------------------------

MANAGED = re.compile(r"^(etc/(hostname|hosts|motd|\.pwd\.lock|(passwd|shadow|group|gshadow|subuid|subgid)-?"
                     r"|profile\.d|profile\.d/azure-tags\.sh|ssh/ssh_host_[a-z0-9]+_key(\.pub)?"
                     r"|sudoers\.d/90-bootagent-users)"
                     r"|home/.+|root/.+|var/lib/bootagent/.+|run/bootagent|run/bootagent/.+"
                     r"|var/lib/bootagent|var/lib/hyperv/\.kvp_pool_1)$")


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(document=hostile_documents())
def test_hostile_documents_end_in_an_exit_code_never_a_traceback_nor_a_stray_or_torn_file(
        fake, image, tmp_path_factory, document):
    root = copy_root(image, tmp_path_factory.mktemp("hostile") / "root")
    before = snapshot(root)
    with serving(fake, document):
        done = boot(root, fake, "--timeout", "2")
    assert done.returncode in (0, 1, 2, 3), done.stderr
    event(f"exit {done.returncode}")
    one_line_per_failure(done.stderr)
    after = snapshot(root)
    touched = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    assert not temp_files(after), temp_files(after)
    assert not {p for p in touched if not MANAGED.match(p)}, sorted(touched)
    if done.returncode != 3:
        json.loads((root / "run/bootagent/result.json").read_text())


# ---- 6. userData scripts, live, in a throw-away system ---------------------------------

SCRIPTS = {
    "hangs": ("#!/bin/sh\necho started\nsleep 600\n", "failed"),
    "forks a daemon": ("#!/bin/sh\nsleep 600 > /dev/null 2>&1 &\nsleep 600 &\necho forked\nexit 0\n", "changed"),
    "prints megabytes": ("#!/bin/sh\nhead -c 6000000 /dev/zero | tr '\\\\0' 'x'\necho\necho the end\nexit 3\n",
                         "failed"),
}


@pytest.fixture
def jail(tmp_path):
    machine.require_root("a chroot in private namespaces")
    root = jail_root(tmp_path / "jail")
    (root / "etc/ssh/sshd_config").write_text("HostKey /etc/ssh/ssh_host_ed25519_key\n")
    (root / "etc/bootagent/bootagent.yaml").write_text("userdata:\n  script_timeout: 2\n" + JAIL_CONFIG)
    return root


@pytest.mark.parametrize("kind", SCRIPTS)
def test_a_userdata_script_is_bounded_in_time_and_output_and_leaves_the_other_results_alone(
        kind, fake, jail):
    script, status = SCRIPTS[kind]
    document = default_document()
    document["compute"]["userData"] = base64.b64encode(script.encode()).decode()
    with serving(fake, document):
        started = time.monotonic()
        done = run_live(jail, "--imds-url", fake.url)
        seconds = time.monotonic() - started
    one_line_per_failure(done.stderr)
    record = result_json(jail)
    others = {name: step["status"] for name, step in record["steps"].items() if name != "userdata"}
    assert others == {"hostname": "changed", "users": "changed", "ssh_keys": "changed", "host_keys": "changed",
                      "network": "skipped", "resource_disk": "skipped", "customdata": "skipped",
                      "templates": "skipped", "report_ready": "skipped"}
    userdata = record["steps"]["userdata"]
    assert userdata["status"] == status, userdata
    assert done.returncode == (0 if status == "changed" else 1), done.stderr
    output = (jail / "var/lib/bootagent/user-data.output").read_bytes()
    if kind == "hangs":
        assert userdata["script"] == "killed" and "script_timeout" in userdata["error"]
        assert output == b"started\n"
        assert seconds < 2 + 2 + 1 + 10                      # limit, SIGTERM grace, output grace, boot
    elif kind == "forks a daemon":
        assert userdata["script_exit_status"] == 0 and output == b"forked\n"
        assert seconds < 15
    else:
        assert userdata["script_exit_status"] == 3 and "exited with status 3" in userdata["error"]
        assert len(output) <= (1 << 20) + 100 and output.endswith(b"\nthe end\n")
        assert userdata["script_output_dropped"] == len("x" * 6_000_000 + "\n" + "the end\n") - (1 << 20)
        assert max(len(line) for line in done.stderr.splitlines()) < 400
        assert len(done.stderr) < 20_000


def test_a_userdata_script_skipped_by_configuration_runs_once_scripts_are_enabled(fake, jail):
    """userdata.run_scripts false: the script is skipped and the step not recorded as done,
    so turning scripts on runs it at the next boot, and once only (SPEC "Hardening")."""
    document = default_document()
    script = "#!/bin/sh\necho ran >> /var/lib/script-runs\n"
    document["compute"]["userData"] = base64.b64encode(script.encode()).decode()
    config = jail / "etc/bootagent/bootagent.yaml"
    with serving(fake, document):
        config.write_text("userdata:\n  run_scripts: false\n" + JAIL_CONFIG)
        skipped = run_live(jail, "--imds-url", fake.url)
        assert skipped.returncode == 0, skipped.stderr
        step = result_json(jail)["steps"]["userdata"]
        assert (step["script"], step["script_reason"]) == ("skipped", "userdata.run_scripts is false")
        assert not (jail / "var/lib/script-runs").exists()
        config.write_text("userdata:\n  run_scripts: true\n" + JAIL_CONFIG)
        enabled = run_live(jail, "--imds-url", fake.url)
        again = run_live(jail, "--imds-url", fake.url)
    assert enabled.returncode == 0 and again.returncode == 0, enabled.stderr + again.stderr
    assert (jail / "var/lib/script-runs").read_text() == "ran\n"


def test_a_userdata_script_runs_once_per_instance_whatever_its_exit_status(fake, jail):
    document = default_document()
    script = "#!/bin/sh\necho ran >> /var/lib/script-runs\nexit 7\n"
    document["compute"]["userData"] = base64.b64encode(script.encode()).decode()
    with serving(fake, document):
        first = run_live(jail, "--imds-url", fake.url)
        second = run_live(jail, "--imds-url", fake.url)
    assert first.returncode == 1 and second.returncode == 0, second.stderr
    assert (jail / "var/lib/script-runs").read_text() == "ran\n"
    assert result_json(jail)["steps"]["userdata"]["status"] == "unchanged"
