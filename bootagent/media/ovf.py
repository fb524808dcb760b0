"""ovf-env.xml, the provisioning media's document: a pure parser, bytes in, `Media` out.

Elements are found by namespace URI, never by prefix: Azure's own media (`wa:` with
default-namespace children), WALinuxAgent's fixtures (`wa:` everywhere) and cloud-init's
(`ns0:`/`ns1:`) are one document to this parser. expat is driven directly, with handlers
that refuse a DTD (and with it every entity, internal or external) before any of it is
used, so no entity can expand. Every refusal is a one-line MediaError; the password and
customData never appear in one.
"""

from __future__ import annotations

from bootagent.errors import MediaError
from bootagent.record import Record
from bootagent.text import quoted

MAX_MEDIA = 1 << 20
MAX_DEPTH = 32
OVF_NS = "http://schemas.dmtf.org/ovf/environment/1"
WA_NS = "http://schemas.microsoft.com/windowsazure"
WHERE = "ovf-env.xml"

# The elements this parser reads, per parent: each may appear at most once in its parent.
# `PublicKey` is the one list. Both spellings of the pre-provisioning type are one field.
READ = {
    "Environment": ("ProvisioningSection", "PlatformSettingsSection"),
    "ProvisioningSection": ("LinuxProvisioningConfigurationSet",),
    "LinuxProvisioningConfigurationSet": ("HostName", "UserName", "UserPassword",
                                          "DisableSshPasswordAuthentication", "CustomData", "SSH"),
    "SSH": ("PublicKeys",),
    "PublicKey": ("Path", "Value"),
    "PlatformSettingsSection": ("PlatformSettings",),
    "PlatformSettings": ("PreprovisionedVm", "PreprovisionedVMType", "PreprovisionedVmType"),
}
SAME_FIELD = {"PreprovisionedVmType": "PreprovisionedVMType"}


class Media(Record, frozen=True):
    """What the media gave. `password` and `custom_data` (base64 text) are secrets: the
    repr names only whether they are there."""

    hostname: str | None = None
    username: str | None = None
    password: str | None = None
    disable_ssh_password_auth: bool | None = None
    custom_data: str | None = None
    public_keys: tuple = ()             # ((path or None, value), ...)
    preprovisioned: bool = False
    preprovisioned_type: str | None = None

    def __repr__(self) -> str:
        return (f"Media(hostname={self.hostname!r}, username={self.username!r}, "
                f"password={'(set)' if self.password else None}, "
                f"disable_ssh_password_auth={self.disable_ssh_password_auth!r}, "
                f"custom_data={len(self.custom_data) if self.custom_data else 0} chars, "
                f"public_keys={len(self.public_keys)}, preprovisioned={self.preprovisioned!r})")

    __str__ = __repr__


class _Node:
    __slots__ = ("uri", "name", "text", "children", "nil")

    def __init__(self, uri: str, name: str, nil: bool):
        self.uri, self.name, self.nil = uri, name, nil
        self.text: list[str] = []
        self.children: list[_Node] = []


class _Refused(Exception):
    """Raised inside an expat handler; turned into MediaError outside it."""


def parse(data: bytes) -> Media:
    """ovf-env.xml's bytes to a Media; MediaError (one line) when they are refused."""
    if not isinstance(data, (bytes, bytearray)):
        raise MediaError(f"{WHERE} must be read as bytes")
    if len(data) > MAX_MEDIA:
        raise MediaError(f"{WHERE} is larger than {MAX_MEDIA} bytes; refused (a real one is a few KiB)")
    root = _tree(bytes(data))
    if (root.uri, root.name) != (OVF_NS, "Environment"):
        raise MediaError(f"{WHERE}: the document element is not Environment in {OVF_NS}; "
                         "this is not Azure's provisioning media")
    sections = _children(root)
    provisioning = sections.get("ProvisioningSection")
    linux = _children(provisioning).get("LinuxProvisioningConfigurationSet") if provisioning else None
    if linux is None:
        raise MediaError(f"{WHERE} has no ProvisioningSection/LinuxProvisioningConfigurationSet; "
                         "it is not a Linux VM's provisioning media")
    fields = _children(linux)
    username = _text(fields.get("UserName"))
    if fields.get("UserName") is not None and username is None:
        raise MediaError(f"{WHERE} UserName is empty; the media is refused (fix the VM's admin username)")
    password = _text(fields.get("UserPassword"), strip=False)
    custom_data = _text(fields.get("CustomData"))
    settings_section = sections.get("PlatformSettingsSection")
    settings = _children(settings_section).get("PlatformSettings") if settings_section else None
    platform = _children(settings) if settings is not None else {}
    return Media(
        hostname=_text(fields.get("HostName")),
        username=username.strip() if username else None,
        password=password or None,
        disable_ssh_password_auth=_boolean(fields.get("DisableSshPasswordAuthentication"),
                                           "DisableSshPasswordAuthentication"),
        custom_data=custom_data,
        public_keys=_public_keys(fields.get("SSH")),
        preprovisioned=bool(_boolean(platform.get("PreprovisionedVm"), "PreprovisionedVm")),
        preprovisioned_type=_text(platform.get("PreprovisionedVMType")),
    )


def _tree(data: bytes) -> _Node:
    """The document as _Nodes, built by expat with a DTD refused before it is read."""
    from xml.parsers import expat

    parser = expat.ParserCreate(namespace_separator=" ")
    parser.buffer_text = True
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    stack: list[_Node] = []
    top: list[_Node] = []

    def refuse_dtd(*_args):
        raise _Refused(f"{WHERE} has a DTD (<!DOCTYPE>); refused: entities could expand or reach "
                       "outside, and Azure's media has none")

    def refuse_entity(*_args):
        raise _Refused(f"{WHERE} declares an entity; refused")

    def start(name: str, attributes: dict) -> None:
        if len(stack) >= MAX_DEPTH:
            raise _Refused(f"{WHERE} is nested deeper than {MAX_DEPTH} elements; refused")
        uri, _, local = name.rpartition(" ")
        nil = any(key.endswith(" nil") and value.strip() == "true" for key, value in attributes.items())
        node = _Node(uri, local, nil)
        (stack[-1].children if stack else top).append(node)
        stack.append(node)

    def end(_name: str) -> None:
        stack.pop()

    def text(chunk: str) -> None:
        if stack:
            stack[-1].text.append(chunk)

    parser.StartDoctypeDeclHandler = refuse_dtd
    parser.EntityDeclHandler = refuse_entity
    parser.UnparsedEntityDeclHandler = refuse_entity
    parser.ExternalEntityRefHandler = refuse_entity
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    try:
        parser.Parse(data, True)
    except _Refused as err:
        raise MediaError(str(err)) from None
    except expat.ExpatError as err:
        reason = expat.errors.messages.get(err.code, "malformed") if hasattr(err, "code") else "malformed"
        raise MediaError(f"{WHERE} is not well-formed XML ({reason} at line {err.lineno}); "
                         "the media is refused") from None
    except (ValueError, RecursionError, UnicodeError) as err:
        raise MediaError(f"{WHERE} cannot be read as XML ({type(err).__name__}); "
                         "the media is refused") from None
    if not top:
        raise MediaError(f"{WHERE} has no document element; the media is refused")
    return top[0]


def _children(node: _Node | None) -> dict[str, _Node]:
    """The children of `node` that this parser reads (in Azure's namespace below the
    document element), by local name; MediaError when one appears twice."""
    if node is None:
        return {}
    wanted = READ.get(node.name, ())
    found: dict[str, _Node] = {}
    for child in node.children:
        if child.name not in wanted or child.uri != WA_NS:
            continue
        name = SAME_FIELD.get(child.name, child.name)
        if name in found:
            raise MediaError(f"{WHERE}: {child.name} appears twice in {node.name}; the media is refused "
                             "(which one would count is not knowable)")
        found[name] = child
    return found


def _text(node: _Node | None, strip: bool = True) -> str | None:
    """The element's text; None when absent, empty or xsi:nil."""
    if node is None or node.nil:
        return None
    value = "".join(node.text)
    if strip:
        value = value.strip()
    return value or None


def _boolean(node: _Node | None, field: str) -> bool | None:
    value = _text(node)
    if value is None:
        return None
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise MediaError(f"{WHERE} {field} must be true or false, not {quoted(value, 40)}; the media is refused")


def _public_keys(ssh: _Node | None) -> tuple:
    keys_node = _children(ssh).get("PublicKeys")
    if keys_node is None:
        return ()
    keys = []
    for child in keys_node.children:
        if child.uri != WA_NS or child.name != "PublicKey":
            continue
        fields = _children(child)
        value = _text(fields.get("Value"))
        if value is not None:       # a key given only by fingerprint lives in the wireserver's certificates
            keys.append((_text(fields.get("Path")), value))
    return tuple(keys)
