"""The boot run: one pass from configuration to result.json (SPEC "The boot run").

    lock ─> host keys start (beside the fetch when the DMI UUID is known)
         ─> fetch the document ─> the provisioning media, when a step that uses it is due
         ─> per-instance steps, gated by state ─> network ─> templates
         ─> join host keys ─> report ─> customData script ─> userData script
         ─> state, result.json

The media is read once, beside the document, and only while a per-instance step that
uses it has not succeeded for this instance: a later boot never looks for it. A refused
media fails the customdata step alone; the other steps go on from IMDS.

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
from bootagent.log import log, log_step
from bootagent.state import InstanceState, run_lock
from bootagent.steps import StepResult
from bootagent.text import one_line, quoted

PER_INSTANCE = ("hostname", "users", "ssh_keys", "userdata", "customdata")
MEDIA_STEPS = ("hostname", "users", "ssh_keys", "customdata")   # the steps that read the media
SCRIPTS = ("customdata", "userdata")                            # their scripts run in this order
PREPROVISIONED = ("ovf-env.xml says PreprovisionedVm is true (one of Azure's pre-provisioned "
                  "pools): not supported, so the pool's placeholder identity was not provisioned; "
                  "create the VM without a pre-provisioned pool")
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
        return self.result or StepResult.failed("internal error: the host keys' thread ended without a result")


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


def run(ctx: Context, *, metadata_file: str | None = None,
        provisioning_media: str | None = None) -> tuple[int, dict]:
    """The boot job. Returns (exit code, the result record).

    result.json is written however the run ends (SPEC "Hardening"): a fetch that fails,
    a per-instance state that cannot be read or saved, even a bug, is the record's
    `error`, so `status --wait` never waits for a run that has ended."""
    started = ctx.wall()
    began = ctx.clock()
    with run_lock(ctx) if not ctx.dry_run else _nothing():
        host_keys_job = HostKeysJob(ctx)
        if _host_keys_early(ctx) and not ctx.dry_run:
            host_keys_job.start(None)
        imds_info = {"url": ctx.imds_url if not metadata_file else f"file:{metadata_file}",
                     "api_version": ctx.config.imds.api_version, "requests": 0}
        results: dict[str, StepResult] = {}
        instance: Instance | None = None
        error: str | None = "the run was interrupted"
        code = 1
        try:
            instance = _fetch(ctx, metadata_file, imds_info)
            # the moment the document is had: the real-boot test times the rest of the run from it
            log(ctx, "info", "instance document received")
            _provision(ctx, instance, str(imds_info["api_version"]), host_keys_job, results,
                       provisioning_media)
            error, code = None, 0
        except BootagentError as err:
            error = str(err)
            code = 2 if metadata_file and isinstance(err, DocumentError) else err.exit_code
        except Exception as err:  # a bug: recorded like any failure, never a run without a result
            error = f"internal error: {type(err).__name__}: {one_line(err)}; please report it"
        finally:
            if "host_keys" not in results and error != "the run was interrupted":
                results["host_keys"] = host_keys_job.finish(instance.vm_id if instance else None)
                log_step(ctx, "host_keys", results["host_keys"])
            if error is not None:
                log(ctx, "error", error)
            record = result.build(instance_id=instance.vm_id if instance else None, started=started,
                                  finished=ctx.wall(), imds=imds_info, results=results, error=error,
                                  boot=result.boot_id(), duration_ms=result.elapsed_ms(began, ctx.clock()))
            try:
                result.write(ctx, record)
            except BootagentError as err:
                log(ctx, "error", f"cannot record the run's result: {err}")
                code = 1
    if code == 0 and record["status"] != "ok":
        code = 1
    return code, record


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _host_keys_early(ctx: Context) -> bool:
    try:
        if ctx.config.ssh.host_keys == "off" or not writer.exists(ctx, "/etc/ssh/sshd_config"):
            return False
    except BootagentError:  # a symlink on the way: the step itself says so, after the fetch
        return False
    from bootagent.steps import host_keys
    return host_keys.dmi_uuid(ctx) is not None


def read_metadata_file(path: str) -> Instance:
    """The instance document in a file the caller named (`run` and `render --metadata-file`);
    DocumentError naming the file."""
    body = read_caller_file(path, MAX_METADATA_FILE, "--metadata-file", DocumentError)
    return parse_body(body, f"--metadata-file {path}")


def read_caller_file(path: str, limit: int, what: str, error: type[BootagentError]) -> bytes:
    """The bytes of a file the caller named (never taken under the root), at most `limit`;
    `error` naming it when it cannot be read or is larger."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as err:
        raise error(f"cannot read {what} {quoted(path)}: {err.strerror}; check the path") from None
    if len(data) > limit:
        raise error(f"{what} {quoted(path)} is larger than {limit} bytes")
    return data


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
        return read_metadata_file(metadata_file)
    from bootagent.http import Http
    from bootagent.imds.client import ImdsClient

    if ctx.log is not None:
        ctx.log.status("fetching the instance document")
    http = Http(ctx.clock, ctx.sleep)
    client = ImdsClient(http, ctx.imds_url, ctx.config.imds.api_version)
    try:
        return client.fetch_document(ctx.deadline)
    finally:
        imds_info["requests"] = http.attempts
        imds_info["api_version"] = client.api_version


def _provision(ctx: Context, instance: Instance, api_version: str, host_keys_job: HostKeysJob,
               results: dict[str, StepResult], provisioning_media: str | None = None) -> Boot:
    """The steps, into `results`. A per-instance state that cannot be read stops here (no
    step may run twice for want of it); one that cannot be saved is the run's error."""
    from bootagent.steps import network, report, templates

    if ctx.log is not None:
        ctx.log.instance_id = instance.instance_id
    state = InstanceState.load(ctx)
    boot = Boot(instance, state, state.begin(instance.instance_id), api_version, results=results)
    if not boot.new_instance:
        boot.hostname = state.get("hostname").get("hostname")
    if not all(state.done(name) for name in MEDIA_STEPS):
        _read_media(ctx, boot, provisioning_media)
    preprovisioned = getattr(boot.media_error, "reason", None) == "preprovisioned"
    for name in PER_INSTANCE:
        if preprovisioned and name != "customdata":  # customdata says why: the media's refusal
            _not_provisioned(ctx, boot, name)
        else:
            _per_instance(ctx, boot, name)
    for name, step in (("network", network.run), ("resource_disk", _resource_disk),
                       ("templates", templates.run), ("metadata_env", _metadata_env)):
        if preprovisioned:
            _not_provisioned(ctx, boot, name)
        else:
            _step(ctx, boot, name, step)
    # joined as late as it can be: while the early unit makes the keys, the steps above run
    boot.results["host_keys"] = host_keys_job.finish(instance.vm_id)
    log_step(ctx, "host_keys", boot.results["host_keys"])
    _step(ctx, boot, "report_ready", report.run)
    for name in SCRIPTS:
        _run_script(ctx, boot, name)
    if not ctx.dry_run:
        state.save(ctx)
    return boot


def _not_provisioned(ctx: Context, boot: Boot, name: str) -> None:
    """A pre-provisioned pool's placeholder identity gets none of this step."""
    boot.results[name] = StepResult.skipped("a pre-provisioned VM: not provisioned")
    log_step(ctx, name, boot.results[name])


def _resource_disk(ctx: Context, boot: Boot) -> StepResult:
    """The resource_disk step, its module imported only when it runs."""
    from bootagent.steps import resource_disk

    return resource_disk.run(ctx, boot)


def _metadata_env(ctx: Context, boot: Boot) -> StepResult:
    """/run/bootagent/metadata.env and instance.json, for units ordered after ours."""
    from bootagent import metadata_env
    from bootagent.steps.templates import context_hostname

    if boot.instance is None:
        return StepResult.skipped("no instance document")
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
        log_step(ctx, name, boot.results[name])
        return
    _step(ctx, boot, name, __import__(f"bootagent.steps.{name}", fromlist=["run"]).run)
    outcome = boot.results[name]
    # customdata skipped once the media was looked for (none, or none with customData) is
    # settled for this instance: later boots neither look for the media nor load the step
    settled = name == "customdata" and outcome.status == "skipped" and boot.media_looked
    if outcome.status in ("changed", "unchanged") or settled:
        facts = {"hostname": boot.hostname} if name == "hostname" else {}
        boot.state.record(name, True, **facts)
    elif outcome.status == "failed":
        boot.state.record(name, False)


def _step(ctx: Context, boot: Boot, name: str, call) -> None:
    if ctx.log is not None:
        ctx.log.status(f"step {name}")
    boot.results[name] = _timed(ctx, name, lambda: call(ctx, boot))
    log_step(ctx, name, boot.results[name])


def _read_media(ctx: Context, boot: Boot, explicit: str | None) -> None:
    """Find and parse the provisioning media; a refusal is kept for the customdata step.
    Imports nothing and runs nothing when there is no media to look at."""
    from bootagent.errors import MediaError
    from bootagent.media.find import read_media

    if not explicit and ctx.config.azure.provisioning_media == "off":
        return
    boot.media_looked = True
    try:
        found = read_media(ctx, explicit)
        if found is None:
            return
        from bootagent.media.ovf import parse

        media = parse(found.data)
    except MediaError as err:
        boot.media_error = err
        log(ctx, "error", f"provisioning media refused, going on from IMDS alone: {err}", step="customdata")
        return
    if media.preprovisioned:
        boot.media_error = MediaError(PREPROVISIONED, reason="preprovisioned")
        log(ctx, "error", PREPROVISIONED, step="customdata")
        return
    boot.use_media(media, found.source)
    log(ctx, "info", f"provisioning media read from {found.source}", step="customdata")


def _run_script(ctx: Context, boot: Boot, name: str) -> None:
    """A customData or userData script runs once per instance, last, whatever its exit
    status: the one code path of the userdata step (steps/userdata.py run_script)."""
    outcome = boot.results.get(name)
    deferred = boot.state.get(name).get("script_deferred")
    if outcome is not None and deferred and outcome.status == "unchanged":
        outcome.details["script"] = "pending"  # kept by an earlier boot that could not run it
    if outcome is None or outcome.details.get("script") != "pending":
        return
    if boot.state.get(name).get("script_started"):
        outcome.details["script"] = "already ran for this instance"
        return
    from bootagent.steps import userdata

    kept = userdata.USER_DATA
    if name == "customdata":
        from bootagent.steps import customdata

        kept = customdata.CUSTOM_DATA
    if ctx.live and not ctx.dry_run and ctx.config.userdata.run_scripts:
        boot.state.record(name, True, script_started=True)
        boot.state.save(ctx)  # a save that fails stops here: the script must not run twice
    final = _timed(ctx, name, lambda: userdata.run_script(ctx, boot, kept=kept))
    final.changed = outcome.changed + [p for p in final.changed if p not in outcome.changed]
    final.duration_ms = (final.duration_ms or 0) + (outcome.duration_ms or 0)  # the step and its script
    boot.results[name] = final
    if final.details.get("script") == "skipped":
        # not done: once scripts may run (userdata.run_scripts, the live root), the next
        # boot runs it (SPEC "Hardening"). userData is fetched again, so its step runs
        # again; customData's media is gone by then, so its kept script waits as deferred.
        if name == "customdata":
            boot.state.record(name, True, script_deferred=True)
        else:
            boot.state.forget(name)
    log_step(ctx, name, final)
