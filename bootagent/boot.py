"""`Boot`: what one run knows, handed from step to step.

The instance document, the per-instance state, the results so far, and what earlier
steps decided (the hostname, the admin account). userData is decoded on first use
only: a boot with nothing to do never decodes it, so it never imports PyYAML.
"""

from __future__ import annotations

from bootagent.accounts import Account
from bootagent.imds.document import Instance
from bootagent.imds.userdata import UserData, UserDataError, classify, decode
from bootagent.record import Factory, Record
from bootagent.state import InstanceState
from bootagent.steps import StepResult


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
