"""Step `ssh_keys` (SPEC step 4): the admin's public keys, once per instance.

A key is installed only when it is one well-formed `type blob [comment]` line whose
blob really is a key of that type, at a path strictly inside the admin's home. A bad
key is refused by its index and the good ones beside it are still installed, but the
step fails so that nobody believes every key is in. Existing lines of an
authorized_keys file are kept byte for byte and a key already there (same type and
blob, whatever its options or comment) is not added again. Every directory and file on
the way is reached through the writer, which refuses symlinks instead of following
them: a home, ~/.ssh or authorized_keys that is a link is the classic way to make a
root-run agent write somewhere else.
"""

from __future__ import annotations

import base64
import binascii
import posixpath

from bootagent import accounts, writer
from bootagent.accounts import Account
from bootagent.boot import Boot
from bootagent.context import Context
from bootagent.errors import StepError
from bootagent.steps import StepResult, users
from bootagent.text import quoted

KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
             "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com",
             "sk-ecdsa-sha2-nistp256@openssh.com")
MAX_KEY = 16 << 10
MAX_AUTHORIZED_KEYS = 4 << 20


def parse_key(key_data: object, index: int = 0) -> str:
    """One keyData to the normalized line `type blob [comment]`; StepError naming the key."""
    where = f"compute.publicKeys[{index}].keyData"
    if not isinstance(key_data, str):
        raise StepError(f"{where} is not a string")
    if len(key_data) > MAX_KEY:
        raise StepError(f"{where} is longer than {MAX_KEY} characters")
    text = key_data.replace("\r", "").strip()
    if not text:
        raise StepError(f"{where} is empty")
    if "\n" in text:
        raise StepError(f"{where} holds more than one line (an embedded newline)")
    if not all(char.isprintable() or char == "\t" for char in text):
        raise StepError(f"{where} holds a control or other non-printable character")
    fields = text.split(None, 2)
    key_type = fields[0]
    if key_type not in KEY_TYPES:
        if any(field in KEY_TYPES for field in text.split()[1:]):
            raise StepError(f"{where} has options before the key type; only "
                            "'type blob [comment]' is accepted")
        raise StepError(f"{where} has an unknown key type {quoted(key_type, 40)} (accepted: {', '.join(KEY_TYPES)})")
    if len(fields) < 2:
        raise StepError(f"{where} has a key type but no key")
    blob = fields[1]
    if not _blob_is(blob, key_type):
        raise StepError(f"{where} is not a valid {key_type} key: its blob is not base64 "
                        f"of a {key_type} key")
    return " ".join(fields)


def _blob_is(blob: str, key_type: str) -> bool:
    """True when `blob` is strict base64 that begins with its own type (uint32 length + name)."""
    try:
        raw = base64.b64decode(blob.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return False
    name = key_type.encode("ascii")
    return raw[:4] == len(name).to_bytes(4, "big") and raw[4:4 + len(name)] == name


def check_key_path(path: object, home: str, index: int = 0) -> str:
    """The normalized absolute path of a key file strictly inside `home`; StepError otherwise."""
    where = f"compute.publicKeys[{index}].path"
    home = posixpath.normpath(home) if isinstance(home, str) and home.startswith("/") else ""
    if not home or home == "/":
        raise StepError(f"{where}: the admin's home directory {home or '(none)'} cannot hold keys")
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise StepError(f"{where} must be an absolute path inside {home}")
    if ".." in path.split("/"):
        raise StepError(f"{where} {quoted(path, 120)} contains '..'; give a plain path inside {home}")
    if path.endswith("/"):
        raise StepError(f"{where} {quoted(path, 120)} names a directory, not a file")
    normalized = posixpath.normpath(path)
    if normalized.startswith("//"):
        normalized = "/" + normalized.lstrip("/")
    if not normalized.startswith(home + "/"):
        raise StepError(f"{where} {quoted(path, 120)} is outside the admin's home {home}")
    return normalized


def key_identity(line: bytes) -> tuple[bytes, bytes] | None:
    """(type, blob) of an authorized_keys line, options and comment aside; None for others."""
    fields = line.split()
    if not fields or fields[0].startswith(b"#"):
        return None
    for position, field in enumerate(fields[:-1]):
        if field.decode("ascii", "replace") in KEY_TYPES:
            return field, fields[position + 1]
    return None


def merge_keys(current: bytes | None, lines: list[str]) -> bytes:
    """`current` with the keys it lacks appended; its own bytes untouched."""
    out = current or b""
    present = {key_identity(line) for line in out.split(b"\n")}
    for line in lines:
        encoded = line.encode("utf-8")
        identity = key_identity(encoded)
        if identity in present:
            continue
        present.add(identity)
        if out and not out.endswith(b"\n"):
            out += b"\n"
        out += encoded + b"\n"
    return out


def run(ctx: Context, boot: Boot) -> StepResult:
    if not ctx.config.ssh.enabled:
        return StepResult.skipped("ssh keys disabled in the configuration")
    users_result = boot.results.get("users")
    # a users step that failed only on the media's password still made the account
    if (users_result is not None and users_result.status == "failed"
            and not users_result.details.get("admin_ready")):
        return StepResult.failed(f"user {users.NAME_FIELD} could not be had: {users_result.error}")
    instance = boot.instance
    reason = users.skip_reason(ctx, instance)
    if reason or instance is None:
        return StepResult.skipped(reason or "no instance document")
    if not instance.public_keys:
        return StepResult.skipped("no publicKeys in the document")
    account, planned = _account(ctx, boot, instance.admin_username)
    refused: list[tuple[int, str]] = []    # (first key index, why), in the error's order
    not_installed: set[int] = set()          # the indexes of every key not installed
    by_path: dict[str, list[tuple[int, str]]] = {}
    for index, key in enumerate(instance.public_keys):
        try:
            line = parse_key(key.key_data, index)
            path = check_key_path(key.path if key.path is not None
                                  else f"{account.home}/.ssh/authorized_keys", account.home, index)
        except StepError as err:
            refused.append((index, str(err)))
            not_installed.add(index)
            continue
        by_path.setdefault(path, []).append((index, line))
    changed: list[str] = []
    for path, entries in by_path.items():
        try:
            changed += _install(ctx, account, path, [line for _, line in entries], planned)
        except StepError as err:
            names = ", ".join(f"compute.publicKeys[{index}]" for index, _ in entries)
            refused.append((entries[0][0], f"{names} not installed: {err}"))
            not_installed.update(index for index, _ in entries)
    if refused:
        count = len(not_installed)
        return StepResult.failed(f"{count} of {len(instance.public_keys)} public keys not "
                                 f"installed (fix a refused key or path in the VM's publicKeys; a failed write "
                                 f"names its own cause): "
                                 f"{' | '.join(why for _, why in sorted(refused))}", changed)
    return StepResult.done(changed)


def _account(ctx: Context, boot: Boot, name: object) -> tuple[Account, bool]:
    """The admin account `name`: from the users step, else the root's passwd (the runner had
    gated users as done), else, in a dry run that would create it, the account as planned."""
    account = boot.admin or (accounts.user(ctx, name) if isinstance(name, str) else None)
    if account is not None:
        users.refuse_system_account(ctx, account)
        return account, False
    if ctx.dry_run:
        name = users.check_username(name)
        return Account(name, -1, -1, f"/home/{name}", "/bin/bash"), True
    raise StepError(f"user {quoted(name, 40)} ({users.NAME_FIELD}) is not in {ctx.path('/etc/passwd')}; "
                    "enable the users step or create the account")


def _install(ctx: Context, account: Account, path: str, lines: list[str], planned: bool) -> list[str]:
    """Put `lines` into the file at `path`: its directories below home 0700, the file 0600,
    all owned by the account. Returns the logical paths that changed."""
    home = posixpath.normpath(account.home)
    if not planned and not writer.exists(ctx, home):
        raise StepError(f"the home directory {home} of {account.name} does not exist")
    owner = (account.uid, account.gid)
    changed = []
    below = path[len(home) + 1:].split("/")[:-1]
    for depth in range(1, len(below) + 1):
        directory = posixpath.join(home, *below[:depth])
        if writer.make_dirs(ctx, directory, mode=0o700, owner=owner):
            changed.append(directory)
    current = writer.read_file(ctx, path, limit=MAX_AUTHORIZED_KEYS)
    if writer.write_file(ctx, path, merge_keys(current, lines), mode=0o600, owner=owner,
                         make_parents=False):
        changed.append(path)
    return changed
