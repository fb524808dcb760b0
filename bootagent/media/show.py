"""`bootagent metadata --media`: what the provisioning media gives, secrets left out.

The password is shown as "(set)", customData as its size; the rest as the media has it.
"""

from __future__ import annotations

import json

from bootagent.context import Context
from bootagent.errors import BootagentError, MediaError


def summary(media, source: str) -> dict:
    """The media as a user may see it: never the password or the customData itself."""
    from bootagent.imds.userdata import UserDataError, decode

    custom = None
    if media.custom_data:
        try:
            custom = f"{len(decode(media.custom_data, 'ovf-env.xml CustomData'))} bytes"
        except UserDataError as err:
            custom = f"{len(media.custom_data)} characters of text that do not decode ({err})"
    return {"source": source, "hostname": media.hostname, "username": media.username,
            "password": "(set)" if media.password else None,
            "disable_ssh_password_auth": media.disable_ssh_password_auth,
            "custom_data": custom,
            "public_keys": [{"path": path, "value": value} for path, value in media.public_keys],
            "preprovisioned": media.preprovisioned, "preprovisioned_type": media.preprovisioned_type}


def describe(ctx: Context, path: str | None, fmt: str) -> str:
    """The printed answer; BootagentError (exit 1) when there is no media or it is refused."""
    from bootagent.media.find import read_media
    from bootagent.media.ovf import parse

    found = read_media(ctx, path)
    if found is None:
        how = ctx.config.azure.provisioning_media
        why = ("azure.provisioning_media is off" if how == "off" else
               "no CD device holds ovf-env.xml (auto looks only on a live root on Azure, not on Arc)")
        raise BootagentError(f"no provisioning media: {why}; give its path with --media PATH")
    try:
        facts = summary(parse(found.data), found.source)
    except MediaError as err:
        raise MediaError(f"{err} (read from {found.source})") from None
    if fmt == "json":
        return json.dumps(facts, indent=2) + "\n"
    lines = []
    for key, value in facts.items():
        if key == "public_keys":
            value = ", ".join(f"{k['path'] or '(default path)'}: {k['value']}" for k in value) or None
        lines.append(f"{key}: {'' if value is None else value}")
    return "\n".join(lines) + "\n"
