"""The exception tree. Every error carries the exit code the CLI turns it into.

    BootagentError (1)            a failure with a one-line message: what, on what, what to do
    ├── UsageError (2)            bad command line or configuration; nothing was changed
    │   └── ConfigError (2)       bootagent.yaml is invalid (names the key and the file)
    ├── DocumentError (3)         a body that is not an instance document (exit 2 for --metadata-file)
    ├── ImdsUnavailable (3)       no instance document before the deadline
    ├── HttpError (1)             one HTTP exchange went wrong (status, size, connection)
    ├── StepError (1)             a provisioning step could not do its job
    │   ├── UnsafePath (1)        a path leaves the root, passes through a symlink or is not a file
    │   ├── TooLarge (1)          a file is larger than its reader allows
    │   ├── ToolError (1)         a system tool is missing, hung, would not start or failed
    │   └── MediaError (1)        the provisioning media (ovf-env.xml) is refused or unreadable
    └── NotVerified (1)           an attested document failed a check (`bootagent attest`)

Only `cli.py` turns these into exit codes and printed lines; nothing below it exits.
"""


class BootagentError(Exception):
    exit_code = 1

    def __init__(self, message: str, *, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def message(self) -> str:
        return str(self)


class UsageError(BootagentError):
    exit_code = 2


class ConfigError(UsageError):
    pass


class DocumentError(BootagentError):
    exit_code = 3


class ImdsUnavailable(BootagentError):
    exit_code = 3


class HttpError(BootagentError):
    """One exchange failed. `status` is the HTTP status, or None for a transport failure."""

    def __init__(self, message: str, *, status: int | None = None, body: bytes = b"",
                 headers: dict | None = None, retryable: bool = False, quick: bool = False):
        super().__init__(message)
        self.quick = quick
        self.status = status
        self.body = body
        self.headers = headers or {}
        self.retryable = retryable


class StepError(BootagentError):
    pass


class UnsafePath(StepError):
    """`reason` says why, for callers that explain it in their own words: "symlink" (a
    symlink or a non-directory on the way), "not a regular file", or "path" (the path itself)."""

    def __init__(self, message: str, *, reason: str = "path"):
        super().__init__(message)
        self.reason = reason


class TooLarge(StepError):
    pass


class ToolError(StepError):
    """A system tool (bootagent/tools.py) that did not do its job. `reason` is "missing",
    "timeout", "unstartable" (the OSError's text in `detail`) or "failed" (`exit_status`,
    `stdout`, `stderr`): callers word their own message from these."""

    def __init__(self, message: str, *, tool: str, reason: str, binary: str | None = None,
                 search: str = "", detail: str = "", exit_status: int | None = None,
                 stdout: str = "", stderr: str = ""):
        super().__init__(message)
        self.tool = tool
        self.reason = reason
        self.binary = binary
        self.search = search
        self.detail = detail
        self.exit_status = exit_status
        self.stdout = stdout
        self.stderr = stderr

    def worded(self, *, missing: str, timeout: str, failed: str, unstartable: str = "") -> StepError:
        """A StepError in the caller's words for this reason (unstartable: by default this
        error's own "cannot run BINARY: why")."""
        text = {"missing": missing, "timeout": timeout, "failed": failed, "unstartable": unstartable}
        return StepError(text.get(self.reason) or str(self))


class NotVerified(BootagentError):
    """An attested document that failed one check; `check` names it (`bootagent attest`)."""

    def __init__(self, check: str, detail: str, hint: str):
        super().__init__(f"attested document not verified: {check} check failed: {detail}; {hint}")
        self.check = check
class MediaError(StepError):
    """The provisioning media was refused: the run goes on from IMDS, step customdata fails.
    `reason` is "preprovisioned" for a pre-provisioned pool's media (the run provisions nothing)."""

    def __init__(self, message: str, *, reason: str | None = None):
        super().__init__(message)
        self.reason = reason
