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
output is the user's own report and may be logged.
"""

from __future__ import annotations

import signal

from bootagent import writer
from bootagent.boot import Boot
from bootagent.context import Context
from bootagent.errors import StepError
from bootagent.imds.userdata import UserDataError
from bootagent.imds.versions import has_user_data
from bootagent.log import log
from bootagent.script import ScriptRun, execute
from bootagent.state import STATE_DIR
from bootagent.steps import StepResult
from bootagent.text import escaped, shorten

STEP = "userdata"
USER_DATA_PATH = f"{STATE_DIR}/user-data"
OUTPUT_PATH = f"{STATE_DIR}/user-data.output"
LOGGED_LINES = 20           # lines of the output's tail logged
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def run(ctx: Context, boot: Boot) -> StepResult:
    if not has_user_data(boot.api_version):
        return StepResult.skipped(f"api-version {boot.api_version} has no userData")
    try:
        found = boot.user_data() if boot.instance is not None and boot.instance.user_data else None
    except UserDataError as err:
        return StepResult.failed(str(err))
    if found is None or not found.data:
        return _no_user_data(ctx)
    mode = 0o700 if found.kind == "script" else 0o600
    changed = writer.write_file(ctx, USER_DATA_PATH, found.data, mode=mode, secret=True)
    outcome = StepResult.done([USER_DATA_PATH] if changed else [])
    outcome.details["kind"] = found.kind
    if found.kind == "script":
        outcome.details["script"] = "pending"
    log(ctx, "info", f"userData is {found.kind} ({len(found.data)} bytes), kept at {USER_DATA_PATH}", STEP)
    return outcome


def _no_user_data(ctx: Context) -> StepResult:
    """No userData for this instance: an earlier instance's (an image captured without
    `bootagent clean`) must not stay behind, it may hold that instance's secrets."""
    outcome = StepResult.skipped("no userData")
    if writer.remove_file(ctx, USER_DATA_PATH):
        outcome.changed.append(USER_DATA_PATH)
    return outcome


def run_script(ctx: Context, boot: Boot, *, force_live: bool = False) -> StepResult:
    """The userdata step's final result once its pending script was run (or skipped).

    Returns `boot.results["userdata"]` as it is when no script is pending. `force_live`
    is for tests only: it runs the script although the root is not `/`."""
    saved = boot.results.get(STEP) or StepResult("unchanged")
    outcome = saved.replace(changed=list(saved.changed), details=dict(saved.details))
    if outcome.details.get("script") != "pending":
        return outcome
    reason = _why_not(ctx, force_live)
    if reason:
        outcome.details.update(script="skipped", script_reason=reason)
        log(ctx, "info", f"userData script not run: {reason}", STEP)
        return outcome
    timeout = ctx.config["userdata"]["script_timeout"]
    ran = execute(ctx.path(USER_DATA_PATH), timeout, env=script_env(ctx), cwd=ctx.root)
    if ran.start_error is not None:
        outcome.details["script"] = "not started"
        outcome.status, outcome.error = "failed", (
            f"userData script {USER_DATA_PATH} could not be started: {ran.start_error}; "
            f"check its #! line and that {STATE_DIR} is not mounted noexec")
        return outcome
    _save_output(ctx, ran, outcome)
    outcome.details.update(script="killed" if ran.killed_after is not None else "exited",
                           script_exit_status=ran.exit_status, script_seconds=round(ran.seconds, 3),
                           script_output=OUTPUT_PATH, script_output_dropped=ran.dropped)
    problem = _problem(ran)
    if problem:
        outcome.status, outcome.error = "failed", (
            f"userData script {problem}; its output is in {OUTPUT_PATH}; "
            "it does not run again for this instance")
    log(ctx, "error" if problem else "info",
        f"userData script {problem or 'exited with status 0'} after {ran.seconds:.1f} s", STEP)
    return outcome


def _why_not(ctx: Context, force_live: bool) -> str | None:
    if not ctx.live and not force_live:
        return "root is not /"
    if ctx.dry_run:
        return "dry run"
    if not ctx.config["userdata"]["run_scripts"]:
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


def _save_output(ctx: Context, ran: ScriptRun, outcome: StepResult) -> None:
    try:
        if writer.write_file(ctx, OUTPUT_PATH, ran.output, mode=0o600):
            outcome.changed.append(OUTPUT_PATH)
    except StepError as err:
        log(ctx, "warning", f"the script's output could not be saved: {err}", STEP)
    lines = ran.output.decode("utf-8", "replace").splitlines()[-LOGGED_LINES:]
    if lines:
        note = f", {ran.dropped} bytes of it not kept" if ran.dropped else ""
        log(ctx, "info", f"last {len(lines)} lines of the script's output (saved in {OUTPUT_PATH}{note}):",
            STEP)
    for line in lines:
        log(ctx, "info", "| " + shorten(escaped(line), 300), STEP)


def script_env(ctx: Context) -> dict:
    """The agent's environment, minus systemd's notify socket (a script must not speak
    for the unit) and the agent's own test seams."""
    env = {k: v for k, v in ctx.env.items() if k != "NOTIFY_SOCKET" and not k.startswith("BOOTAGENT_")}
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("HOME", "/root")
    return env
