"""`Boot`: what one run knows, handed from step to step.

The instance document, the provisioning media (when a first boot read one), the
per-instance state, the results so far, and what earlier steps decided (the hostname,
the admin account). userData and customData are decoded on first use only: a boot with
nothing to do never decodes them, so it never imports PyYAML.
"""

from __future__ import annotations

from bootagent.accounts import Account
from bootagent.imds.document import Instance
from bootagent.imds.userdata import FIELD as USER_DATA_FIELD
from bootagent.imds.userdata import UserData, UserDataError, classify, decode
from bootagent.record import TYPE_CHECKING, Factory, Record
from bootagent.state import InstanceState
from bootagent.steps import StepResult

CUSTOM_DATA_FIELD = "ovf-env.xml CustomData"

if TYPE_CHECKING:  # the media's modules are imported only when a media is read
    from bootagent.errors import MediaError
    from bootagent.media.ovf import Media


class Boot(Record):
    instance: Instance | None
    state: InstanceState
    new_instance: bool = False
    api_version: str = ""
    results: dict[str, StepResult] = Factory(dict)
    hostname: str | None = None          # what the hostname step set or would set
    admin: Account | None = None         # the admin account once the users step has it
    _decoded: dict = Factory(dict)       # field -> (UserData or None, UserDataError or None)
    media: Media | None = None           # the provisioning media, when one was read
    media_error: MediaError | None = None  # what refused it
    media_source: str | None = None
    media_looked: bool = False           # the media was looked for (provisioning_media not off)

    def user_data(self) -> UserData | None:
        """The decoded userData, None when there is none; UserDataError when it is bad."""
        return self.decode_once(USER_DATA_FIELD, self.instance.user_data if self.instance else None)

    def user_data_mapping(self) -> dict:
        """The YAML userData mapping, or {} (no userData, not YAML, or undecodable)."""
        return _mapping(self.user_data)

    def custom_data(self) -> UserData | None:
        """The media's customData decoded by the userData pipeline; None when there is none."""
        return self.decode_once(CUSTOM_DATA_FIELD, self.media.custom_data if self.media is not None else None)

    def custom_data_mapping(self) -> dict:
        """The YAML customData mapping read from the media on this boot, or {}."""
        return _mapping(self.custom_data)

    def decode_once(self, field: str, encoded: object) -> UserData | None:
        """`encoded` (base64, as in `field`) decoded and classified on the first call for
        `field`; later calls give the same value, or raise the same UserDataError."""
        if field not in self._decoded:
            try:
                found = None if encoded is None else classify(decode(encoded, field), field)
                self._decoded[field] = (found, None)
            except UserDataError as err:
                self._decoded[field] = (None, err)
        found, error = self._decoded[field]
        if error is not None:
            raise error
        return found

    def use_media(self, media, source: str) -> None:
        """Take the media's values where the document lacks them: IMDS stays the source of
        truth for the admin name, password-auth and keys (as in cloud-init)."""
        from bootagent.imds.document import PublicKey

        self.media, self.media_source = media, source
        instance = self.instance
        if instance is None:
            return
        changes: dict = {}
        if instance.admin_username is None and media.username:
            changes.update(admin_username=media.username, has_os_profile=True)
        if instance.disable_password_auth in (None, "") and media.disable_ssh_password_auth is not None:
            changes["disable_password_auth"] = media.disable_ssh_password_auth
        if not instance.public_keys and media.public_keys:
            changes["public_keys"] = tuple(PublicKey(value, path) for path, value in media.public_keys)
        if changes:
            self.instance = instance.replace(**changes)

    @property
    def password(self) -> str | None:
        """The admin password the media gave (plain text: never log, print or store it)."""
        return self.media.password if self.media is not None else None


def _mapping(decoded) -> dict:
    """The YAML mapping `decoded()` gives, or {} (none, not YAML, or undecodable)."""
    try:
        found = decoded()
    except UserDataError:
        return {}
    return found.mapping if found and found.mapping is not None else {}
