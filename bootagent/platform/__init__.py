"""The Azure platform contract: report ready (wireserver), Hyper-V KVP, managed identity.

`on_azure` is the one place that decides whether this machine is an Azure VM: the DMI
chassis asset tag Azure gives every VM. Azure Arc is decided by the IMDS URL instead
(`ctx.on_arc`, set when `imds.url: auto` resolved to IMDS_ENDPOINT).
"""

from __future__ import annotations

AZURE_ASSET_TAG = "7783-7084-3265-9085-8269-3286-77"


def on_azure(ctx) -> bool:
    """True when the DMI chassis asset tag under the root is Azure's."""
    from bootagent import dmi

    return dmi.read_field(ctx, "chassis_asset_tag") == AZURE_ASSET_TAG
