"""Report ready to the platform (SPEC step 7). Placeholder until the platform issue lands."""

from __future__ import annotations

from bootagent.steps import StepResult


def run(ctx, boot) -> StepResult:
    return StepResult.skipped("reporting to the platform is not implemented yet")
