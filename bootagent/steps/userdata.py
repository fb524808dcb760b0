"""Step `userdata` (per instance): save the decoded userData, and run a `#!` script last.

`run` decodes (strict base64, bounded gunzip: bootagent/imds/userdata.py) and keeps the
bytes at /var/lib/bootagent/user-data, 0700 for a `#!` script, else 0600. A script is
not run here: `run` leaves `details["script"] = "pending"` and the runner, after every
other step, records in the instance state that the script is starting (so that it runs
once per instance whatever its exit status, even if it reboots the machine) and calls
`run_script`, whose StepResult replaces this step's.

`run_script` runs it only on the live system (root `/`, not a dry run,
`userdata.run_scripts` true) through bootagent/script.py (time limit
`userdata.script_timeout`, bounded output, daemons cannot hold the boot); its output is
saved to /var/lib/bootagent/user-data.output (0600) and its tail logged.

userData content never appears in a log line, an error or result.json; the script's
output is the user's own report and may be logged. The customdata step keeps and runs
the media's customData through `keep`, `forget` and `run_script` here, with its own `Kept`.
"""

from __future__ import annotations

import signal

from bootagent import writer
from bootagent.boot import Boot
from bootagent.context import Context
from bootagent.errors import StepError
from bootagent.imds.userdata import UserData, UserDataError
from bootagent.imds.versions import has_user_data
from bootagent.log import log
from bootagent.record import Record
from bootagent.script import ScriptRun, execute
from bootagent.state import STATE_DIR
from bootagent.steps import StepResult
from bootagent.text import escaped, shorten

STEP = "userdata"
USER_DATA_PATH = f"{STATE_DIR}/user-data"
OUTPUT_PATH = f"{STATE_DIR}/user-data.output"
LOGGED_LINES = 20           # lines of the output's tail logged
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Kept(Record, frozen=True):
    """Where a step keeps its decoded data and its script's output: userData and the
    media's customData share this step's code, each with its own files and name."""

    step: str
    label: str
    path: str
    output: str


USER_DATA = Kept(STEP, "userData", USER_DATA_PATH, OUTPUT_PATH)


def run(ctx: Context, boot: Boot) -> StepResult:
    if not has_user_data(boot.api_version):
        return StepResult.skipped(f"api-version {boot.api_version} has no userData")
    try:
        found = boot.user_data() if boot.instance is not None and boot.instance.user_data else None
    except UserDataError as err:
        return StepResult.failed(str(err))
    if found is None or not found.data:
        return forget(ctx, USER_DATA, "no userData")
    return keep(ctx, USER_DATA, found)


def keep(ctx: Context, kept: Kept, found: UserData) -> StepResult:
    """Save the decoded bytes (0700 for a `#!` script, which is left pending for the runner)."""
    mode = 0o700 if found.kind == "script" else 0o600
    changed = writer.write_file(ctx, kept.path, found.data, mode=mode, secret=True)
    outcome = StepResult.done([kept.path] if changed else [])
    outcome.details["kind"] = found.kind
    if found.kind == "script":
        outcome.details["script"] = "pending"
    log(ctx, "info", f"{kept.label} is {found.kind} ({len(found.data)} bytes), kept at {kept.path}", kept.step)
    return outcome


def forget(ctx: Context, kept: Kept, reason: str) -> StepResult:
    """Nothing for this instance: an earlier instance's copy (an image captured without
    `bootagent clean`) must not stay behind, it may hold that instance's secrets."""
    outcome = StepResult.skipped(reason)
    if writer.remove_file(ctx, kept.path):
        outcome.changed.append(kept.path)
    return outcome


def run_script(ctx: Context, boot: Boot, *, force_live: bool = False, kept: Kept = USER_DATA) -> StepResult:
    """The step's final result once its pending script was run (or skipped).

    Returns `boot.results[kept.step]` as it is when no script is pending. `force_live`
    is for tests only: it runs the script although the root is not `/`."""
    saved = boot.results.get(kept.step) or StepResult("unchanged")
    outcome = saved.replace(changed=list(saved.changed), details=dict(saved.details))
    if outcome.details.get("script") != "pending":
        return outcome
    reason = _why_not(ctx, force_live)
    if reason:
        outcome.details.update(script="skipped", script_reason=reason)
        log(ctx, "info", f"{kept.label} script not run: {reason}", kept.step)
        return outcome
    timeout = ctx.config.userdata.script_timeout
    ran = execute(ctx.path(kept.path), timeout, env=script_env(ctx), cwd=ctx.root)
    if ran.start_error is not None:
        outcome.details["script"] = "not started"
        outcome.status, outcome.error = "failed", (
            f"{kept.label} script {kept.path} could not be started: {ran.start_error}; "
            f"check its #! line and that {STATE_DIR} is not mounted noexec")
        return outcome
    _save_output(ctx, ran, outcome, kept)
    outcome.details.update(script="killed" if ran.killed_after is not None else "exited",
                           script_exit_status=ran.exit_status, script_seconds=round(ran.seconds, 3),
                           script_output=kept.output, script_output_dropped=ran.dropped)
    problem = _problem(ran)
    if problem:
        outcome.status, outcome.error = "failed", (
            f"{kept.label} script {problem}; its output is in {kept.output}; "
            "it does not run again for this instance")
    log(ctx, "error" if problem else "info",
        f"{kept.label} script {problem or 'exited with status 0'} after {ran.seconds:.1f} s", kept.step)
    return outcome


def _why_not(ctx: Context, force_live: bool) -> str | None:
    if not ctx.live and not force_live:
        return "root is not /"
    if ctx.dry_run:
        return "dry run"
    if not ctx.config.userdata.run_scripts:
        return "userdata.run_scripts is false"
    return None


def _problem(ran: ScriptRun) -> str | None:
    if ran.killed_after is not None:
        return f"was killed after {ran.killed_after:g} s (userdata.script_timeout)"
    if ran.exit_status is not None and ran.exit_status < 0:
        try:
            name = signal.Signals(-ran.exit_status).name
        except ValueError:
            name = f"signal {-ran.exit_status}"
        return f"was ended by {name}"
    if ran.exit_status:
        return f"exited with status {ran.exit_status}"
    return None


def _save_output(ctx: Context, ran: ScriptRun, outcome: StepResult, kept: Kept) -> None:
    try:
        if writer.write_file(ctx, kept.output, ran.output, mode=0o600):
            outcome.changed.append(kept.output)
    except StepError as err:
        log(ctx, "warning", f"the script's output could not be saved: {err}", kept.step)
    lines = ran.output.decode("utf-8", "replace").splitlines()[-LOGGED_LINES:]
    if lines:
        note = f", {ran.dropped} bytes of it not kept" if ran.dropped else ""
        log(ctx, "info", f"last {len(lines)} lines of the script's output (saved in {kept.output}{note}):",
            kept.step)
    for line in lines:
        log(ctx, "info", "| " + shorten(escaped(line), 300), kept.step)


def script_env(ctx: Context) -> dict:
    """The agent's environment, minus systemd's notify socket (a script must not speak
    for the unit) and the agent's own test seams."""
    env = {k: v for k, v in ctx.env.items() if k != "NOTIFY_SOCKET" and not k.startswith("BOOTAGENT_")}
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("HOME", "/root")
    return env
