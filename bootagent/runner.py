"""The boot run: one pass from configuration to result.json (SPEC "The boot run").

    lock ─> host keys start (beside the fetch when the DMI UUID is known)
         ─> fetch the document ─> per-instance steps, gated by state ─> templates
         ─> join host keys ─> report ─> userData script ─> state, result.json

The host_keys step holds a lock of its own (the early unit's `bootagent host-keys` may be
making the keys): only the join waits for it. Its thread imports nothing: what it needs is
imported before it starts (host_keys.preload), as two threads importing at once can
deadlock in Python 3.11.

A step never stops the others: its failure is recorded and the run goes on. Nothing
here exits or prints; the CLI turns the returned code into the process's exit status.
"""

from __future__ import annotations

import threading

from bootagent import result, writer
from bootagent.boot import Boot
from bootagent.context import Context
from bootagent.errors import BootagentError, DocumentError
from bootagent.imds.document import Instance, parse_body
from bootagent.log import log
from bootagent.state import InstanceState, run_lock
from bootagent.steps import StepResult

PER_INSTANCE = ("hostname", "users", "ssh_keys", "userdata")
MAX_METADATA_FILE = 4 << 20


def resolve_imds_url(value: str, env) -> tuple[str, bool]:
    """`auto`: IMDS_ENDPOINT when the Arc agent set it (then we are on Arc), else Azure's address."""
    if value == "auto":
        arc = env.get("IMDS_ENDPOINT", "").strip()
        return (arc.rstrip("/"), True) if arc else ("http://169.254.169.254", False)
    return value.rstrip("/"), False


class HostKeysJob:
    """Host keys need no document: generate them beside the fetch, join before the result."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.result: StepResult | None = None
        self.thread: threading.Thread | None = None

    def start(self, vm_id: str | None) -> None:
        from bootagent.steps import host_keys

        host_keys.preload()  # the thread must import nothing: see preload
        self.thread = threading.Thread(target=self._run, args=(vm_id,), daemon=True)
        self.thread.start()

    def _run(self, vm_id: str | None) -> None:
        from bootagent.steps import host_keys  # imported by start() or, without a thread, here
        self.result = _timed(self.ctx, "host_keys", lambda: host_keys.run(self.ctx, vm_id))

    def finish(self, vm_id: str | None) -> StepResult:
        if self.thread is None:
            self._run(vm_id)
        else:
            self.thread.join()
        return self.result


def _guarded(name: str, call) -> StepResult:
    """Run one step; whatever it raises becomes its failure, never the run's."""
    try:
        return call()
    except BootagentError as err:
        return StepResult.failed(str(err))
    except Exception as err:  # a bug must not cost the other steps
        return StepResult.failed(f"internal error in step {name}: {type(err).__name__}: {err}; "
                                 "please report it")


def _timed(ctx: Context, name: str, call) -> StepResult:
    """_guarded, with the step's duration_ms recorded (ctx.clock: monotonic)."""
    began = ctx.clock()
    outcome = _guarded(name, call)
    outcome.duration_ms = result.elapsed_ms(began, ctx.clock())
    return outcome


def run(ctx: Context, *, metadata_file: str | None = None) -> tuple[int, dict]:
    """The boot job. Returns (exit code, the result record)."""
    started = ctx.wall()
    began = ctx.clock()
    with run_lock(ctx) if not ctx.dry_run else _nothing():
        host_keys_job = HostKeysJob(ctx)
        if _host_keys_early(ctx) and not ctx.dry_run:
            host_keys_job.start(None)
        imds_info = {"url": ctx.imds_url if not metadata_file else f"file:{metadata_file}",
                     "api_version": ctx.config["imds"]["api_version"], "requests": 0}
        try:
            instance = _fetch(ctx, metadata_file, imds_info)
        except BootagentError as err:
            results = {"host_keys": host_keys_job.finish(None)}
            _log_step(ctx, "host_keys", results["host_keys"])
            log(ctx, "error", str(err))
            record = result.build(instance_id=None, started=started, finished=ctx.wall(),
                                  imds=imds_info, results=results, error=str(err),
                                  duration_ms=result.elapsed_ms(began, ctx.clock()))
            result.write(ctx, record)
            code = 2 if metadata_file and isinstance(err, DocumentError) else err.exit_code
            return code, record
        # the moment the document is had: the real-boot test times the rest of the run from it
        log(ctx, "info", "instance document received")
        boot = _provision(ctx, instance, imds_info["api_version"], host_keys_job)
        record = result.build(instance_id=instance.vm_id, started=started, finished=ctx.wall(),
                              imds=imds_info, results=boot.results,
                              duration_ms=result.elapsed_ms(began, ctx.clock()))
        result.write(ctx, record)
    return (0 if record["status"] == "ok" else 1), record


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _host_keys_early(ctx: Context) -> bool:
    if ctx.config["ssh"]["host_keys"] == "off" or not writer.exists(ctx, "/etc/ssh/sshd_config"):
        return False
    from bootagent.steps import host_keys
    return host_keys.dmi_uuid(ctx) is not None


def _fetch(ctx: Context, metadata_file: str | None, imds_info: dict) -> Instance:
    """The document; imds_info gets the requests made and `duration_ms`, from the first
    request (or opening the file) to the document or the failure."""
    began = ctx.clock()
    try:
        return _fetch_untimed(ctx, metadata_file, imds_info)
    finally:
        imds_info["duration_ms"] = result.elapsed_ms(began, ctx.clock())


def _fetch_untimed(ctx: Context, metadata_file: str | None, imds_info: dict) -> Instance:
    if metadata_file:
        try:
            with open(metadata_file, "rb") as handle:
                body = handle.read(MAX_METADATA_FILE + 1)
        except OSError as err:
            raise DocumentError(f"cannot read --metadata-file {metadata_file}: {err.strerror}") from None
        if len(body) > MAX_METADATA_FILE:
            raise DocumentError(f"--metadata-file {metadata_file} is larger than {MAX_METADATA_FILE} bytes")
        return parse_body(body, f"--metadata-file {metadata_file}")
    from bootagent.http import Http
    from bootagent.imds.client import ImdsClient

    ctx.log.status("fetching the instance document")
    http = Http(ctx.clock, ctx.sleep)
    client = ImdsClient(http, ctx.imds_url, ctx.config["imds"]["api_version"])
    try:
        return client.fetch_document(ctx.deadline)
    finally:
        imds_info["requests"] = http.attempts
        imds_info["api_version"] = client.api_version


def _provision(ctx: Context, instance: Instance, api_version: str, host_keys_job: HostKeysJob) -> Boot:
    from bootagent.steps import report, templates

    if ctx.log is not None:
        ctx.log.instance_id = instance.instance_id
    state = InstanceState.load(ctx)
    boot = Boot(instance, state, state.begin(instance.instance_id), api_version)
    if not boot.new_instance:
        boot.hostname = state.get("hostname").get("hostname")
    for name in PER_INSTANCE:
        _per_instance(ctx, boot, name)
    _step(ctx, boot, "templates", templates.run)
    boot.results["metadata_env"] = _timed(ctx, "metadata_env", lambda: _metadata_env(ctx, boot))
    _log_step(ctx, "metadata_env", boot.results["metadata_env"])
    # joined as late as it can be: while the early unit makes the keys, the steps above run
    boot.results["host_keys"] = host_keys_job.finish(instance.vm_id)
    _log_step(ctx, "host_keys", boot.results["host_keys"])
    _step(ctx, boot, "report_ready", report.run)
    _run_script(ctx, boot)
    if not ctx.dry_run:
        state.save(ctx)
    return boot


def _metadata_env(ctx: Context, boot: Boot) -> StepResult:
    """/run/bootagent/metadata.env and instance.json, for units ordered after ours."""
    from bootagent import metadata_env
    from bootagent.steps.templates import context_hostname

    changed, left_out = metadata_env.write(ctx, boot.instance, context_hostname(ctx, boot))
    for line in left_out:
        log(ctx, "warning", line, step="metadata_env")
    outcome = StepResult.done(changed)
    if left_out:
        outcome.details["left_out"] = len(left_out)
    return outcome


def _per_instance(ctx: Context, boot: Boot, name: str) -> None:
    """Run a per-instance step unless it succeeded for this instance. Its module is imported
    only when it runs: a later boot loads none of them (nor subprocess, shutil, select)."""
    if boot.state.done(name):
        boot.results[name] = StepResult("unchanged", duration_ms=0)
        _log_step(ctx, name, boot.results[name])
        return
    _step(ctx, boot, name, __import__(f"bootagent.steps.{name}", fromlist=["run"]).run)
    outcome = boot.results[name]
    if outcome.status in ("changed", "unchanged"):
        facts = {"hostname": boot.hostname} if name == "hostname" else {}
        boot.state.record(name, True, **facts)
    elif outcome.status == "failed":
        boot.state.record(name, False)


def _step(ctx: Context, boot: Boot, name: str, call) -> None:
    if ctx.log is not None:
        ctx.log.status(f"step {name}")
    boot.results[name] = _timed(ctx, name, lambda: call(ctx, boot))
    _log_step(ctx, name, boot.results[name])


def _run_script(ctx: Context, boot: Boot) -> None:
    """A userData script runs once per instance, last, whatever its exit status."""
    outcome = boot.results.get("userdata")
    if outcome is None or outcome.details.get("script") != "pending":
        return
    if boot.state.get("userdata").get("script_started"):
        outcome.details["script"] = "already ran for this instance"
        return
    from bootagent.steps import userdata

    if ctx.live and not ctx.dry_run and ctx.config["userdata"]["run_scripts"]:
        boot.state.record("userdata", True, script_started=True)
        boot.state.save(ctx)
    final = _timed(ctx, "userdata", lambda: userdata.run_script(ctx, boot))
    final.changed = outcome.changed + [p for p in final.changed if p not in outcome.changed]
    final.duration_ms = (final.duration_ms or 0) + (outcome.duration_ms or 0)  # the step and its script
    boot.results["userdata"] = final
    _log_step(ctx, "userdata", final)


def _log_step(ctx: Context, name: str, outcome: StepResult) -> None:
    detail = outcome.error or outcome.reason or ", ".join(outcome.changed)
    level = "error" if outcome.status == "failed" else "info"
    log(ctx, level, f"{outcome.status}{': ' + detail if detail else ''}", step=name)
