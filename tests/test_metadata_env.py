"""/run/bootagent/metadata.env and instance.json: what a unit or a shell reads back is
exactly the document's values, hostile tag values included; what cannot be written is
left out and named in the log; the files are rewritten only when their bytes change.

A shell reads the file with `set -a; . FILE` (a plain `.` assigns without exporting);
systemd's EnvironmentFile= reads it in the real boot (tests/test_realboot_tools.py).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bootagent import metadata_env
from bootagent.imds.document import parse_document
from conftest import b64, result_json, run_cli

ENV = "run/bootagent/metadata.env"
INSTANCE = "run/bootagent/instance.json"
HOSTILE = {
    "quote": "it's \"quoted\"",
    "dollar": "$HOME and ${HOME} and `id` and $(id)",
    "backslash": "a\\b\\\\c\\",
    "both-quotes-and-backslash": "'\\'\"\\\"",
    "spaces": "  lead and trail  ",
    "tilde": "~root",
    "hash": "#not a comment",
    "equals": "a=b=c",
    "unicode": "naïve ☃",
    "empty": "",
    "plain": "web-01.example.com:8080/x",
}
LEFT_OUT = {"newline": "line1\nline2", "nul": "a\x00b", "tab": "a\tb", "cr": "a\rb"}


def read_with_sh(path: Path) -> dict[str, str]:
    """The AZURE_ variables bash sees after `set -a; . FILE` (NUL-separated: values may
    hold anything but a NUL)."""
    done = subprocess.run(["bash", "-c", 'set -a; . "$1"; env -0', "bash", str(path)],
                          capture_output=True, env={"PATH": os.environ["PATH"]}, timeout=30)
    assert done.returncode == 0, done.stderr
    pairs = [item.decode("utf-8").split("=", 1) for item in done.stdout.split(b"\0") if item]
    return {name: value for name, value in pairs if name.startswith("AZURE_")}


def with_tags(document: dict, tags: dict) -> dict:
    document["compute"]["tagsList"] = [{"name": k, "value": v} for k, v in tags.items()]
    document["compute"]["tags"] = ""
    return document


def boot(root: Path, document: dict, tmp_path: Path):
    doc = tmp_path / "doc.json"
    doc.write_text(json.dumps(document))
    return run_cli("run", "--root", str(root), "--metadata-file", str(doc))


# -- the encoder: pure, and read alike by sh ---------------------------------------------------

@pytest.mark.parametrize("value, written", [
    ("westeurope", "westeurope"),
    ("", "''"),
    ("a b", "'a b'"),
    ("$HOME", "'$HOME'"),
    ("it's", '"it\'s"'),
    ("it's $x `y` \"z\" \\", '"it\'s \\$x \\`y\\` \\"z\\" \\\\"'),
    ("~root", "'~root'"),
    ("a=b", "'a=b'"),
])
def test_each_value_takes_one_of_the_three_forms(value, written):
    assert metadata_env.quote_value(value) == written


def test_shlex_quote_style_concatenation_is_never_written():
    """shlex.quote gives 'it'"'"'s', which systemd reads otherwise than sh."""
    assert metadata_env.quote_value("it's") == '"it\'s"'
    for value in HOSTILE.values():
        quoted = metadata_env.quote_value(value)
        assert quoted.count("'") in (0, 2) or quoted.startswith('"'), quoted


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30),
                min_size=1, max_size=8))
def test_sh_reads_back_exactly_the_values_written(tmp_path_factory, values):
    path = tmp_path_factory.mktemp("env") / "metadata.env"
    pairs = [(f"AZURE_TAG_V{index}", value) for index, value in enumerate(values)]
    document = with_tags({"compute": {"vmId": "x"}}, {f"v{i}": v for i, v in enumerate(values)})
    written, left_out = metadata_env.variables(parse_document(document), "")
    path.write_bytes(metadata_env.encode(written))
    expected = {name: value for name, value in pairs if not metadata_env._CONTROL.search(value)}
    assert read_with_sh(path) == {"AZURE_VM_ID": "x", **expected}
    assert len(left_out) == len(pairs) - len(expected)


def test_tag_names_become_upper_case_with_other_characters_as_underscores():
    assert metadata_env.tag_variable("cost-center.v2") == "AZURE_TAG_COST_CENTER_V2"
    assert metadata_env.tag_variable("Env") == "AZURE_TAG_ENV"
    assert metadata_env.tag_variable("café") == "AZURE_TAG_CAF_"
    assert metadata_env.tag_variable("") is None
    assert metadata_env.tag_variable("!!!") is None
    assert metadata_env.tag_variable("_-_") is None


# -- a boot writes both files --------------------------------------------------------------------

def test_a_boot_writes_metadata_env_that_sh_reads_as_the_document_says(root, document, tmp_path):
    with_tags(document, {"env": "prod", **HOSTILE})
    done = boot(root, document, tmp_path)
    assert done.returncode == 0, done.stderr
    compute = document["compute"]
    expected = {
        "AZURE_VM_ID": compute["vmId"], "AZURE_VM_NAME": compute["name"],
        "AZURE_LOCATION": compute["location"], "AZURE_ZONE": compute["zone"],
        "AZURE_VM_SIZE": compute["vmSize"], "AZURE_RESOURCE_GROUP": compute["resourceGroupName"],
        "AZURE_SUBSCRIPTION_ID": compute["subscriptionId"], "AZURE_HOSTNAME": "demo-vm-01",
        "AZURE_PRIVATE_IPV4": "10.0.0.4", "AZURE_TAG_ENV": "prod",
        **{metadata_env.tag_variable(name): value for name, value in HOSTILE.items()},
    }
    assert read_with_sh(root / ENV) == expected  # no public address in the document: left out
    info = (root / ENV).stat()
    assert (info.st_mode & 0o7777, info.st_uid) == (0o644, 0)
    assert "left out" not in done.stderr
    assert result_json(root)["metadata_env"]["status"] == "changed"


def test_a_public_address_is_written_when_known(root, document, tmp_path):
    document["network"]["interface"][0]["ipv4"]["ipAddress"][0]["publicIpAddress"] = "20.1.2.3"
    assert boot(root, document, tmp_path).returncode == 0
    assert read_with_sh(root / ENV)["AZURE_PUBLIC_IPV4"] == "20.1.2.3"


def test_values_with_control_characters_are_left_out_and_named_in_the_log(root, document, tmp_path):
    with_tags(document, {"env": "prod", **LEFT_OUT})
    done = boot(root, document, tmp_path)
    assert done.returncode == 0, done.stderr
    seen = read_with_sh(root / ENV)
    assert seen["AZURE_TAG_ENV"] == "prod"
    for name in LEFT_OUT:
        variable = metadata_env.tag_variable(name)
        assert variable not in seen
        lines = [line for line in done.stderr.splitlines() if variable in line]
        assert len(lines) == 1 and f"tag '{name}'" in lines[0] and "control character" in lines[0], \
            done.stderr
    assert "line1" not in done.stderr  # named, never quoted
    assert "\x00" not in (root / ENV).read_text()
    assert result_json(root)["metadata_env"]["left_out"] == len(LEFT_OUT)


def test_names_without_a_letter_and_names_that_collide_are_left_out_and_named(root, document, tmp_path):
    """Two tags that map to one variable: neither is written (which a unit would see would
    depend on the tags' order); a name without a letter or digit makes no variable."""
    with_tags(document, {"app-name": "one", "app.name": "two", "APP_NAME": "three", "!!!": "x",
                         "--": "y", "env": "prod"})
    done = boot(root, document, tmp_path)
    assert done.returncode == 0, done.stderr
    seen = read_with_sh(root / ENV)
    assert "AZURE_TAG_APP_NAME" not in seen and seen["AZURE_TAG_ENV"] == "prod"
    assert not any(name.startswith("AZURE_TAG__") or name == "AZURE_TAG_" for name in seen)
    clash = [line for line in done.stderr.splitlines() if "AZURE_TAG_APP_NAME" in line]
    assert len(clash) == 1 and all(f"'{name}'" in clash[0] for name in ("app-name", "app.name", "APP_NAME"))
    for name in ("!!!", "--"):
        assert any(f"tag '{name}'" in line and "no letter or digit" in line
                   for line in done.stderr.splitlines()), done.stderr


def test_instance_json_is_the_document_without_user_data(root, document, tmp_path):
    document["compute"]["userData"] = b64("#cloud-config\nsecret: s3cr3t-value\n")
    document["compute"]["customData"] = b64("also secret")
    assert boot(root, document, tmp_path).returncode == 0
    path = root / INSTANCE
    assert (path.stat().st_mode & 0o7777) == 0o644
    kept = json.loads(path.read_text())
    for field in ("userData", "customData"):
        del document["compute"][field]
    assert kept == document
    assert "s3cr3t" not in path.read_text() and "s3cr3t" not in (root / ENV).read_text()


def test_a_later_boot_leaves_both_files_as_they_are(root, document, tmp_path):
    assert boot(root, document, tmp_path).returncode == 0
    before = [(root / name).stat().st_mtime_ns for name in (ENV, INSTANCE)]
    again = boot(root, document, tmp_path)
    assert again.returncode == 0
    assert [(root / name).stat().st_mtime_ns for name in (ENV, INSTANCE)] == before
    assert result_json(root)["metadata_env"]["status"] == "unchanged"
    with_tags(document, {"env": "changed"})
    assert boot(root, document, tmp_path).returncode == 0
    assert read_with_sh(root / ENV)["AZURE_TAG_ENV"] == "changed"


def test_a_dry_run_writes_neither(root, document, tmp_path):
    doc = tmp_path / "doc.json"
    doc.write_text(json.dumps(document))
    done = run_cli("run", "--root", str(root), "--metadata-file", str(doc), "--dry-run")
    assert done.returncode == 0, done.stderr
    assert not (root / ENV).exists() and not (root / INSTANCE).exists()


def test_no_document_writes_neither(root, tmp_path):
    doc = tmp_path / "doc.json"
    doc.write_text("{}")
    assert run_cli("run", "--root", str(root), "--metadata-file", str(doc)).returncode == 2
    assert not (root / ENV).exists() and not (root / INSTANCE).exists()


def test_a_metadata_env_that_cannot_be_written_fails_the_run_in_one_line(root, document, tmp_path):
    """Not a step, but not silent: the record says so and the run exits 1; every step ran."""
    (root / ENV).mkdir(parents=True)  # a directory where the file goes
    done = boot(root, document, tmp_path)
    assert done.returncode == 1
    record = result_json(root)
    assert record["status"] == "error" and record["metadata_env"]["status"] == "failed"
    assert "/run/bootagent/metadata.env" in record["metadata_env"]["error"]
    assert all(step["status"] != "failed" for step in record["steps"].values()), record
    lines = [line for line in done.stderr.splitlines() if "metadata_env" in line]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
