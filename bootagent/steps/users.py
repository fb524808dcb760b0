"""Step `users` (SPEC step 4): the admin account, created once per instance.

Every field is checked before anything changes, so a bad document creates nothing.
The account is made by the system's own `useradd` (`--root` when provisioning an
image), never by editing /etc/passwd, so shadow, gshadow, the home and its skeleton
come out exactly as the distribution makes them. An account that exists is left as
it is: the image's owner may have set it up on purpose. Its sudo rule is still made
sure of (as WALinuxAgent does for an admin that exists): the account may be one that a
run killed between useradd and the rule created, and the next run must finish the job.
"""

from __future__ import annotations

import os
import re

from bootagent import accounts, tools, writer
from bootagent.boot import Boot
from bootagent.context import Context
from bootagent.errors import StepError, ToolError
from bootagent.log import log
from bootagent.steps import StepResult
from bootagent.text import one_line, quoted

STEP = "users"
NAME_FIELD = "compute.osProfile.adminUsername"
PASSWORD_FIELD = "compute.osProfile.disablePasswordAuthentication"
TOOL_TIMEOUT = 60
SUDOERS_DIR = "/etc/sudoers.d"
SUDOERS_FILE = f"{SUDOERS_DIR}/90-bootagent-users"  # no '.' in the name: sudo would skip it
PASSWORD_STATE = "password"   # per-instance state: the media's password was applied
_USERADD_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def skip_reason(ctx: Context, instance) -> str | None:
    """Why there is no admin user to provision (shared with ssh_keys), or None."""
    if not ctx.config.users.enabled:
        return "users disabled in the configuration"
    if instance is None:
        return "no instance document"
    if not instance.has_os_profile:
        return "no osProfile in the document"
    if instance.admin_username is None:
        return "no adminUsername in the document"
    return None


def check_username(name: object) -> str:
    """The admin name when `useradd` accepts it by default; StepError naming the field."""
    if isinstance(name, str) and _USERADD_NAME.fullmatch(name):
        return name
    raise StepError(f"{NAME_FIELD} {quoted(name, 40)} is not a name useradd accepts (lower-case letters, "
                    "digits, '_' and '-', starting with a letter or '_', at most 32 characters); "
                    "fix the VM's admin username")


def password_disabled(value: object) -> bool:
    """disablePasswordAuthentication as IMDS sends it ("true"/"false"), a JSON boolean, or absent."""
    if value is None or value == "":
        return False
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise StepError(f'{PASSWORD_FIELD} must be "true" or "false", not {quoted(value, 40)}; fix the document')


def run(ctx: Context, boot: Boot) -> StepResult:
    instance = boot.instance
    reason = skip_reason(ctx, instance)
    if reason or instance is None:
        return StepResult.skipped(reason or "no instance document")
    name = check_username(instance.admin_username)
    lock = password_disabled(instance.disable_password_auth)
    existing = accounts.user(ctx, name)
    if existing is not None:
        refuse_system_account(ctx, existing)
        boot.admin = existing
        return admin_ready(ctx, boot, name, [])
    groups = _existing_groups(ctx)
    if ctx.dry_run:
        locked = ", password locked" if lock else ""
        if boot.password is not None:
            locked = ", password set from the provisioning media"
        ctx.changes.append(("/etc/passwd", f"would create user {name} in groups "
                                           f"{', '.join(groups) or '(none)'}{locked}"))
        return StepResult.done(["/etc/passwd", "/etc/shadow", "/etc/group", "/etc/gshadow"])
    before = _databases(ctx)
    _tool(ctx, "useradd", "-m", "-s", "/bin/bash", *(["-G", ",".join(groups)] if groups else []), name)
    account = accounts.user(ctx, name)
    if account is None:
        raise StepError(f"useradd reported success but {name} is not in "
                        f"{ctx.path('/etc/passwd')}; check the root's account databases")
    if lock:
        lock_password(ctx, name)
    boot.admin = account
    after = _databases(ctx)
    changed = [path for path in before if before[path] != after[path]]
    if account.home.startswith("/") and writer.exists(ctx, account.home):
        changed.append(account.home)
    return admin_ready(ctx, boot, name, changed)


def refuse_system_account(ctx: Context, account: accounts.Account) -> None:
    """StepError naming the field when `account` is a system account of the root."""
    first = accounts.uid_min(ctx)
    if account.uid < first:
        raise StepError(f"{NAME_FIELD} {quoted(account.name, 40)} is an existing system account "
                        f"(uid {account.uid}, below UID_MIN {first} of {accounts.LOGIN_DEFS}); refusing to "
                        "make it the admin: choose another admin username for the VM")


def admin_ready(ctx: Context, boot: Boot, name: str, changed: list) -> StepResult:
    """The account is there: its password from the media (once per instance), its sudo
    rule, sshd's password setting. A password that cannot be applied fails the step but
    leaves the account usable (`admin_ready`), so ssh_keys still installs the keys."""
    from bootagent import password as passwords

    problems, notes = [], {}
    secret = boot.password
    if secret is not None:
        try:
            passwords.check(secret)
        except StepError as err:
            problems.append(str(err))
            secret = None
    if secret is not None and not boot.state.done(PASSWORD_STATE):
        if passwords.apply(ctx, name, secret) and "/etc/shadow" not in changed:
            changed.append("/etc/shadow")
        if not ctx.dry_run:
            boot.state.record(PASSWORD_STATE, True)
        notes["password"] = "set from the provisioning media"
    if grant_sudo(ctx, name, ask_password=secret is not None):
        changed.append(SUDOERS_FILE)
    changed += _sshd_password_setting(ctx, boot, notes)
    outcome = StepResult.failed("; ".join(problems), changed) if problems else StepResult.done(changed)
    outcome.details.update(notes, admin_ready=True)
    return outcome


def _sshd_password_setting(ctx: Context, boot: Boot, notes: dict) -> list[str]:
    """PasswordAuthentication from disablePasswordAuthentication (IMDS, else the media's;
    the document already holds the media's when IMDS had none); absent: untouched."""
    from bootagent import sshd

    value = boot.instance.disable_password_auth if boot.instance is not None else None
    if value is None or value == "":
        return []
    changed, why_not = sshd.set_password_authentication(ctx, not password_disabled(value))
    if why_not:
        notes["sshd"] = why_not
        log(ctx, "warning", why_not, step=STEP)
    return [sshd.DROP_IN] if changed else []


def grant_sudo(ctx: Context, name: str, ask_password: bool = False) -> bool:
    """Let the new admin use sudo, as Azure's own agents do: without a password unless
    the admin has one (from the provisioning media), which it then asks for.

    IMDS never carries a password, so without the media the admin has none to type:
    without this rule the admin of a VM could not administer it. `users.sudo: false`
    turns it off; an image without sudo (no /etc/sudoers.d) gets nothing."""
    if not ctx.config.users.sudo:
        return False
    if not writer.is_dir(ctx, SUDOERS_DIR):
        return False
    current = writer.read_file(ctx, SUDOERS_FILE, limit=1 << 20) or b""
    rule, other = (f"{name} ALL=(ALL) {spec}\n".encode()
                   for spec in (("ALL", "NOPASSWD:ALL") if ask_password else ("NOPASSWD:ALL", "ALL")))
    lines = current.splitlines(keepends=True)
    if rule in lines and other not in lines:
        return False
    kept = b"".join(line for line in lines if line != other)
    header = b"" if kept else b"# Written by bootagent for the VM's admin user (users.sudo).\n"
    body = kept + header + (b"" if rule in lines else rule)
    return writer.write_file(ctx, SUDOERS_FILE, body, mode=0o440)


def lock_password(ctx: Context, name: str) -> bool:
    """Make sure `name`'s password is locked; True when `usermod -L` had to lock it."""
    if _password_locked(ctx, name):
        return False
    _tool(ctx, "usermod", "-L", name)
    if not _password_locked(ctx, name):
        raise StepError(f"usermod -L did not lock the password of {name} in "
                        f"{ctx.path('/etc/shadow')}; lock it by hand with `passwd -l {name}`")
    return True


def _password_locked(ctx: Context, name: str) -> bool:
    raw = writer.read_file(ctx, "/etc/shadow", limit=64 << 20) or b""
    for line in raw.decode("utf-8", "replace").splitlines():
        fields = line.split(":")
        if fields[0] == name and len(fields) > 1:
            return fields[1].startswith("!") or fields[1] == "*"
    raise StepError(f"{name} has no entry in {ctx.path('/etc/shadow')}; check the root's shadow file")


def _existing_groups(ctx: Context) -> list[str]:
    """The configured groups that the root has; a warning for each one it lacks."""
    known = accounts.groups(ctx)
    present = []
    for group in ctx.config.users.groups:
        if group in known:
            present.append(group)
        else:
            log(ctx, "warning", f"group {group} does not exist in {ctx.path('/etc/group')}; "
                                "the admin user is created without it", step=STEP)
    return present


def _databases(ctx: Context) -> dict[str, bytes | None]:
    return {path: writer.read_file(ctx, path, limit=64 << 20)
            for path in ("/etc/passwd", "/etc/shadow", "/etc/group", "/etc/gshadow")}


def _tool(ctx: Context, tool: str, *args: str) -> None:
    """Run useradd/usermod on the root (`--root` unless live); StepError with one line on failure."""
    try:
        tools.run([tool, *([] if ctx.live else ["--root", ctx.root]), *args], where=ctx, timeout=TOOL_TIMEOUT,
                  env={"PATH": tools.search_path(ctx), "LC_ALL": "C"})
    except ToolError as err:
        raise err.worded(missing=f"{tool} not found (searched {err.search.strip(os.pathsep)}); "
                                 "install the distribution's passwd package",
                         timeout=f"{tool} for {args[-1]} did not finish within {TOOL_TIMEOUT} s; "
                                 "check the root's account databases and locks",
                         failed=f"{tool} failed for {args[-1]} (exit {err.exit_status}): "
                                f"{_summary(err.stderr)}") from None


def _summary(stderr: str) -> str:
    """useradd's complaint on one bounded line, its warnings left out when there is more."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    lines = [re.sub(r"^(useradd|usermod): ", "", line) for line in lines]
    serious = [line for line in lines if not line.startswith("Warning:")] or lines
    return one_line("; ".join(serious) or "no message", 300)
