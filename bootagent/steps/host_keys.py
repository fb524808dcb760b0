"""SSH host keys of the instance's own (SPEC step 4, "SSH host keys").

Every VM made from one image must not share the image's host keys, and an image
captured without keys must still get sshd going. The keys change once per instance and
never later, so the instance here needs no document: the DMI system UUID, else the
vmId, each compared only with its own kind (Gen1 VMs byte-swap one against the other).
The stored record says which kind it is (`dmi:<uuid>` or `vmid:<id>`), and it is written
only once every key is in place, so a run killed half-way regenerates on the next boot.
A key ssh-keygen could not make is no reason to replace the others again: an image key
it could not replace is removed instead (no VM may keep using it), the instance is
recorded, and the key is made at a later boot as a missing one.

ssh-keygen writes into a private temporary directory under the root's /run/bootagent
(never outside the root; one a killed run left is removed by the writer's sweep of
stale temporary files), every key at once (RSA is the slowest work of a first boot),
and the writer installs the bytes. A missing private key
is made again on any boot; a missing .pub is restored from its private key.
"""

from __future__ import annotations

import base64
import hashlib
import re

from bootagent import dmi, state, writer
from bootagent.context import Context
from bootagent.errors import BootagentError, StepError
from bootagent.log import log
from bootagent.steps import StepResult

STEP = "host_keys"
SSH_DIR = "/etc/ssh"
SSHD_CONFIG = f"{SSH_DIR}/sshd_config"
HOST_KEY_TYPES = ("rsa", "ecdsa", "ed25519")  # ssh-keygen -t; DSA: deprecated, gone from OpenSSH 10
DEFAULT_KEYS = tuple(f"{SSH_DIR}/ssh_host_{kind}_key" for kind in HOST_KEY_TYPES)
MAX_INCLUDE_DEPTH = 16  # as sshd
MAX_CONFIG_BYTES = 1 << 20
KEYGEN_TIMEOUT = 300.0
# how long `bootagent host-keys`, started before the root is remounted read-write, waits
# for that with the keys it made; a run starts after the remount and never waits
REMOUNT_TIMEOUT = 120.0
WORK_DIR = "/run/bootagent"  # the agent's own run-time directory (a tmpfs on a real boot)
_KEY_NAME = re.compile(r"^ssh_host_(.+)_key$")
_DIRECTIVE = re.compile(r"^\s*([A-Za-z]+)(?:\s*=\s*|\s+)(.*)$")


# ---- pure parts -------------------------------------------------------------------

def fingerprint(pub_line: str | bytes) -> str:
    """`SHA256:<unpadded base64>` of a public key line's blob, as `ssh-keygen -lf` prints it."""
    text = pub_line.decode("ascii") if isinstance(pub_line, bytes) else pub_line
    fields = text.split()
    if len(fields) < 2:
        raise ValueError("not a public key line: expected '<type> <base64 blob>'")
    blob = base64.b64decode(fields[1], validate=True)
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def key_type(logical: str) -> str | None:
    """The ssh-keygen type a host key's file name asks for (`ssh_host_<type>_key`), or None."""
    match = _KEY_NAME.match(logical.rsplit("/", 1)[-1])
    return match.group(1) if match and match.group(1) in HOST_KEY_TYPES else None


def directives(text: str, source: str):
    """Yield (keyword in lower case, args) of each line of an sshd config file that has one."""
    import shlex

    for number, line in enumerate(text.splitlines(), 1):
        match = _DIRECTIVE.match(line)
        if not match:
            continue
        try:
            args = shlex.split(match.group(2), comments=True)
        except ValueError:
            raise StepError(f"cannot read {source} line {number}: unbalanced quotes; "
                            "fix the line (sshd would refuse it too)") from None
        yield match.group(1).lower(), args


def absolute(path: str, base: str) -> str:
    """sshd takes a relative Include below /etc/ssh and a relative HostKey below its cwd (/)."""
    return path if path.startswith("/") else f"{base.rstrip('/')}/{path}"


def instance_verdict(stored: str | None, dmi: str | None, vm_id: str | None) -> tuple[str, str | None]:
    """("new" | "same" | "unknown", the record to keep once the keys are in place, or None).

    A DMI UUID is compared only with a stored DMI UUID, a vmId only with a stored vmId.
    A record made from a vmId on a machine that now shows a DMI UUID but no vmId (an image
    provisioned offline, now booted as a VM) is another machine."""
    dmi = dmi.strip().lower() if dmi else None
    vm = vm_id.strip().lower() if vm_id and vm_id.strip() else None
    current = f"dmi:{dmi}" if dmi else (f"vmid:{vm}" if vm else None)
    if current is None:
        return "unknown", None
    if stored is None:
        return "new", current
    kind, _, value = stored.partition(":")
    if kind == "dmi":
        return (("same" if value == dmi else "new"), current) if dmi else ("unknown", None)
    if kind == "vmid" and vm:
        return ("same" if value == vm else "new"), current
    return "new", current  # a vmId record and no vmId now, or a record of no kind we write


# ---- reading the machine ----------------------------------------------------------

def dmi_uuid(ctx: Context) -> str | None:
    """The DMI system UUID under the root, lower-cased; None when absent, unreadable or unset."""
    value = (dmi.read_field(ctx, "product_uuid") or "").lower()
    digits = set(value.replace("-", ""))
    # SMBIOS: all 0xFF means "not present", all zero "not set"
    return value if value and digits not in ({"0"}, {"f"}) else None


def configured_keys(ctx: Context) -> list[str]:
    """The private keys sshd loads: its HostKey lines (Includes followed), else its defaults."""
    found: list[str] = []
    _read_config(ctx, SSHD_CONFIG, found, 0)
    return list(dict.fromkeys(found)) or list(DEFAULT_KEYS)


def _read_config(ctx: Context, logical: str, found: list[str], depth: int) -> None:
    raw = writer.read_file(ctx, logical, limit=MAX_CONFIG_BYTES)
    if raw is None:
        return
    for keyword, args in directives(raw.decode("utf-8", "replace"), logical):
        if keyword == "hostkey" and args:
            found.append(absolute(args[0], "/"))
        elif keyword == "include":
            if depth >= MAX_INCLUDE_DEPTH:
                raise StepError(f"cannot read {logical}: Include nested more than "
                                f"{MAX_INCLUDE_DEPTH} deep; fix the sshd configuration")
            for pattern in args:
                for path in _glob(ctx, absolute(pattern, SSH_DIR)):
                    _read_config(ctx, path, found, depth + 1)


def _glob(ctx: Context, pattern: str) -> list[str]:
    """glob(3) under the root, one component at a time, through the writer (no symlink)."""
    from fnmatch import fnmatchcase

    from bootagent.paths import split_logical

    paths = [""]
    for part in split_logical(pattern):
        if not any(c in part for c in "*?["):
            paths = [f"{p}/{part}" for p in paths]
            continue
        paths = [f"{p}/{name}" for p in paths for name in writer.list_dir(ctx, p or "/")
                 if fnmatchcase(name, part) and (part.startswith(".") or not name.startswith("."))]
    return sorted(paths)


def _present(ctx: Context, logical: str) -> bool:
    """Whether a key file is there; a symlink or a non-file raises UnsafePath (never followed)."""
    return writer.read_file(ctx, logical, limit=1 << 20) is not None


# ---- the step ---------------------------------------------------------------------

def preload() -> None:
    """Import, in the calling thread, every module the step imports as it runs: the run
    makes the keys in a thread while its main thread imports, and Python 3.11's importlib
    can deadlock when two threads import at once (the real boot that did: bench/README.md).
    The step's thread imports nothing (tests/test_host_keys_early.py checks it)."""
    import fcntl  # noqa: F401  the keys' lock, and the writer's turns
    import fnmatch  # noqa: F401
    import shlex  # noqa: F401
    import shutil  # noqa: F401
    import subprocess  # noqa: F401
    import time  # noqa: F401


def run(ctx: Context, vm_id: str | None, remount_wait: float = 0.0) -> StepResult:
    """The step, under its own lock (state.host_keys_lock), not the run's.
    `remount_wait`: seconds to wait for a read-only root to turn writable before installing."""
    if ctx.dry_run:
        return _run(ctx, vm_id, 0.0)
    try:
        with state.host_keys_lock(ctx):
            return _run(ctx, vm_id, remount_wait)
    except BootagentError as err:
        return StepResult.failed(str(err))


def _run(ctx: Context, vm_id: str | None, remount_wait: float) -> StepResult:
    mode = ctx.config.ssh.host_keys
    if mode == "off":
        return StepResult.skipped("ssh.host_keys is off")
    if not writer.exists(ctx, SSHD_CONFIG):
        return StepResult.skipped(f"no {SSHD_CONFIG}")
    try:
        keys = configured_keys(ctx)
        stored = state.host_keys_instance(ctx)
        verdict, record = instance_verdict(stored, dmi_uuid(ctx), vm_id)
        replace = verdict == "new" and mode == "regenerate"
        if replace:
            keys += [f"{SSH_DIR}/{name}" for name in writer.list_dir(ctx, SSH_DIR)
                     if _KEY_NAME.match(name) and f"{SSH_DIR}/{name}" not in keys]
    except BootagentError as err:
        return StepResult.failed(str(err))
    plan, refused = _plan(ctx, keys, replace)
    if ctx.dry_run:
        for logical, action in plan:
            for path in _outputs(logical, action):
                ctx.changes.append((path, f"would {_WORDS[action]} SSH host key file {path}"))
        return _result([p for logical, action in plan for p in _outputs(logical, action)], refused, {})
    changed, fingerprints, failures, settled = _make(ctx, plan, remount_wait)
    # Recorded once every key is in place or, where ssh-keygen failed, gone: a killed run,
    # or one that could not install a key, replaces them all next boot. Refused files were
    # never touched; they are named again each boot.
    if settled and record is not None and record != stored:
        try:
            if remount_wait:
                writer.wait_writable(ctx, state.HOST_KEYS_FILE, remount_wait)
            state.set_host_keys_instance(ctx, record)
        except BootagentError as err:
            failures.append(str(err))
    return _result(changed, refused + failures, fingerprints)


_WORDS = {"make": "make", "replace": "replace", "derive": "restore from its private key"}


def _outputs(logical: str, action: str) -> list[str]:
    return [f"{logical}.pub"] if action == "derive" else [logical, f"{logical}.pub"]


def _plan(ctx: Context, keys: list[str], replace: bool) -> tuple[list[tuple[str, str]], list[str]]:
    """(key, make | replace | derive) for each key that needs work, and the keys refused."""
    plan, refused = [], []
    for logical in keys:
        try:
            private, public = _present(ctx, logical), _present(ctx, f"{logical}.pub")
        except BootagentError as err:
            refused.append(str(err))
            continue
        action = ("replace" if replace and (private or public) else "make" if not private
                  else "derive" if not public else None)
        if action in ("make", "replace") and key_type(logical) is None:
            refused.append(f"cannot make SSH host key {logical}: its name gives no type ssh-keygen makes "
                           f"(ssh_host_<{'|'.join(HOST_KEY_TYPES)}>_key); rename or remove it")
        elif action:
            plan.append((logical, action))
    return plan, refused


def _make(ctx: Context, plan: list[tuple[str, str]],
          remount_wait: float) -> tuple[list[str], dict, list[str], bool]:
    """Generate every key of the plan at once, then install each through the writer.
    Returns (changed, fingerprints, failures, settled): settled when every key is
    installed or, where ssh-keygen failed, absent (made next boot as a missing key).

    The .pub goes first: after a kill between the two, a new key's private half is
    missing (made again next boot), or a replaced key's pair is mixed (the instance is
    not recorded yet, so the next boot replaces it again)."""
    changed: list[str] = []
    fingerprints: dict[str, str] = {}
    if not plan:
        return changed, fingerprints, [], True
    try:
        made, failures = _keygen(ctx, plan)
    except StepError as err:
        made, failures = {}, [str(err)]
    try:
        # the writer's own error names a read-only file system when there is no wait
        if remount_wait and writer.read_only(ctx, SSH_DIR):
            log(ctx, "info", f"{len(made)} SSH host keys made; waiting for {SSH_DIR} "
                "to be mounted read-write", STEP)
            writer.wait_writable(ctx, SSH_DIR, remount_wait)
    except StepError as err:
        return changed, fingerprints, failures + [str(err)], False
    settled = True
    for logical, action in plan:
        if logical not in made:
            if action == "replace":
                settled &= _remove_unreplaced(ctx, logical, changed, failures)
            continue
        private, public = made[logical]
        try:
            public_changed = writer.write_file(ctx, f"{logical}.pub", public, mode=0o644, owner=(0, 0))
            private_changed = private is not None and writer.write_file(
                ctx, logical, private, mode=0o600, owner=(0, 0), secret=True)
        except BootagentError as err:
            failures.append(str(err))
            settled = False
            continue
        changed += [logical] * private_changed + [f"{logical}.pub"] * public_changed
        shown = fingerprint(public)
        if action == "derive":
            log(ctx, "info", f"restored {logical}.pub from its private key: {shown}", STEP)
        else:
            fingerprints[logical] = shown
            log(ctx, "info", f"new SSH host key {logical}: {shown} ({str(key_type(logical)).upper()})", STEP)
    return changed, fingerprints, failures, settled


def _remove_unreplaced(ctx: Context, logical: str, changed: list[str], failures: list[str]) -> bool:
    """The image's key that ssh-keygen could not replace: every VM of the image has it, so
    it goes (sshd carries on with the others) and is made at a later boot as a missing
    key. True once it is gone."""
    try:
        for path in (logical, f"{logical}.pub"):
            if writer.remove_file(ctx, path):
                changed.append(path)
    except BootagentError as err:
        failures.append(str(err))
        return False
    log(ctx, "warning", f"removed {logical}: ssh-keygen could not replace the image's key, which "
        "every VM made from the image shares; it is made again at the next boot", STEP)
    return True


def _keygen(ctx: Context, plan: list[tuple[str, str]]) -> tuple[dict, list[str]]:
    """({key: (private bytes, or None for a restored .pub; public line)}, failures).

    Every ssh-keygen is started before any is waited for: RSA alone takes most of the time."""
    import os
    import shutil

    program = shutil.which("ssh-keygen", path=ctx.env.get("PATH") or os.defpath)
    if program is None:
        raise StepError("cannot make SSH host keys: ssh-keygen is not installed (or not on PATH); "
                        "install openssh-client, or set ssh.host_keys: off")
    # Inside the root, under a hidden temp name (the writer's work_dir): a run killed here
    # leaves no private key outside the root, and the next run's sweep removes the directory.
    with writer.work_dir(ctx, WORK_DIR, "host-keys") as workdir:
        started = []
        try:
            for number, (logical, action) in enumerate(plan):
                started.append(_start(ctx, program, logical, action, os.path.join(workdir, f"key{number}")))
            return _collect(started)
        finally:
            for _, _, process, _ in started:
                if process.poll() is None:
                    process.kill()
                    process.wait()


def _start(ctx: Context, program: str, logical: str, action: str, target: str):
    """One ssh-keygen, started: (key, target file, process, private key bytes for a derive)."""
    import subprocess

    if action == "derive":  # the private key goes through a pipe, never into another file
        secret = writer.read_file(ctx, logical, limit=1 << 20) or b""
        argv = [program, "-y", "-P", "", "-f", "/dev/stdin"]
    else:
        secret = None
        argv = [program, "-q", "-t", str(key_type(logical)), "-N", "", "-C", "", "-f", target]
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL if secret is None else subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return logical, target, process, secret


def _collect(started: list) -> tuple[dict, list[str]]:
    """Wait for every started ssh-keygen (all within KEYGEN_TIMEOUT) and read what each made."""
    import subprocess
    import time

    made: dict[str, tuple[bytes | None, bytes]] = {}
    failures: list[str] = []
    deadline = time.monotonic() + KEYGEN_TIMEOUT
    for logical, target, process, secret in started:
        try:
            out, err = process.communicate(secret, timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            failures.append(f"cannot make SSH host key {logical}: ssh-keygen took more than "
                            f"{KEYGEN_TIMEOUT:.0f} s; check the machine's load")
            continue
        if process.returncode != 0:
            why = err.decode("utf-8", "replace").strip().splitlines() or [f"exit {process.returncode}"]
            failures.append(f"cannot make SSH host key {logical}: ssh-keygen failed ({why[-1]}); "
                            "check that this ssh-keygen makes that key type")
        elif secret is not None:
            made[logical] = (None, out.strip() + b"\n")
        else:
            with open(f"{target}.pub", "rb") as pub, open(target, "rb") as private:
                made[logical] = (private.read(), pub.read().strip() + b"\n")
    return made, failures


def _result(changed: list[str], errors: list[str], fingerprints: dict) -> StepResult:
    result = StepResult.failed("; ".join(errors), changed) if errors else StepResult.done(changed)
    if fingerprints:
        result.details["fingerprints"] = fingerprints
    return result
