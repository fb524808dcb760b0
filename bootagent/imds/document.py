"""The instance document as typed fields: pure functions from JSON values, no I/O.

IMDS sends every primitive as a string and an empty string for a missing value, so
the readers here treat "" as absent. A document is a JSON object whose `compute`
object holds a non-empty string `vmId`; anything else is refused with DocumentError.
"""

from __future__ import annotations

import json

from bootagent.errors import DocumentError
from bootagent.record import Factory, Record
from bootagent.text import one_line

MAX_TAGS = 1000


class PublicKey(Record, frozen=True):
    key_data: object
    path: object


class Instance(Record, frozen=True):
    vm_id: str
    compute: dict
    network: dict
    name: str | None = None
    computer_name: object = None
    admin_username: object = None
    has_os_profile: bool = False
    disable_password_auth: object = None
    public_keys: tuple = ()
    tags: dict = Factory(dict)
    tags_error: str | None = None
    user_data: object = None
    document: dict = Factory(dict)   # the whole document, as parsed (instance.json is made of it)

    @property
    def instance_id(self) -> str:
        return self.vm_id.lower()


def parse_body(body: bytes, source: str) -> Instance:
    """Bytes from IMDS or a file to an Instance; DocumentError names the source."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise DocumentError(f"{source} is not JSON ({one_line(err, 80)}); an instance document is the JSON "
                            "object IMDS serves at /metadata/instance") from None
    return parse_document(value, source)


def parse_document(value: object, source: str = "the instance document") -> Instance:
    if not isinstance(value, dict):
        raise DocumentError(f"{source} is not an instance document: a JSON object was expected")
    compute = value.get("compute")
    if not isinstance(compute, dict):
        raise DocumentError(f"{source} is not an instance document: it has no 'compute' object")
    vm_id = compute.get("vmId")
    if not isinstance(vm_id, str) or not vm_id.strip():
        raise DocumentError(f"{source} is not an instance document: compute.vmId is missing or empty")
    network = value.get("network")
    os_profile = compute.get("osProfile")
    has_profile = isinstance(os_profile, dict)
    profile: dict = os_profile if isinstance(os_profile, dict) else {}
    tags, tags_error = _tags_of(compute)
    keys = compute.get("publicKeys")
    return Instance(
        vm_id=vm_id.strip(),
        compute=compute,
        network=network if isinstance(network, dict) else {},
        name=compute.get("name") if isinstance(compute.get("name"), str) else None,
        computer_name=_present(profile.get("computerName")),
        admin_username=_present(profile.get("adminUsername")),
        has_os_profile=has_profile,
        disable_password_auth=profile.get("disablePasswordAuthentication"),
        public_keys=tuple(_public_keys(keys)),
        tags=tags,
        tags_error=tags_error,
        user_data=_present(compute.get("userData")),
        document=value,
    )


def _present(value: object) -> object:
    return None if value is None or value == "" else value


def _public_keys(value: object) -> list[PublicKey]:
    if not isinstance(value, list):
        return []
    return [PublicKey(entry.get("keyData"), entry.get("path")) if isinstance(entry, dict)
            else PublicKey(entry, None) for entry in value]


def _tags_of(compute: dict) -> tuple[dict, str | None]:
    """tagsList when present (it can hold ';' and ':'), else the `tags` string."""
    try:
        tags_list = compute.get("tagsList")
        if isinstance(tags_list, list) and tags_list:
            return parse_tags_list(tags_list), None
        tags = compute.get("tags")
        return (parse_tags_string(tags) if isinstance(tags, str) else {}), None
    except DocumentError as err:
        return {}, str(err)


def parse_tags_string(text: str) -> dict[str, str]:
    """'a:1;b:2' to {'a': '1', 'b': '2'}. A value keeps any further ':'; a name without ':' maps to ''."""
    if not isinstance(text, str):
        raise DocumentError("compute.tags is not a string")
    tags: dict[str, str] = {}
    for item in text.split(";"):
        if not item.strip():
            continue
        name, _, value = item.partition(":")
        name = name.strip()
        if name:
            tags[name] = value
        if len(tags) > MAX_TAGS:
            raise DocumentError(f"compute.tags has more than {MAX_TAGS} tags")
    return tags


def parse_tags_list(items: list) -> dict[str, str]:
    """[{'name': 'a', 'value': '1'}] to {'a': '1'}; entries of another shape are refused."""
    if not isinstance(items, list):
        raise DocumentError("compute.tagsList is not a list")
    if len(items) > MAX_TAGS:
        raise DocumentError(f"compute.tagsList has more than {MAX_TAGS} entries")
    tags: dict[str, str] = {}
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise DocumentError(f"compute.tagsList[{index}] is not an object")
        name, value = item.get("name"), item.get("value", "")
        if not isinstance(name, str) or not name:
            raise DocumentError(f"compute.tagsList[{index}].name is not a non-empty string")
        if not isinstance(value, str):
            raise DocumentError(f"compute.tagsList[{index}].value is not a string")
        tags[name] = value
    return tags

