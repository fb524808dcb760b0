"""Report ready to the platform (SPEC step 7): the wireserver, and Hyper-V KVP beside it.

Without a report, Azure marks a VM from a generalized image OSProvisioningTimedOut
after 40 minutes. A report is due once per instance, and once more when the last one
delivered was NotReady and this boot is Ready. The per-instance state records it only
once the wireserver accepted it, so an undelivered report is tried at the next boot.
The runner does not gate this step: it reads and records its own state.
"""

from __future__ import annotations

from bootagent.errors import BootagentError
from bootagent.log import log
from bootagent.platform import on_azure
from bootagent.steps import ORDER, StepResult

STEP = "report_ready"
MIN_SECRET = 16  # bytes: shorter text is too likely to be the steps' own words


def skip_reason(ctx) -> str | None:
    """Why no report is sent on this machine, or None when reports are on."""
    mode = ctx.config.azure.report_ready
    if mode is False:
        return "azure.report_ready is false"
    if ctx.on_arc:
        return "on Azure Arc: no wireserver"
    if mode == "auto" and not on_azure(ctx):
        return "not on Azure (no Azure chassis asset tag)"
    return None


def run(ctx, boot) -> StepResult:
    reason = skip_reason(ctx)
    if reason:
        return StepResult.skipped(reason)
    failures = [(name, boot.results[name]) for name in ORDER
                if name != STEP and name in boot.results and not boot.results[name].ok]
    ready = not failures
    state = "Ready" if ready else "NotReady"
    delivered = boot.state.get(STEP).get("delivered") if boot.state.done(STEP) else None
    if delivered == "Ready" or (delivered == "NotReady" and not ready):
        return StepResult("unchanged", reason=f"{delivered} was already reported for this instance")
    description = None if ready else describe(failures, boot)
    # One KVP record per outcome and instance: a boot that only retries an unreachable
    # wireserver appends no copy of what the host has already been told.
    told = boot.state.get(STEP).get("kvp")
    changed = [] if told == state else _kvp(ctx, boot, ready, description)
    url = ctx.config.azure.wireserver
    if ctx.dry_run:
        ctx.changes.append((url, f"would report {state} to the wireserver at {url}"
                                 + (f" ({description})" if description else "")))
        return StepResult("changed", changed=changed, details={"reported": state})
    from bootagent.platform import wireserver

    try:
        wireserver.report(ctx, wireserver.client(ctx), url, ready, description, ctx.deadline)
    except BootagentError as err:
        if changed or told == state:
            boot.state.record(STEP, False, kvp=state)
        return StepResult.failed(f"reporting {state} to the wireserver failed: {err}; it is tried again "
                                 f"at the next boot (check the way to {url} with `bootagent doctor`)",
                                 changed)
    boot.state.record(STEP, True, delivered=state)
    return StepResult("changed", changed=changed, details={"reported": state})


def describe(failures: list, boot) -> str:
    """'failed steps: a, b; a: <its error>; b: ...' — names first, so truncation keeps them."""
    from bootagent.platform.wireserver import MAX_DESCRIPTION, clean_description

    names = ", ".join(name for name, _ in failures)
    errors = []
    for name, outcome in failures:
        lines = (outcome.error or "").strip().splitlines()
        errors.append(f"{name}: {lines[0] if lines else 'failed'}")
    text = f"failed steps: {names}; " + _without_media_secrets(_without_user_data("; ".join(errors), boot), boot)
    return clean_description(text)[:MAX_DESCRIPTION]


def _without_user_data(text: str, boot) -> str:
    """A safety net: the steps never quote userData in errors (they name the field). Only
    whole values are replaced, each of MIN_SECRET bytes or more: the userData encoded and
    decoded, and each string of a YAML mapping. A net of shorter pieces (words, lines)
    would garble the steps' own text when userData holds `keys` or `host`."""
    instance = boot.instance
    encoded = instance.user_data.strip() if instance is not None and isinstance(instance.user_data, str) else ""
    secrets = [encoded]
    if encoded:
        try:
            found = boot.user_data()
        except BootagentError:
            found = None
        if found is not None:
            secrets.append(found.data.decode("utf-8", "replace").strip())
            secrets += list(_strings(found.mapping or {}))
    for secret in sorted({s for s in secrets if len(s.encode()) >= MIN_SECRET}, key=len, reverse=True):
        text = text.replace(secret, "[userData]")
    return text


def _without_media_secrets(text: str, boot) -> str:
    """The same net for the media's password and customData (steps never quote them)."""
    media = getattr(boot, "media", None)
    secrets = [media.password] if media is not None and media.password else []
    if media is not None and media.custom_data:
        secrets.append(media.custom_data)
        try:
            found = boot.custom_data()
        except BootagentError:
            found = None
        if found is not None:
            decoded = found.data.decode("utf-8", "replace")
            secrets += [decoded.strip(), *(line.strip() for line in decoded.splitlines())]
    for secret in sorted({s for s in secrets if len(s) >= MIN_SECRET}, key=len, reverse=True):
        text = text.replace(secret, "[secret]")
    return text


def _strings(value):
    if isinstance(value, str):
        yield value.strip()
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _kvp(ctx, boot, ready: bool, description: str | None) -> list:
    """The KVP record for the host; its failure is logged, never the step's."""
    from bootagent.platform import kvp

    try:
        written = kvp.report(ctx, ready, boot.instance.vm_id, description)
    except BootagentError as err:
        log(ctx, "warning", f"could not append the KVP report: {err}", step=STEP)
        return []
    except OSError as err:
        log(ctx, "warning", f"could not append the KVP report to {kvp.POOL_FILE}: {err.strerror}", step=STEP)
        return []
    return [written] if written else []
