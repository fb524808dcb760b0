"""bootagent.yaml: the spec's defaults, strict validation naming key and file, exit 2 from
`bootagent run`, and the parse cache that keeps PyYAML out of a boot with nothing to do."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bootagent import config
from bootagent.context import Context
from bootagent.errors import ConfigError
from conftest import run_cli

CONFIG = "etc/bootagent/bootagent.yaml"


def write_config(root: Path, text: str) -> Path:
    path = root / CONFIG
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def load(root: Path) -> dict:
    """The loaded configuration as plain data (the typed Config's to_dict)."""
    return config.load(Context(root=str(root))).to_dict()


def test_defaults_are_the_specs(root):
    loaded = load(root)  # no file at all
    assert loaded["imds"] == {"url": "auto", "api_version": "2021-08-01", "timeout": 300}
    assert loaded["hostname"] == {"enabled": True}
    assert loaded["users"] == {"enabled": True, "groups": ["sudo"], "sudo": True}
    assert loaded["ssh"] == {"enabled": True, "host_keys": "regenerate"}
    assert loaded["userdata"]["run_scripts"] is True
    assert loaded["azure"] == {"report_ready": "auto", "wireserver": "http://168.63.129.16",
                               "provisioning_media": "auto",
                               "resource_disk": {"enabled": "auto", "device": "auto", "mount": "/mnt",
                                                 "filesystem": "ext4", "swap_mb": 0}}
    assert loaded["network"] == {"enabled": "auto"}
    assert loaded["templates"] == []
    assert set(loaded) == {"imds", "hostname", "users", "ssh", "userdata", "azure", "network", "templates"}


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n", "imds:\n"])
def test_an_empty_file_means_the_defaults(root, text):
    write_config(root, text)
    assert load(root) == config.defaults().to_dict()


def test_given_keys_override_and_the_rest_stay_default(root):
    write_config(root, "imds:\n  timeout: 20\nssh:\n  host_keys: keep\nusers:\n  groups: [wheel, adm]\n")
    loaded = load(root)
    assert loaded["imds"] == {"url": "auto", "api_version": "2021-08-01", "timeout": 20}
    assert loaded["ssh"] == {"enabled": True, "host_keys": "keep"}
    assert loaded["users"]["groups"] == ["wheel", "adm"]


def test_a_template_entry_gets_its_defaults(root):
    write_config(root, "templates:\n  - src: motd.j2\n    dest: /etc/motd\n")
    [entry] = load(root)["templates"]
    assert entry == {"src": "motd.j2", "dest": "/etc/motd", "when": None, "mode": 0o644,
                     "owner": "root", "group": "root"}


@pytest.mark.parametrize("mode,expected", [('"0644"', 0o644), ('"0600"', 0o600), ('"755"', 0o755),
                                           ("0640", 0o640), ('"2775"', 0o2775)])
def test_good_modes(root, mode, expected):
    write_config(root, f"templates:\n  - src: a.j2\n    dest: /etc/a\n    mode: {mode}\n")
    assert load(root)["templates"][0]["mode"] == expected


BAD = [
    # (yaml, words the message must hold besides the file name)
    ("bogus: 1\n", ["bogus"]),
    ("imds:\n  urll: http://x\n", ["imds.urll"]),
    ("templates:\n  - src: a.j2\n    dest: /etc/a\n    owner_name: x\n", ["templates[0]", "owner_name"]),
    ("hostname:\n  enabled: yes please\n", ["hostname.enabled"]),
    ("hostname: true\n", ["hostname"]),
    ("imds:\n  timeout: soon\n", ["imds.timeout"]),
    ("imds:\n  timeout: true\n", ["imds.timeout"]),
    ("imds:\n  timeout: -1\n", ["imds.timeout"]),
    ("imds:\n  url: ftp://x\n", ["imds.url"]),
    ("users:\n  groups: sudo\n", ["users.groups"]),
    ("ssh:\n  host_keys: sometimes\n", ["ssh.host_keys"]),
    ("azure:\n  report_ready: maybe\n", ["azure.report_ready"]),
    ("network:\n  enabled: 1\n", ["network.enabled"]),
    ("network:\n  enabled: off-ish\n", ["network.enabled"]),
    ("templates: {src: a.j2}\n", ["templates"]),
    ("templates:\n  - src: a.j2\n    dest: /etc/a\n    mode: rw-r--r--\n", ["templates[0].mode"]),
    ("templates:\n  - src: a.j2\n    dest: /etc/a\n    mode: \"99\"\n", ["templates[0].mode"]),
    ("templates:\n  - src: a.j2\n    dest: /etc/a\n    mode: \"0888\"\n", ["templates[0].mode"]),
    ("templates:\n  - src: a.j2\n    dest: /etc/a\n    mode: true\n", ["templates[0].mode"]),
    ("templates:\n  - src: a.j2\n    dest: /etc/a\n    mode: 644\n", ["templates[0].mode"]),
    ("templates:\n  - src: a.j2\n    dest: /etc/a\n    mode: 70000\n", ["templates[0].mode"]),
    ("templates:\n  - src: a.j2\n    dest: etc/motd\n", ["templates[0].dest"]),
    ("templates:\n  - src: a.j2\n    dest: /etc/../../motd\n", ["templates[0].dest"]),
    ("templates:\n  - src: a.j2\n    dest: /\n", ["templates[0].dest"]),
    ("templates:\n  - src: ../../etc/shadow\n    dest: /etc/a\n", ["templates[0].src"]),
    ("templates:\n  - src: /etc/shadow\n    dest: /etc/a\n", ["templates[0].src"]),
    ("templates:\n  - dest: /etc/a\n", ["templates[0].src"]),
    ("templates:\n  - src: a.j2\n    dest: /etc/a\n    when: 3\n", ["templates[0].when"]),
    ("templates:\n  - src: a.j2\n    dest: /etc/a\n    owner: \"root; rm -rf /\"\n", ["templates[0].owner"]),
    ('imds:\n  api_version: "2018-10-01"\n', ["imds.api_version", "2018-10-01"]),
    ("imds:\n  api_version: latest\n", ["imds.api_version"]),
    ("- just\n- a list\n", ["mapping"]),
    ("imds: [unclosed\n", ["YAML", "line"]),
]


@pytest.mark.parametrize("text,words", BAD, ids=[repr(t) for t, _ in BAD])
def test_a_bad_configuration_names_the_key_and_the_file(root, text, words):
    path = write_config(root, text)
    with pytest.raises(ConfigError) as caught:
        load(root)
    message = str(caught.value)
    assert str(path) in message
    for word in words:
        assert word in message
    assert "\n" not in message
    assert caught.value.exit_code == 2


def test_an_unquoted_api_version_date_is_read_as_the_version(root):
    write_config(root, "imds:\n  api_version: 2020-09-01\n")  # YAML reads this as a date
    assert load(root)["imds"]["api_version"] == "2020-09-01"


def test_run_with_a_bad_configuration_exits_2_with_one_line(root):
    path = write_config(root, "imds:\n  timeout: 300\n  retries: 5\n")
    done = run_cli("run", "--root", str(root), "--imds-url", "http://127.0.0.1:9", "--timeout", "1")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    line = done.stderr.strip()
    assert "\n" not in line, done.stderr
    assert "imds.retries" in line and str(path) in line
    assert not (root / "run/bootagent/result.json").exists()  # nothing ran


def test_run_with_a_bad_explicit_config_names_that_file(root, tmp_path):
    explicit = tmp_path / "other.yaml"
    explicit.write_text("ssh:\n  host_keys: always\n")
    done = run_cli("run", "--root", str(root), "--config", str(explicit), "--imds-url",
                   "http://127.0.0.1:9", "--timeout", "1")
    assert done.returncode == 2
    line = done.stderr.strip()
    assert "\n" not in line and str(explicit) in line and "ssh.host_keys" in line


def test_a_missing_explicit_config_is_exit_2(root, tmp_path):
    done = run_cli("run", "--root", str(root), "--config", str(tmp_path / "nope.yaml"))
    assert done.returncode == 2
    assert "nope.yaml" in done.stderr and "Traceback" not in done.stderr


# -- the parse cache -------------------------------------------------------------------------

LOAD_AND_TELL = """
import json, sys
from bootagent import config
from bootagent.context import Context
loaded = config.load(Context(root=sys.argv[1]))
print(json.dumps({"yaml": "yaml" in sys.modules, "config": loaded.to_dict()}))
"""


def load_in_fresh_process(root: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", LOAD_AND_TELL, str(root)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_same_bytes_are_not_parsed_twice(root):
    write_config(root, "imds:\n  timeout: 42\ntemplates:\n  - src: motd.j2\n    dest: /etc/motd\n")

    first = load_in_fresh_process(root)
    second = load_in_fresh_process(root)

    assert first["yaml"] is True
    assert second["yaml"] is False
    assert second["config"] == first["config"]
    assert second["config"]["imds"]["timeout"] == 42


def test_changed_bytes_are_parsed_again(root):
    path = write_config(root, "imds:\n  timeout: 42\n")
    load_in_fresh_process(root)
    path.write_text("imds:\n  timeout: 43\n")

    again = load_in_fresh_process(root)

    assert again["yaml"] is True
    assert again["config"]["imds"]["timeout"] == 43
    assert load_in_fresh_process(root)["yaml"] is False


def test_a_bad_configuration_is_never_served_from_the_cache(root):
    path = write_config(root, "imds:\n  timeout: 42\n")
    load(root)
    path.write_text("imds:\n  timeout: 42\n  bogus: 1\n")
    with pytest.raises(ConfigError):
        load(root)
    with pytest.raises(ConfigError):
        load(root)


def test_no_configuration_file_imports_no_yaml(root):
    assert load_in_fresh_process(root)["yaml"] is False



@pytest.mark.parametrize("key_prefix", [b"", b"0.0.1\0"], ids=["bytes-only-key", "older-version"])
def test_a_cache_left_by_another_agent_version_is_not_trusted(root, key_prefix):
    """The cache holds a validated result: this agent validates the bytes itself."""
    import hashlib

    raw = b"imds:\n  timeout: 42\n"
    (root / CONFIG).parent.mkdir(parents=True, exist_ok=True)
    (root / CONFIG).write_bytes(raw)
    stale = config.defaults().to_dict()
    stale["imds"]["timeout"] = 7  # what another agent concluded from the same bytes
    cache = root / "var/lib/bootagent/config-cache.json"
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"sha256": hashlib.sha256(key_prefix + raw).hexdigest(), "config": stale}))

    assert load(root)["imds"]["timeout"] == 42


# -- command-line values go through the same checks (issue 17, defect 6) --------------------

@pytest.mark.parametrize("command", [["run"], ["metadata"], ["status"]])
@pytest.mark.parametrize("value", ["nan", "inf", "-5", "0", "86401"])
def test_a_bad_timeout_on_the_command_line_is_exit_2_with_one_line(root, command, value):
    """`--timeout nan` used to retry forever and `-5` to give up at once with exit 3."""
    url = [] if command == ["status"] else ["--imds-url", "http://127.0.0.1:9"]
    done = run_cli(*command, "--root", str(root), *url, f"--timeout={value}", timeout=20)
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert "\n" not in line and "--timeout" in line and "Traceback" not in line
    assert not (root / "run/bootagent/result.json").exists()


def test_a_bad_imds_url_on_the_command_line_is_refused_as_in_the_file(root):
    done = run_cli("metadata", "--root", str(root), "--imds-url", "ftp://x\nEvil: 1", "--timeout", "1")
    assert done.returncode == 2
    line = done.stderr.strip()
    assert "\n" not in line and "--imds-url" in line and "\\n" in line


def test_the_schema_and_the_typed_config_name_the_same_settings():
    """One table: every key of the schema is a field of its section, and nothing else is."""
    fields = set()

    def walk(prefix: str, record_type) -> None:
        for name in record_type._fields:
            key = f"{prefix}.{name}" if prefix else name
            if key in config.SECTION_TYPES:
                walk(key, config.SECTION_TYPES[key])
            elif key != "templates":
                fields.add(key)

    walk("", config.Config)
    assert fields == set(config.CHECKS)


def test_the_typed_config_is_frozen_and_read_by_attribute(root):
    write_config(root, "azure:\n  resource_disk:\n    swap_mb: 2048\nnetwork:\n  enabled: false\n")
    loaded = config.load(Context(root=str(root)))
    assert loaded.azure.resource_disk.swap_mb == 2048 and loaded.network.enabled is False
    assert loaded.users.groups == ("sudo",)
    with pytest.raises(AttributeError):
        loaded.users.sudo = False


@pytest.mark.parametrize("text,read", [
    ("ssh:\n  host_keys: off\n", lambda c: c.ssh.host_keys),
    ("azure:\n  provisioning_media: off\n", lambda c: c.azure.provisioning_media),
])
def test_an_unquoted_off_is_the_word_off(root, text, read):
    """YAML 1.1 reads an unquoted `off` as false; `host_keys: off` as the README shows it
    was refused as "not False"."""
    write_config(root, text)
    assert read(config.load(Context(root=str(root)))) == "off"


@pytest.mark.parametrize("text", ["ssh:\n  host_keys: true\n", "ssh:\n  host_keys: no_keys\n",
                                  "azure:\n  provisioning_media: on\n"])
def test_other_booleans_are_still_refused_where_a_word_is_meant(root, text):
    write_config(root, text)
    with pytest.raises(ConfigError):
        config.load(Context(root=str(root)))
