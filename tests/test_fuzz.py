"""Fuzzing the parsers (issue 8, item 4): whatever they are given, each returns a value
or raises the project's own BootagentError with a one-line message; nothing else escapes,
and what they return stays bounded by what they were given.

Hypothesis, with a bounded number of examples so the suite stays fast. Strategies mix
pure noise with near-valid inputs (a valid key with one byte changed, a YAML mapping
with a broken timestamp, a goal state with a DTD) because that is where parsers break.
"""

from __future__ import annotations

import base64
import gzip
import json
import string

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bootagent import config
from bootagent.errors import BootagentError, ConfigError, DocumentError, StepError
from bootagent.fake.server import default_document
from bootagent.imds import document, userdata
from bootagent.imds.document import MAX_TAGS, parse_body, parse_document, parse_tags_list, parse_tags_string
from bootagent.steps import hostname as hostname_step
from bootagent.steps import ssh_keys
from conftest import examples
from reliability.strategies import hostile_documents, json_values, nasty_text

FUZZ = settings(max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---- strategies -------------------------------------------------------------------

def clean_error(err: BootagentError) -> None:
    """The project's errors are one line: what failed, on what input, what to do."""
    message = str(err)
    assert message and "\n" not in message, repr(message)
    assert "Traceback" not in message


def outcome(call, *args, errors=(BootagentError,)):
    """Call; a BootagentError (checked to be one line) becomes None; anything else escapes."""
    try:
        return call(*args)
    except errors as err:
        clean_error(err)
        return None


# ---- tags -------------------------------------------------------------------------

tag_strings = st.one_of(
    nasty_text,
    st.lists(st.tuples(st.text(max_size=10), st.text(max_size=10)), max_size=20).map(
        lambda pairs: ";".join(f"{k}:{v}" for k, v in pairs)),
    st.integers(1, 3 * MAX_TAGS).map(lambda n: ";".join(f"t{i}:v" for i in range(n))),
)


@FUZZ
@given(st.one_of(tag_strings, json_values))
def test_tags_string_parser_returns_a_bounded_map_or_a_document_error(text):
    tags = outcome(parse_tags_string, text, errors=(DocumentError,))
    if tags is None:
        return
    assert isinstance(text, str)
    assert len(tags) <= MAX_TAGS
    assert sum(len(k) + len(v) for k, v in tags.items()) <= len(text)
    for name, value in tags.items():
        assert isinstance(name, str) and isinstance(value, str)
        assert name and name == name.strip() and ";" not in name + value and ":" not in name


tag_items = st.one_of(
    json_values,
    st.fixed_dictionaries({"name": json_values, "value": json_values}),
    st.fixed_dictionaries({"name": st.text(min_size=1, max_size=20), "value": st.text(max_size=40)}),
)


@FUZZ
@given(st.one_of(st.lists(tag_items, max_size=12), json_values,
                 st.integers(MAX_TAGS - 1, MAX_TAGS + 2).map(
                     lambda n: [{"name": f"t{i}", "value": ""} for i in range(n)])))
def test_tags_list_reader_returns_a_bounded_map_or_a_document_error(items):
    tags = outcome(parse_tags_list, items, errors=(DocumentError,))
    if tags is None:
        return
    assert len(tags) <= min(len(items), MAX_TAGS)
    assert all(isinstance(k, str) and k and isinstance(v, str) for k, v in tags.items())


# ---- SSH key lines ----------------------------------------------------------------

def _blob(key_type: str, rest: bytes) -> str:
    name = key_type.encode()
    return base64.b64encode(len(name).to_bytes(4, "big") + name + rest).decode()


valid_key_lines = st.builds(
    lambda key_type, rest, comment, pad: f"{pad}{key_type} {_blob(key_type, rest)}{comment}{pad}",
    st.sampled_from(ssh_keys.KEY_TYPES), st.binary(max_size=64),
    st.one_of(st.just(""), st.text(alphabet=st.characters(categories=("L", "N", "P", "S")) | st.just(" "),
                                   max_size=30).map(lambda c: " " + c)),
    st.sampled_from(["", " ", "\r", "\n", " \r\n", "\t"]))


@st.composite
def mutated(draw, lines):
    line = draw(lines)
    if not line or not draw(st.booleans()):
        return line
    at = draw(st.integers(0, len(line) - 1))
    return line[:at] + draw(st.text(max_size=3)) + line[at + 1:]


@FUZZ
@given(st.one_of(mutated(valid_key_lines), nasty_text, json_values,
                 valid_key_lines.map(lambda k: "command=\"x\" " + k),
                 valid_key_lines.map(lambda k: k + "\n" + k),
                 st.just("ssh-ed25519 " + "A" * (ssh_keys.MAX_KEY + 1))))
@example("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOUyAgM7EUqN/t9w5rEmjm9/93c5tvpl1fOB0ShjXRpc x\x00y")
def test_ssh_key_validator_returns_one_normalized_line_or_refuses_naming_the_key(key_data):
    line = outcome(ssh_keys.parse_key, key_data, 3, errors=(StepError,))
    if line is None:
        return
    assert isinstance(key_data, str) and len(line) <= len(key_data)
    assert "\n" not in line and "\r" not in line and "\0" not in line
    assert line.split()[0] in ssh_keys.KEY_TYPES
    assert ssh_keys.parse_key(line) == line            # normalized: a fixed point
    assert ssh_keys.key_identity(line.encode()) is not None


@FUZZ
@given(valid_key_lines)
def test_every_well_formed_key_line_is_accepted(key_data):
    assert ssh_keys.parse_key(key_data).split()[:2] == key_data.split()[:2]


@FUZZ
@given(st.one_of(json_values, nasty_text, st.text(alphabet="/.a", max_size=30).map(lambda p: "/home/a" + p)))
def test_key_path_check_returns_a_path_strictly_inside_the_home_or_refuses(path):
    checked = outcome(ssh_keys.check_key_path, path, "/home/a", 0, errors=(StepError,))
    if checked is not None:
        assert checked.startswith("/home/a/") and "/../" not in checked + "/" and "\0" not in checked


# ---- hostname ---------------------------------------------------------------------

hostnames = st.one_of(
    json_values, nasty_text,
    st.lists(st.text(alphabet=string.ascii_letters + string.digits + "-", min_size=0, max_size=70),
             min_size=1, max_size=6).map(".".join))


@FUZZ
@given(hostnames)
def test_hostname_validator_never_raises_and_accepts_only_rfc1123(name):
    valid = hostname_step.valid_hostname(name)
    assert isinstance(valid, bool)
    if valid:
        assert 0 < len(name) <= 253 and name.isascii()
        assert all(0 < len(label) <= 63 and not label.startswith("-") and not label.endswith("-")
                   for label in name.split("."))
        hosts = hostname_step.update_hosts(b"127.0.0.1\tlocalhost\n", name)
        assert hosts.count(hostname_step.HOSTS_MARKER) == 1


@FUZZ
@given(userdata_name=st.one_of(st.nothing(), hostnames) | st.just(None), computer=hostnames, name=hostnames)
def test_choosing_the_hostname_returns_a_valid_one_or_fails_without_quoting_userdata(userdata_name, computer, name):
    doc = default_document()
    doc["compute"]["osProfile"]["computerName"] = computer
    doc["compute"]["name"] = name
    mapping = {} if userdata_name is None else {"hostname": userdata_name}
    try:
        chosen, source = hostname_step.choose_hostname(parse_document(doc), mapping)
    except StepError as err:
        clean_error(err)
        if isinstance(userdata_name, str) and len(userdata_name) >= 4:
            assert userdata_name not in str(err)
        return
    assert chosen is None or hostname_step.valid_hostname(chosen)


@FUZZ
@given(st.binary(max_size=300), st.sampled_from(["vm", "a.example.com", "X-1"]))
def test_hosts_update_keeps_every_other_line_and_manages_exactly_one(current, name):
    updated = hostname_step.update_hosts(current, name)
    theirs = [line for line in current.split(b"\n")
              if not line.rstrip(b"\r \t").endswith(hostname_step.HOSTS_MARKER)]
    ours = [line for line in updated.split(b"\n")
            if line.rstrip(b"\r \t").endswith(hostname_step.HOSTS_MARKER)]
    assert ours == [hostname_step.hosts_line(name)]
    assert [line for line in updated.split(b"\n") if line not in ours] == theirs
    assert hostname_step.update_hosts(updated, name) == updated


# ---- userData ---------------------------------------------------------------------

SECRET = "s3cr3t-Value-42"
yaml_scalars = st.one_of(
    st.sampled_from(["2001-02-30", "2021-13-01", "0000-01-01", "2001-02-03 25:61:61",
                     "2001-02-03T04:05:06+99:00", "9999-12-31 23:59:60", "1e999", "0x_", "0o9",
                     "!!binary xyz", "!!timestamp nope", "*unknown", "&a [*a]", "{? [1]: 2}",
                     "<<: 5", "!!python/object:os.system x", "'unclosed", "[" * 60, SECRET]),
    st.text(alphabet=string.printable, max_size=20))
yaml_texts = st.builds(
    lambda header, pairs: header + "".join(f"{k}: {v}\n" for k, v in pairs),
    st.sampled_from(["", "#cloud-config\n", "#!/bin/sh\n", "---\n"]),
    st.lists(st.tuples(st.sampled_from(["hostname", "motd", "a", "<<", "? x"]), yaml_scalars), max_size=5))
user_data_bytes = st.one_of(st.binary(max_size=300), yaml_texts.map(str.encode),
                            st.just(b"\x1f\x8b" + b"\0" * 20))
DEEP_YAML = b"[" * 3000     # PyYAML takes a second to give up on it: an @example, not a draw
GZIP_BOMB = gzip.compress(b"\0" * (userdata.MAX_DECODED + 1))


@FUZZ
@given(user_data_bytes)
@example(DEEP_YAML)
@example(b"#cloud-config\n" + DEEP_YAML)
def test_classify_returns_a_kind_or_a_userdata_error_never_quoting_the_content(data):
    found = outcome(userdata.classify, data, errors=(userdata.UserDataError,))
    if found is None:
        return
    assert found.kind in ("yaml", "script", "other") and found.data == data
    assert (found.mapping is not None) == (found.kind == "yaml")
    assert found.mapping is None or isinstance(found.mapping, dict)


@st.composite
def encoded_user_data(draw):
    raw = draw(user_data_bytes)
    form = draw(st.sampled_from(["plain", "gzip", "truncated-gzip", "garbage", "spaces", "bomb"]))
    if form == "gzip":
        raw = gzip.compress(raw)
    elif form == "truncated-gzip":
        raw = gzip.compress(raw)[:draw(st.integers(0, 30))]
    elif form == "bomb":
        raw = GZIP_BOMB
    text = base64.b64encode(raw).decode()
    if form == "garbage":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.text(min_size=1, max_size=3)) + text[at:]
    elif form == "spaces":
        text = f"  {text}\n"
    return text


@FUZZ
@given(st.one_of(encoded_user_data(), json_values, nasty_text))
def test_decode_returns_bounded_bytes_or_a_userdata_error(encoded):
    raw = outcome(userdata.decode, encoded, errors=(userdata.UserDataError,))
    if raw is not None:
        assert isinstance(raw, bytes) and len(raw) <= userdata.MAX_DECODED
        found = outcome(userdata.classify, raw, errors=(userdata.UserDataError,))
        assert found is None or found.data == raw


@settings(max_examples=examples(50), deadline=None)
@given(yaml_texts.map(lambda text: text + f"password: {SECRET}\n"))
def test_userdata_errors_never_carry_its_content(text):
    for call, arg in ((userdata.classify, text.encode()), (userdata.decode, text)):
        try:
            call(arg)
        except userdata.UserDataError as err:
            assert SECRET not in str(err)


# ---- the configuration ------------------------------------------------------------

config_keys = st.sampled_from(sorted(config.CHECKS))
config_leaves = st.one_of(
    json_values, st.sampled_from(["auto", "regenerate", "keep", "off", "2021-08-01", "0644", "644",
                                  "http://127.0.0.1:1", "sudo", 0, 1, 0.0, 1.0, -1, 86401, float("inf"),
                                  float("nan"), "/mnt", "/dev/sdb", "ext4", "xfs", "a/../b"]))
template_entries = st.one_of(json_values, st.dictionaries(
    st.sampled_from(sorted(config.TEMPLATE_KEYS) + ["extra"]),
    st.one_of(config_leaves, st.sampled_from(["motd.j2", "/etc/motd", "../x", "/", "/a/../b",
                                              "/a\0b", "tags.get('x')", "0o777", "0999"])),
    max_size=7))


@st.composite
def config_values(draw):
    raw = {}
    for dotted in draw(st.lists(config_keys, max_size=6)):
        *sections, key = dotted.split(".")
        node = raw
        for section in sections:
            node = node.setdefault(section, {}) if isinstance(node.get(section, {}), dict) else {}
        node[key] = draw(config_leaves)
    if draw(st.booleans()):
        raw["templates"] = draw(st.one_of(st.lists(template_entries, max_size=3), json_values))
    if draw(st.integers(0, 9)) == 0:
        raw[draw(st.text(max_size=8))] = draw(json_values)
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    return raw


def _check_types(typed: config.Config) -> None:
    """A configuration that validated has the types the rest of the agent relies on."""
    assert config.from_dict(typed.to_dict()) == typed  # the parse cache gives it back whole
    cfg = typed.to_dict()
    assert set(cfg) == set(config.Config._fields)
    for section in ("hostname", "users", "ssh"):
        assert type(cfg[section]["enabled"]) is bool
    assert type(cfg["userdata"]["run_scripts"]) is bool
    for section, key in (("imds", "timeout"), ("userdata", "script_timeout")):
        value = cfg[section][key]
        assert type(value) in (int, float) and 0 < value <= 86400
    assert cfg["imds"]["api_version"] in config.SUPPORTED_API_VERSIONS
    assert isinstance(cfg["imds"]["api_version"], str)
    assert cfg["ssh"]["host_keys"] in ("regenerate", "keep", "off")
    report = cfg["azure"]["report_ready"]
    assert report == "auto" or type(report) is bool, repr(report)
    media = cfg["azure"]["provisioning_media"]
    assert media in ("auto", "off") or (isinstance(media, str) and media.startswith("/") and "\0" not in media)
    assert all(isinstance(g, str) for g in cfg["users"]["groups"])
    disk = cfg["azure"]["resource_disk"]
    assert disk["enabled"] == "auto" or type(disk["enabled"]) is bool
    assert type(disk["swap_mb"]) is int and disk["swap_mb"] >= 0
    assert disk["mount"].startswith("/") and disk["filesystem"] in ("ext4", "ext3", "ext2")
    for entry in cfg["templates"]:
        assert set(entry) == set(config.TEMPLATE_KEYS)
        assert type(entry["mode"]) is int and 0 <= entry["mode"] <= 0o7777
        assert entry["dest"].startswith("/") and "\0" not in entry["dest"]


@FUZZ
@given(config_values())
@example({"azure": {"report_ready": 0}})
@example({"azure": {"report_ready": 1.0}})
@example({"\n": 1})
@example({"azure": {"provisioning_media": "/dev/sr0\n"}})
def test_config_validation_returns_a_well_typed_config_or_a_config_error(raw):
    cfg = outcome(config.validate, raw, "bootagent.yaml", errors=(ConfigError,))
    if cfg is not None:
        _check_types(cfg)


yaml_documents = st.one_of(
    st.binary(max_size=200), yaml_texts.map(str.encode),
    config_values().map(lambda raw: json.dumps(raw, default=str).encode()),
    st.sampled_from([b"imds:\n  timeout: 2001-02-30\n", b"imds: {api_version: 2021-08-01}\n",
                     b"\xff\xfe", b"a: &a [*a, *a]\n", b"templates: !!binary x\n"]))


@pytest.fixture(scope="module")
def config_root(tmp_path_factory):
    return tmp_path_factory.mktemp("config-root")


@FUZZ
@given(data=yaml_documents)
@example(data=DEEP_YAML)
def test_config_loader_returns_a_config_or_a_config_error(config_root, data):
    from bootagent.context import Context

    path = config_root / "bootagent.yaml"
    path.write_bytes(data)
    ctx = Context(root=str(config_root), env={})
    cfg = outcome(config.load, ctx, str(path), errors=(ConfigError,))
    if cfg is not None:
        _check_types(cfg)


# ---- the goal state ---------------------------------------------------------------

def goal_state(incarnation: str, container: str, instance: str, prolog: str = "") -> bytes:
    return (f'{prolog}<GoalState xmlns:i="http://www.w3.org/2001/XMLSchema-instance">'
            f"<Incarnation>{incarnation}</Incarnation><Container><ContainerId>{container}</ContainerId>"
            f"<RoleInstanceList><RoleInstance><InstanceId>{instance}</InstanceId></RoleInstance>"
            f"</RoleInstanceList></Container></GoalState>").encode("utf-8", "surrogatepass")


xml_text = st.one_of(st.text(max_size=30), st.sampled_from(
    ["&amp;", "&lt;x&gt;", "&#0;", "&#x1F;", "]]>", "<![CDATA[a]]>", "<x/>", "&lol;", "\x01", "a" * 2000]))
goal_states = st.one_of(
    st.binary(max_size=300),
    st.builds(goal_state, xml_text, xml_text, xml_text, st.sampled_from(
        ["", '<?xml version="1.0" encoding="utf-16"?>', '<?xml version="1.0" encoding="bogus"?>',
         '<!DOCTYPE g [<!ENTITY lol "lol">]>', "\ufeff", "<!-- c -->", '<?xml version="2.0"?>'])),
    st.builds(goal_state, xml_text, xml_text, xml_text).map(lambda b: b.decode("utf-8", "replace").encode("utf-16")),
    st.builds(goal_state, xml_text, xml_text, xml_text).flatmap(
        lambda b: st.integers(0, len(b)).map(lambda n: b[:n])),
)


@FUZZ
@given(goal_states)
def test_goal_state_parser_returns_three_bounded_fields_or_a_step_error(body):
    from bootagent.platform import wireserver

    found = outcome(wireserver.parse_goal_state, body, errors=(StepError,))
    if found is not None:
        for value in (found.incarnation, found.container_id, found.instance_id):
            assert isinstance(value, str) and 0 < len(value) <= wireserver.MAX_FIELD
            assert not any(ord(c) < 32 and c not in "\t\n\r" for c in value)
        wireserver.health_document(found, False, "x")   # what it feeds must build


# ---- the instance document --------------------------------------------------------

@FUZZ
@given(st.one_of(hostile_documents(), json_values))
def test_document_parser_returns_an_instance_or_a_document_error(value):
    instance = outcome(parse_document, value, errors=(DocumentError,))
    if instance is None:
        return
    assert isinstance(instance.vm_id, str) and instance.vm_id and instance.vm_id == instance.vm_id.strip()
    assert isinstance(instance.compute, dict) and isinstance(instance.network, dict)
    assert isinstance(instance.tags, dict) and len(instance.tags) <= MAX_TAGS
    assert (instance.tags_error is None) or isinstance(instance.tags_error, str)
    assert all(isinstance(k, document.PublicKey) for k in instance.public_keys)


@FUZZ
@given(st.one_of(st.binary(max_size=200), hostile_documents().map(lambda d: json.dumps(d).encode()),
                 hostile_documents().map(lambda d: json.dumps(d).encode()).flatmap(
                     lambda b: st.integers(0, len(b)).map(lambda n: b[:n]))))
def test_document_bytes_parse_to_an_instance_or_a_document_error(body):
    outcome(parse_body, body, "IMDS", errors=(DocumentError,))
