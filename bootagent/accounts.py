"""Users and groups of the provisioned root, read from its /etc/passwd and /etc/group.

Pure parsing plus reads through the writer, so `--root` images resolve names with
their own databases, never the host's.
"""

from __future__ import annotations

from bootagent import writer
from bootagent.context import Context
from bootagent.errors import StepError
from bootagent.record import Record
from bootagent.text import quoted

LOGIN_DEFS = "/etc/login.defs"
DEFAULT_UID_MIN = 1000  # useradd's own default when login.defs does not say


class Account(Record, frozen=True):
    name: str
    uid: int
    gid: int
    home: str
    shell: str


def parse_passwd(text: str) -> dict[str, Account]:
    accounts = {}
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) < 7 or line.startswith("#"):
            continue
        try:
            accounts[fields[0]] = Account(fields[0], int(fields[2]), int(fields[3]), fields[5], fields[6])
        except ValueError:
            continue
    return accounts


def parse_group(text: str) -> dict[str, int]:
    groups = {}
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[2].isdigit():
            groups[fields[0]] = int(fields[2])
    return groups


def parse_uid_min(text: str) -> int:
    """UID_MIN of a login.defs text (its last valid setting, as shadow's getdef reads it),
    else useradd's default."""
    found = DEFAULT_UID_MIN
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "UID_MIN" and fields[1].isdigit():
            found = int(fields[1])
    return found


def uid_min(ctx: Context) -> int:
    """The first uid of an ordinary user on the root: below it are system accounts."""
    return parse_uid_min(_text(ctx, LOGIN_DEFS))


def _text(ctx: Context, logical: str) -> str:
    raw = writer.read_file(ctx, logical, limit=64 << 20)
    return raw.decode("utf-8", "replace") if raw else ""


def users(ctx: Context) -> dict[str, Account]:
    return parse_passwd(_text(ctx, "/etc/passwd"))


def groups(ctx: Context) -> dict[str, int]:
    return parse_group(_text(ctx, "/etc/group"))


def user(ctx: Context, name: str) -> Account | None:
    return users(ctx).get(name)


def owner_ids(ctx: Context, owner: str, group: str) -> tuple[int, int]:
    """uid and gid for names, from the root's own databases; StepError when one is unknown."""
    if owner == "root" and group == "root":
        return 0, 0
    account = users(ctx).get(owner)
    if account is None:
        raise StepError(f"owner {quoted(owner)} does not exist in {ctx.path('/etc/passwd')}")
    gid = groups(ctx).get(group)
    if gid is None:
        raise StepError(f"group {quoted(group)} does not exist in {ctx.path('/etc/group')}")
    return account.uid, gid
