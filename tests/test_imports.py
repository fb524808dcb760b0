"""Guards of the boot path's speed that are not timings (SPEC "Budgets"; bench/ has the
timings): what a command imports, and how many requests the happy path makes.

Each command runs in a fresh interpreter that calls `bootagent.cli.main` and then prints
the names in `sys.modules`, so a lazy import that silently became an eager one fails
here, whatever the machine's speed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bootagent import cli
from conftest import REPO, examples, result_json, run_cli

# Heavy modules a command must not load: Jinja and PyYAML cost a later boot more than
# its whole budget; argparse is for help and errors; subprocess only for a step that
# runs a tool (useradd, ssh-keygen, a userData script). A boot fetches, so it imports
# requests; status speaks no HTTP at all. dataclasses brings inspect, ast and dis along
# (bootagent.record does its work).
NEVER_ON_A_LATER_BOOT = ("jinja2", "yaml", "argparse", "subprocess", "dataclasses", "inspect")
NEVER_ON_STATUS = NEVER_ON_A_LATER_BOOT + ("requests", "http.client", "bootagent.runner")

PRINT_MODULES = """
import json, sys
from bootagent.cli import main
code = main(sys.argv[1:])
sys.stdout.flush()
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def modules_after(*argv: str) -> tuple[int, set[str]]:
    """(exit code, imported module names) of one command run in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", PRINT_MODULES, *argv], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    last = done.stdout.strip().splitlines()[-1]
    record = json.loads(last)
    return record["code"], set(record["modules"])


def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(name for name in names if any(m == name or m.startswith(name + ".") for m in modules))


@pytest.fixture
def provisioned(root: Path, fake_imds):
    """A root after its first boot: a config with three templates, the fake's document with
    two keys and a YAML userData (SPEC's first boot), sshd_config present."""
    templates = root / "etc/bootagent/templates"
    templates.mkdir(parents=True)
    for src in (REPO / "templates").glob("*.j2"):
        shutil.copy(src, templates / src.name)
    shutil.copy(REPO / "templates/bootagent.yaml", root / "etc/bootagent/bootagent.yaml")
    first = run_cli("run", "--root", str(root), "--imds-url", fake_imds.url, "--timeout", "30")
    assert first.returncode == 0, first.stderr
    return root


def test_the_happy_path_makes_exactly_one_imds_request(provisioned, fake_imds):
    assert fake_imds.count("/metadata/") == 1
    record = result_json(provisioned)
    assert record["imds"]["requests"] == 1
    assert record["steps"]["templates"]["status"] == "changed"
    assert record["steps"]["userdata"]["status"] == "changed"


def test_a_later_boot_imports_neither_jinja_nor_yaml(provisioned, fake_imds):
    code, modules = modules_after("run", "--root", str(provisioned), "--imds-url", fake_imds.url,
                                  "--timeout", "30")
    assert code == 0
    assert loaded(modules, NEVER_ON_A_LATER_BOOT) == []
    record = result_json(provisioned)
    assert record["imds"]["requests"] == 1 and fake_imds.count("/metadata/") == 2
    assert {name: step["status"] for name, step in record["steps"].items()
            if step["status"] != "skipped"} == {
        "hostname": "unchanged", "users": "unchanged", "ssh_keys": "unchanged",
        "host_keys": "unchanged", "userdata": "unchanged", "customdata": "unchanged",
        "templates": "unchanged"}


def test_a_later_boot_with_the_network_configured_runs_no_tool_and_imports_nothing_new(root, fake_imds):
    """The network step on a later boot compares its files and stops: no subprocess (no
    `networkctl reload`), and no module beyond the agent's own that a boot without a network
    backend does not load as well (ipaddress comes with the HTTP client)."""
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / "systemd-networkd.service").symlink_to("/lib/systemd/system/systemd-networkd.service")
    first = run_cli("run", "--root", str(root), "--imds-url", fake_imds.url, "--timeout", "30")
    assert first.returncode == 0, first.stderr
    assert result_json(root)["steps"]["network"]["status"] == "changed"
    code, with_network = modules_after("run", "--root", str(root), "--imds-url", fake_imds.url,
                                       "--timeout", "30")
    assert code == 0 and result_json(root)["steps"]["network"]["status"] == "unchanged"
    assert loaded(with_network, NEVER_ON_A_LATER_BOOT) == []
    (wants / "systemd-networkd.service").unlink()
    code, without = modules_after("run", "--root", str(root), "--imds-url", fake_imds.url, "--timeout", "30")
    assert code == 0 and result_json(root)["steps"]["network"]["status"] == "skipped"
    assert sorted(m for m in with_network - without if not m.startswith("bootagent")) == []


def test_status_imports_no_http_client_and_no_jinja_or_yaml(provisioned):
    code, modules = modules_after("status", "--root", str(provisioned))
    assert code == 0
    assert loaded(modules, NEVER_ON_STATUS) == []


def test_run_status_and_metadata_import_nothing_of_attest(provisioned, fake_imds):
    """attest's openssl runner and checks cost the other commands nothing: no import of
    bootagent.attest, and no subprocess for metadata (run's steps may spawn their tools)."""
    url = fake_imds.url
    for argv in (("run", "--root", str(provisioned), "--imds-url", url, "--timeout", "30"),
                 ("status", "--root", str(provisioned)),
                 ("metadata", "--root", str(provisioned), "--imds-url", url, "compute/vmId", "--format", "text"),
                 ("metadata", "--root", str(provisioned), "--imds-url", url, "--endpoint", "scheduledevents")):
        code, modules = modules_after(*argv)
        assert code == 0, argv
        assert loaded(modules, ("bootagent.attest", "bootagent.fake")) == [], argv
        if argv[0] != "run":
            assert loaded(modules, ("subprocess",)) == [], argv


def test_a_changed_config_is_parsed_again_and_a_changed_tag_rendered_again(provisioned, fake_imds):
    """The caches that keep Jinja and PyYAML off a later boot are keyed by what they stand
    for: new config bytes import yaml again, a new tag value renders again."""
    config = provisioned / "etc/bootagent/bootagent.yaml"
    config.write_text(config.read_text() + "# edited\n")
    document = fake_imds.document
    document["compute"]["tagsList"] = [{"name": "env", "value": "prod"}, {"name": "role", "value": "web"}]
    document["compute"]["tags"] = "env:prod;role:web"
    fake_imds.document = document
    code, modules = modules_after("run", "--root", str(provisioned), "--imds-url", fake_imds.url,
                                  "--timeout", "30")
    assert code == 0
    assert loaded(modules, ("yaml", "jinja2")) == ["jinja2", "yaml"]
    assert "/etc/motd" in result_json(provisioned)["steps"]["templates"]["changed"]
    assert "(prod)" in (provisioned / "etc/motd").read_text()


# -- the provisioning media costs a boot without one nothing -------------------------------

XML_PARSERS = ("pyexpat", "xml", "bootagent.media.ovf")


def test_a_boot_with_no_media_imports_no_xml_parser(root, fake_imds):
    """auto on a root that is not a live Azure VM: no CD is looked for, nothing parsed."""
    code, modules = modules_after("run", "--root", str(root), "--imds-url", fake_imds.url, "--timeout", "30")
    assert code == 0
    assert loaded(modules, XML_PARSERS) == []
    assert result_json(root)["steps"]["customdata"]["reason"] == "no provisioning media"


def test_a_later_boot_after_a_media_boot_reads_no_media_and_parses_nothing(provisioned, fake_imds, tmp_path):
    """customData reached the templates at the first boot; a later boot keeps them without
    reading the media, XML, YAML or Jinja."""
    from bootagent.fake.media import build_ovf

    fresh = provisioned.parent / "fresh"
    shutil.copytree(provisioned / "etc/bootagent", fresh / "etc/bootagent")
    from conftest import build_root
    build_root(fresh)
    (fresh / "etc/bootagent/templates/custom.j2").write_text("{{ customdata.greeting }}\n")
    config = fresh / "etc/bootagent/bootagent.yaml"
    config.write_text(config.read_text() + "  - src: custom.j2\n    dest: /etc/custom.conf\n")
    media = tmp_path / "media"
    media.mkdir()
    (media / "ovf-env.xml").write_bytes(build_ovf(fake_imds.document, None, b"greeting: hi\n"))
    first = run_cli("run", "--root", str(fresh), "--imds-url", fake_imds.url, "--timeout", "30",
                    "--provisioning-media", str(media))
    assert first.returncode == 0, first.stderr
    assert (fresh / "etc/custom.conf").read_text() == "hi\n"
    code, modules = modules_after("run", "--root", str(fresh), "--imds-url", fake_imds.url,
                                  "--timeout", "30", "--provisioning-media", str(media))
    assert code == 0
    assert loaded(modules, NEVER_ON_A_LATER_BOOT + XML_PARSERS) == []
    assert result_json(fresh)["steps"]["templates"]["status"] == "unchanged"
    assert result_json(fresh)["steps"]["customdata"]["status"] == "unchanged"
def test_metadata_env_and_timings_add_no_import_to_a_later_boot(provisioned, fake_imds):
    """A later boot writes metadata.env and records timings (SPEC "Budgets": no new import):
    bootagent.metadata_env brings nothing the boot had not loaded, and render is not loaded."""
    code, modules = modules_after("run", "--root", str(provisioned), "--imds-url", fake_imds.url,
                                  "--timeout", "30")
    assert code == 0
    assert "bootagent.metadata_env" in modules
    assert (provisioned / "run/bootagent/metadata.env").is_file()
    assert "duration_ms" in result_json(provisioned)["steps"]["templates"]
    assert loaded(modules, ("bootagent.render", "bootagent.render_command", "bootagent.fake")) == []
    alone = subprocess.run([sys.executable, "-c", ADDED_BY_METADATA_ENV], capture_output=True, text=True,
                           timeout=60, cwd=REPO)
    assert alone.returncode == 0, alone.stderr
    added = json.loads(alone.stdout)
    assert "bootagent.metadata_env" in added
    assert [name for name in added if not name.startswith("bootagent.")] == []  # no library


# What importing bootagent.metadata_env adds once the later boot's other modules are loaded.
ADDED_BY_METADATA_ENV = """
import json, sys
import bootagent.cli, bootagent.runner, bootagent.steps.templates, bootagent.config, bootagent.log
before = set(sys.modules)
import bootagent.metadata_env
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_render_is_not_on_the_boot_path(provisioned, fake_imds):
    """A first boot (templates rendered) loads the renderer, never the render command."""
    shutil.rmtree(provisioned / "var/lib/bootagent")
    code, modules = modules_after("run", "--root", str(provisioned), "--imds-url", fake_imds.url,
                                  "--timeout", "30")
    assert code == 0 and "bootagent.render" in modules
    assert loaded(modules, ("bootagent.render_command", "bootagent.fake")) == []


# -- the command line's fast path agrees with argparse wherever it answers ------------------

TOKENS = ["run", "status", "clean", "metadata", "doctor", "fake-imds", "--root", "/", "/tmp/x",
          "--imds-url", "http://127.0.0.1:1", "--imds", "--timeout", "5", "-5", "1e3", "x", "nan",
          "--timeout=7", "--root=", "--json", "--json=1", "--dry-run", "--wait", "--logs",
          "--machine-id", "--ssh-host-keys", "--metadata-file", "--config", "--format", "text",
          "json", "xml", "--format=text", "compute/vmId", "", "--", "-h", "--help", "-", "--version",
          "attest", "--nonce", "0042", "--ca-file", "--endpoint", "loadbalancer", "attested/document",
          "--media", "--provisioning-media",
          "render", "motd.j2", "--manifest", "--tag", "env=prod", "--userdata", "--customdata",
          "--timings"]


def argparse_result(argv: list[str]) -> dict | None:
    try:
        return vars(cli._parser(argv).parse_args(argv))
    except (cli.UsageError, SystemExit):
        return None


@settings(max_examples=examples(400), deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=6))
def test_the_fast_path_gives_what_argparse_gives(argv):
    fast = cli._fast_parse(argv)
    if fast is not None:
        assert vars(fast) == argparse_result(argv)


@pytest.mark.parametrize("argv", [
    ["run"], ["run", "--root", "/mnt/img", "--imds-url", "auto", "--timeout", "30", "--json"],
    ["run", "--metadata-file", "doc.json", "--dry-run", "--config=/etc/x.yaml"],
    ["status"], ["status", "--wait", "--timeout", "120", "--json"], ["clean", "--logs", "--machine-id"],
    ["metadata", "compute/vmId", "--format", "text"], ["metadata"], ["doctor", "--json"],
    ["metadata", "--endpoint", "scheduledevents"], ["attest", "--nonce", "0042", "--ca-file", "ca.pem", "--json"],
    ["status", "--timings"], ["render", "motd.j2", "--metadata-file", "doc.json"],
])
def test_the_boot_path_invocations_take_the_fast_path(argv):
    fast = cli._fast_parse(argv)
    assert fast is not None and vars(fast) == argparse_result(argv)


# -- a step that does not apply costs nothing --------------------------------------------------

NO_RESOURCE_DISK = """
import json, sys
from bootagent import config
from bootagent.context import Context
from bootagent.steps import resource_disk
ctx = Context(root=sys.argv[1], config=config.defaults())
outcome = resource_disk.provision(ctx, [])
print(json.dumps({"status": outcome.status, "reason": outcome.reason, "modules": sorted(sys.modules)}))
"""


def test_a_vm_without_a_resource_disk_loads_no_probe_and_runs_no_tool(tmp_path):
    """The step's search reads sysfs only: on a VM whose sysfs holds just an OS disk, neither
    subprocess nor the probing, deciding or formatting modules are imported."""
    disk = tmp_path / "sys/devices/pci0000:00/0000:00:04.0/virtio1/block/vda"
    disk.mkdir(parents=True)
    (tmp_path / "sys/block").mkdir()
    (tmp_path / "sys/block/vda").symlink_to("../devices/pci0000:00/0000:00:04.0/virtio1/block/vda")
    done = subprocess.run([sys.executable, "-c", NO_RESOURCE_DISK, str(tmp_path)], capture_output=True,
                          text=True, timeout=60, cwd=REPO)
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert (record["status"], record["reason"]) == ("skipped", "no resource disk on this VM")
    modules = set(record["modules"])
    assert loaded(modules, ("subprocess", "bootagent.disk.probe", "bootagent.disk.fresh",
                            "bootagent.disk.prepare", "shutil")) == []


def test_a_boot_off_the_live_root_never_loads_the_resource_disk_code(provisioned, fake_imds):
    code, modules = modules_after("run", "--root", str(provisioned), "--imds-url", fake_imds.url,
                                  "--timeout", "30")
    assert code == 0
    assert loaded(modules, ("bootagent.disk",)) == []
    assert result_json(provisioned)["steps"]["resource_disk"]["reason"] == "root is not /"
