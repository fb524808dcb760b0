"""Step `customdata` (per instance): the provisioning media's customData, kept and run.

customData (`az vm create --custom-data`) is only on the media, which Azure removes at a
later boot. It goes through exactly the userData pipeline (strict base64, bounded gunzip,
YAML mapping / `#!` script / other bytes: bootagent/imds/userdata.py) and is kept at
/var/lib/bootagent/custom-data (0600, 0700 for a script), where templates read it on
every boot as `customdata`. A script runs once per instance after the other steps and
before the userData script, through the userdata step's own runner code.

A media that was refused fails this step with its one line; every other step has gone
on from IMDS as if there were no media. Its content is never logged or reported.
"""

from __future__ import annotations

from bootagent.boot import Boot
from bootagent.context import Context
from bootagent.imds.userdata import UserDataError
from bootagent.state import CUSTOM_DATA_PATH, STATE_DIR
from bootagent.steps import StepResult
from bootagent.steps.userdata import Kept, forget, keep

STEP = "customdata"
OUTPUT_PATH = f"{STATE_DIR}/custom-data.output"
CUSTOM_DATA = Kept(STEP, "customData", CUSTOM_DATA_PATH, OUTPUT_PATH)


def run(ctx: Context, boot: Boot) -> StepResult:
    if boot.media_error is not None:
        return StepResult.failed(str(boot.media_error))
    if boot.media is None:
        return forget(ctx, CUSTOM_DATA, "no provisioning media")
    try:
        found = boot.custom_data()
    except UserDataError as err:
        return StepResult.failed(f"{err}; the media's customData was not kept")
    if found is None or not found.data:
        return forget(ctx, CUSTOM_DATA, "no customData on the provisioning media")
    return keep(ctx, CUSTOM_DATA, found)
