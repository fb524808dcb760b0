"""The provisioning steps. Each module has `run(ctx, boot) -> StepResult`.

A step receives the context and the `Boot` (the parsed instance and what earlier
steps found), changes files only through the writer, and reports what it did.
"""

from __future__ import annotations

from bootagent.record import Factory, Record

ORDER = ("hostname", "users", "ssh_keys", "host_keys", "network", "resource_disk", "userdata",
         "customdata", "templates", "report_ready")


class StepResult(Record):
    status: str  # changed | unchanged | skipped | failed
    changed: list = Factory(list)
    error: str | None = None
    reason: str | None = None
    details: dict = Factory(dict)
    duration_ms: int | None = None   # set by the runner: SPEC "result.json"

    @classmethod
    def skipped(cls, reason: str) -> "StepResult":
        return cls("skipped", reason=reason)

    @classmethod
    def failed(cls, error: str, changed: list | None = None) -> "StepResult":
        return cls("failed", changed=list(changed or []), error=error)

    @classmethod
    def done(cls, changed: list) -> "StepResult":
        return cls("changed" if changed else "unchanged", changed=list(changed))

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def to_json(self) -> dict:
        out: dict[str, object] = {"status": self.status, "changed": self.changed, "error": self.error}
        if self.reason is not None:
            out["reason"] = self.reason
        out.update(self.details)
        if self.duration_ms is not None:
            out["duration_ms"] = self.duration_ms
        return out
