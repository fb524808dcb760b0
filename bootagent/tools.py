"""The system's own tools (useradd, chpasswd, networkctl, sfdisk, mount...): found and run
one way, their failures handed back as structure for each caller to word.

A tool is looked for on the caller's PATH, then in the system's bin directories (a `su`
shell on Debian has no sbin in its PATH). `subprocess` and `shutil` are imported only
when a tool is looked for: a boot that runs none loads neither.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from bootagent.errors import ToolError

SYSTEM_BIN_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


class Done(NamedTuple):
    """A tool that ran to its end: its exit status and what it printed."""
    exit_status: int
    stdout: str
    stderr: str


def search_path(where: object) -> str:
    """The PATH searched for a tool: the environment's (a Context's `env`, or a mapping), then
    SYSTEM_BIN_DIRS."""
    env = getattr(where, "env", where)
    path = env.get("PATH", "") if isinstance(env, Mapping) else ""
    return os.pathsep.join(part for part in (path, *SYSTEM_BIN_DIRS) if part)  # "" would be the cwd


def which(where: object, name: str) -> str | None:
    """The absolute path of tool `name` on search_path(where), or None."""
    import shutil

    return shutil.which(name, path=search_path(where))


def run(argv: Sequence[str], *, where: object, timeout: float, env: Mapping[str, str] | None = None,
        stdin: str | None = None, check: bool = True) -> Done:
    """Run tool argv[0] (found by which(where, ...)) with argv[1:]; stdin is /dev/null unless
    given. ToolError with `reason` "missing", "timeout", "unstartable", or "failed" (a non-zero
    exit, only when `check`). `env` None: the child inherits this process's environment."""
    import subprocess

    tool = argv[0]
    search = search_path(where)
    binary = which(where, tool)
    if binary is None:
        raise ToolError(f"{tool} not found", tool=tool, reason="missing", search=search)
    try:
        done = subprocess.run([binary, *argv[1:]], capture_output=True, text=True, errors="replace",
                              timeout=timeout, env=None if env is None else dict(env),
                              **({"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}))
    except subprocess.TimeoutExpired:
        raise ToolError(f"{tool} did not finish within {timeout} s", tool=tool, reason="timeout",
                        binary=binary, search=search) from None
    except OSError as err:
        raise ToolError(f"cannot run {binary}: {err.strerror}", tool=tool, reason="unstartable",
                        binary=binary, search=search, detail=err.strerror or type(err).__name__) from None
    if check and done.returncode != 0:
        raise ToolError(f"{tool} failed (exit {done.returncode})", tool=tool, reason="failed", binary=binary,
                        search=search, exit_status=done.returncode, stdout=done.stdout, stderr=done.stderr)
    return Done(done.returncode, done.stdout, done.stderr)
