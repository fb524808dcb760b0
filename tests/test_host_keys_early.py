"""`bootagent host-keys`, the early unit's command, and how a run shares the step with it.

Real parts: the installed command, real ssh-keygen, a real read-only mount (a tmpfs
remounted read-only, then read-write, as systemd-remount-fs does at boot), a real flock.
"""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_host_keys import UUID, pair_is_valid, set_dmi

from bootagent import writer
from bootagent.context import Context
from bootagent.errors import StepError
from conftest import background, build_root, lock_held, result_json, run_cli

ED25519 = "etc/ssh/ssh_host_ed25519_key"
ECDSA = "etc/ssh/ssh_host_ecdsa_key"


def two_keys_no_rsa(root: Path) -> None:
    """sshd loads an Ed25519 and an ECDSA key: quick to make, and what the tests look for."""
    (root / "etc/ssh/sshd_config").write_text(f"HostKey /{ED25519}\nHostKey /{ECDSA}\n")


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@contextmanager
def mounted_tmpfs(where: Path):
    where.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(where)],
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.skip(f"cannot mount a tmpfs here ({err}); these tests need root")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)


def remount(where: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(where)], check=True, capture_output=True)


def test_on_a_read_only_root_keys_are_made_in_run_and_installed_once_it_turns_writable(tmp_path):
    # The boot's layout: the root (here a tmpfs) mounted read-only, /run a tmpfs of its own.
    with mounted_tmpfs(tmp_path / "root") as root:
        build_root(root)
        two_keys_no_rsa(root)
        set_dmi(root, UUID)
        with mounted_tmpfs(root / "run"):
            remount(root, "ro")
            with background("host-keys", "--root", str(root)) as command:
                # ssh-keygen's work is done while the root is read-only (it works under /run)
                said = command.stderr.readline()
                assert said == ("bootagent: host_keys: 2 SSH host keys made; "
                                "waiting for /etc/ssh to be mounted read-write\n"), said
                time.sleep(0.3)
                assert command.poll() is None
                assert not (root / ED25519).exists() and not (root / ECDSA).exists()
                assert not list(root.glob("etc/ssh/.*")), "a temp file on a read-only root?"

                remount(root, "rw")
                out, err = command.communicate(timeout=60)
            assert command.returncode == 0, err
            for key in (ED25519, ECDSA):
                assert pair_is_valid(root / key)
                assert (root / key).stat().st_mode & 0o777 == 0o600
            assert (root / "var/lib/bootagent/host-keys-instance").read_text() == f"dmi:{UUID}\n"
            assert not list((root / "run/bootagent").glob(".host-keys*")), "ssh-keygen's directory is left"
            assert "changed" in err


def test_wait_writable_gives_up_with_one_line_naming_the_path(tmp_path):
    with mounted_tmpfs(tmp_path / "root") as root:
        (root / "etc").mkdir()
        remount(root, "ro")
        ctx = Context(root=str(root))
        with pytest.raises(StepError) as raised:
            writer.wait_writable(ctx, "/etc/ssh", 0.2)
        assert "cannot write /etc/ssh: its file system is still read-only after 0.2 s" in str(raised.value)
        remount(root, "rw")
        writer.wait_writable(ctx, "/etc/ssh", 0.2)  # the parent that exists decides: no error


def test_without_a_dmi_uuid_the_command_makes_only_missing_keys_and_records_no_instance(root):
    two_keys_no_rsa(root)
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-C", "", "-f", str(root / ECDSA)],
                   check=True)
    image_key = (root / ECDSA).read_bytes()

    done = run_cli("host-keys", "--root", str(root))

    assert done.returncode == 0, done.stderr
    assert (root / ECDSA).read_bytes() == image_key  # no instance known: nothing is replaced
    assert pair_is_valid(root / ED25519)
    assert not (root / "var/lib/bootagent/host-keys-instance").exists()
    assert done.stdout == ""


def test_a_run_provisions_while_the_host_keys_are_being_made_and_waits_only_to_finish(root, fake_imds):
    two_keys_no_rsa(root)
    set_dmi(root, UUID)
    lock = root / "run/bootagent/host-keys.lock"  # as `bootagent host-keys` holds it while ssh-keygen works
    with lock_held(lock) as release, background("run", "--root", str(root), "--imds-url", fake_imds.url) as run:
        admin = fake_imds.document["compute"]["osProfile"]["adminUsername"]
        keys = root / f"home/{admin}/.ssh/authorized_keys"
        wait_for(keys.exists, "the admin's keys, installed while the lock is held")
        time.sleep(0.3)
        assert run.poll() is None, run.communicate()
        assert not (root / "run/bootagent/result.json").exists()
        assert not (root / ED25519).exists()
        release()
        out, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    assert result_json(root)["steps"]["host_keys"]["status"] == "changed"
    assert pair_is_valid(root / ED25519)


IMPORTS_IN_THE_KEYS_THREAD = """
import sys, threading
from bootagent import config, runner
from bootagent.context import Context
from bootagent.log import Log

main = threading.get_ident()
imported = []
sys.addaudithook(lambda event, args: imported.append(args[0])
                 if event == "import" and threading.get_ident() != main else None)
ctx = Context(root=sys.argv[1], log=Log(quiet=True))
ctx.config = config.defaults()
job = runner.HostKeysJob(ctx)
job.start(None)
print(job.finish(None).status, sorted(set(imported)))
"""


def test_the_runs_host_keys_thread_imports_nothing(root):
    """Two threads importing at once can deadlock in Python 3.11's importlib; it hung a real
    first boot (both threads of the run stuck in importlib, the keys' lock held). So
    whatever the thread that makes the keys needs is imported before it starts."""
    two_keys_no_rsa(root)
    set_dmi(root, UUID)
    done = subprocess.run([sys.executable, "-c", IMPORTS_IN_THE_KEYS_THREAD, str(root)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "changed []\n"
    assert pair_is_valid(root / ED25519)
