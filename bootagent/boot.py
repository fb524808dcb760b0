"""`Boot`: what one run knows, handed from step to step.

The instance document, the provisioning media (when a first boot read one), the
per-instance state, the results so far, and what earlier steps decided (the hostname,
the admin account). userData and customData are decoded on first use only: a boot with
nothing to do never decodes them, so it never imports PyYAML.
"""

from __future__ import annotations

from bootagent.accounts import Account
from bootagent.imds.document import Instance
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
    _user_data: UserData | None = None
    _user_data_error: UserDataError | None = None
    _decoded: bool = False
    media: Media | None = None           # the provisioning media, when one was read
    media_error: MediaError | None = None  # what refused it
    media_source: str | None = None
    media_looked: bool = False           # the media was looked for (provisioning_media not off)
    _custom_data: UserData | None = None
    _custom_data_error: UserDataError | None = None
    _custom_decoded: bool = False

    def user_data(self) -> UserData | None:
        """The decoded userData, None when there is none; UserDataError when it is bad."""
        if not self._decoded:
            self._decoded = True
            encoded = self.instance.user_data if self.instance else None
            if encoded is not None:
                try:
                    self._user_data = classify(decode(encoded))
                except UserDataError as err:
                    self._user_data_error = err
        if self._user_data_error is not None:
            raise self._user_data_error
        return self._user_data

    def user_data_mapping(self) -> dict:
        """The YAML userData mapping, or {} (no userData, not YAML, or undecodable)."""
        try:
            found = self.user_data()
        except UserDataError:
            return {}
        return found.mapping if found and found.mapping is not None else {}

    def custom_data(self) -> UserData | None:
        """The media's customData decoded by the userData pipeline; None when there is none."""
        if not self._custom_decoded:
            self._custom_decoded = True
            encoded = self.media.custom_data if self.media is not None else None
            if encoded is not None:
                try:
                    self._custom_data = classify(decode(encoded, CUSTOM_DATA_FIELD), CUSTOM_DATA_FIELD)
                except UserDataError as err:
                    self._custom_data_error = err
        if self._custom_data_error is not None:
            raise self._custom_data_error
        return self._custom_data

    def custom_data_mapping(self) -> dict:
        """The YAML customData mapping read from the media on this boot, or {}."""
        try:
            found = self.custom_data()
        except UserDataError:
            return {}
        return found.mapping if found and found.mapping is not None else {}

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
