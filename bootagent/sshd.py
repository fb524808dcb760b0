"""sshd's password authentication, set through a drop-in file, never by editing sshd_config.

`PasswordAuthentication yes|no` goes to /etc/ssh/sshd_config.d/50-bootagent.conf, which
sshd reads only when its sshd_config includes that directory (Debian 12's does, at the
top, so the drop-in's value wins: sshd keeps the first value it reads). Written before
sshd starts, so no restart is needed. Owned by the users step (it reads and validates
disablePasswordAuthentication).
"""

from __future__ import annotations

import fnmatch
import posixpath

from bootagent import writer
from bootagent.context import Context
from bootagent.errors import StepError

SSHD_CONFIG = "/etc/ssh/sshd_config"
DROP_IN = "/etc/ssh/sshd_config.d/50-bootagent.conf"


def includes(config_text: str, path: str = DROP_IN) -> bool:
    """True when an `Include` line of sshd_config names `path` (globs; relative to /etc/ssh)."""
    for line in config_text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0].lower() != "include":
            continue
        for pattern in words[1:]:
            pattern = pattern.strip('"')
            if not pattern.startswith("/"):
                pattern = posixpath.join("/etc/ssh", pattern)
            if fnmatch.fnmatchcase(path, pattern):
                return True
    return False


def drop_in(allow: bool) -> bytes:
    return (b"# Written by bootagent: the VM's disablePasswordAuthentication setting.\n"
            + f"PasswordAuthentication {'yes' if allow else 'no'}\n".encode())


def set_password_authentication(ctx: Context, allow: bool) -> tuple[bool, str | None]:
    """(whether the drop-in changed, why it could not be written or None)."""
    try:
        config = writer.read_file(ctx, SSHD_CONFIG, limit=1 << 20)
    except StepError as err:
        return False, f"{SSHD_CONFIG} cannot be read ({err}); PasswordAuthentication left as it is"
    if config is None:
        return False, f"no {SSHD_CONFIG}; PasswordAuthentication left as it is"
    if not includes(config.decode("utf-8", "replace")):
        return False, (f"{SSHD_CONFIG} does not Include {posixpath.dirname(DROP_IN)}/*.conf, so "
                       f"PasswordAuthentication was left as the image has it (add the Include line)")
    return writer.write_file(ctx, DROP_IN, drop_in(allow), mode=0o644), None
