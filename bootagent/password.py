"""The admin password from the provisioning media: hashed here, handed over as a hash.

The plain text exists only in this process's memory. It is hashed with SHA-512 crypt and
a fresh salt (Python 3.11's `crypt`, imported only when there is a password), and the
hash goes to `chpasswd -e` on its standard input (`--root` offline): never a command
line, a file, a log line or a message. Longer than 72 bytes is refused, as the hashes
of some systems (bcrypt) would silently cut it.
"""

from __future__ import annotations

from bootagent import tools, writer
from bootagent.context import Context
from bootagent.errors import StepError, ToolError
from bootagent.text import one_line

FIELD = "ovf-env.xml UserPassword"
MAX_BYTES = 72
TOOL_TIMEOUT = 60


def check(password: str) -> str:
    """The password when it can be applied; StepError naming the field (never the value)."""
    size = len(password.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        raise StepError(f"{FIELD} is {size} bytes long, more than {MAX_BYTES}; the password was not "
                        "applied (give the VM a shorter admin password)")
    if "\n" in password or "\r" in password or "\0" in password:
        raise StepError(f"{FIELD} holds a line break or NUL; the password was not applied")
    return password


def hash_password(password: str) -> str:
    """SHA-512 crypt of `password` with a fresh salt."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt
        except ImportError:
            raise StepError("cannot hash the admin password: this Python has no crypt module; "
                            "the password was not applied") from None
    hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_SHA512))
    if not hashed or not hashed.startswith("$6$"):
        raise StepError("the system's crypt() cannot make SHA-512 hashes; the password was not applied")
    return hashed


def apply(ctx: Context, name: str, password: str) -> bool:
    """Set `name`'s password on the root; True when /etc/shadow changed."""
    check(password)
    if ctx.dry_run:
        ctx.changes.append(("/etc/shadow", f"would set the password of {name} (from the media)"))
        return True
    hashed = hash_password(password)
    before = writer.read_file(ctx, "/etc/shadow", limit=64 << 20)
    _chpasswd(ctx, f"{name}:{hashed}\n")
    if _shadow_hash(ctx, name) != hashed:
        raise StepError(f"chpasswd reported success but the password of {name} is not in "
                        f"{ctx.path('/etc/shadow')}; check the root's shadow file")
    return writer.read_file(ctx, "/etc/shadow", limit=64 << 20) != before


def _shadow_hash(ctx: Context, name: str) -> str | None:
    raw = writer.read_file(ctx, "/etc/shadow", limit=64 << 20) or b""
    for line in raw.decode("utf-8", "replace").splitlines():
        fields = line.split(":")
        if fields[0] == name and len(fields) > 1:
            return fields[1]
    return None


def _chpasswd(ctx: Context, line: str) -> None:
    """`line` (name:hash) to `chpasswd -e` on its stdin: never on its command line."""
    try:
        tools.run(["chpasswd", "-e", *([] if ctx.live else ["--root", ctx.root])], where=ctx,
                  timeout=TOOL_TIMEOUT, env={"PATH": tools.search_path(ctx), "LC_ALL": "C"}, stdin=line)
    except ToolError as err:
        said = err.stderr.replace(line.strip(), "[hash]")
        raise err.worded(missing="chpasswd not found; install the distribution's passwd package "
                                 "(the password was not applied)",
                         timeout=f"chpasswd did not finish within {TOOL_TIMEOUT} s; the password was not applied",
                         failed=f"chpasswd -e failed (exit {err.exit_status}): {one_line(said)}; "
                                "the password was not applied") from None
