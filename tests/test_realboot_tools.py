"""A real boot of the tools for unit and template authors (SPEC "Tools for template and
unit authors"): systemd's EnvironmentFile= reads /run/bootagent/metadata.env as the
document says, hostile tag values included, and as bash's `.` reads it; the example unit
in examples/units/ runs after bootagent and sees AZURE_VM_ID; `bootagent render` in the
guest gives the bytes the boot wrote.

One boot of its own disk, on the tests/vm helpers. Run it alone (one VM at a time on the
machine): flock /tmp/realboot.lock .venv/bin/pytest -m realboot -s -q tests/test_realboot_tools.py
"""

from __future__ import annotations

import base64
import copy
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vm import fake as vmfake  # noqa: E402
from vm import image as vmimage  # noqa: E402
from vm import qemu as vmqemu  # noqa: E402
from vm import session as vmsession  # noqa: E402

pytestmark = pytest.mark.realboot

REPO = Path(__file__).resolve().parent.parent
ADMIN = "azureuser"
EXAMPLE_UNIT = "bootagent-metadata-example.service"
SEEN_FILE = "/run/metadata-env-seen"
# What a unit's environment holds once systemd has read metadata.env, NUL-separated
SEEN_UNIT = f"""[Unit]
Description=Test: the environment a unit gets from /run/bootagent/metadata.env
Requires=bootagent.service
After=bootagent.service

[Service]
Type=oneshot
RemainAfterExit=yes
EnvironmentFile=/run/bootagent/metadata.env
ExecStart=/bin/sh -c 'env -0 > {SEEN_FILE}'

[Install]
WantedBy=multi-user.target
"""
TAGS = {
    "env": "ci",
    "quote": "it's \"quoted\"",
    "dollar": "$HOME ${HOME} `id` $(id)",
    "backslash": "a\\b\\\\c\\",
    "mixed": "'\\'\"\\\"$",
    "spaces": "  lead and trail  ",
    "unicode": "naïve ☃",
    "empty": "",
    "newline": "line1\nline2",
}
LEFT_OUT = {"newline"}
CONFIG = "templates:\n  - src: motd.j2\n    dest: /etc/motd\n"
TEMPLATES = {"motd.j2": "Welcome to {{ hostname }} ({{ tags['env'] }}, {{ tags['quote'] }})\n"}


@pytest.fixture(scope="module", autouse=True)
def _prerequisites():
    vmsession.require("the tools' real boot", vmsession.missing_prerequisites())


def document(vm_id: str, key: Path) -> dict:
    from bootagent.fake.server import default_document

    doc = copy.deepcopy(default_document())
    compute = doc["compute"]
    compute["vmId"] = vm_id
    compute["name"] = compute["osProfile"]["computerName"] = "toolsvm"
    compute["osProfile"]["adminUsername"] = ADMIN
    compute["publicKeys"] = [{"keyData": Path(f"{key}.pub").read_text().strip(),
                              "path": f"/home/{ADMIN}/.ssh/authorized_keys"}]
    compute["tagsList"] = [{"name": k, "value": v} for k, v in TAGS.items()]
    compute["tags"] = ""
    doc["network"]["interface"][0]["ipv4"]["ipAddress"][0]["publicIpAddress"] = "20.1.2.3"
    return doc


def environ(blob: str) -> dict[str, str]:
    """The AZURE_ variables of a base64'd `env -0` output."""
    pairs = [item.decode("utf-8").split("=", 1)
             for item in base64.b64decode(blob.strip()).split(b"\0") if item]
    return {name: value for name, value in pairs if name.startswith("AZURE_")}


def test_units_read_metadata_env_as_the_document_says(tmp_path):
    from bootagent.metadata_env import tag_variable

    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    base = vmimage.build_base()
    units = {EXAMPLE_UNIT: (REPO / "examples/units" / EXAMPLE_UNIT).read_bytes(),
             "metadata-env-seen.service": SEEN_UNIT.encode()}
    disk = vmimage.overlay(vmimage.install_bootagent(base, tmp_path / "tools.raw", config=CONFIG,
                                                     templates=TEMPLATES, units=units),
                           tmp_path / "tools.qcow2")
    vm_id = str(uuid.uuid4())
    doc = document(vm_id, key)
    with vmfake.FakeImds(doc, tmp_path, name="tools") as imds:
        vm = vmqemu.VM(disk, base.kernel, base.initrd, workdir=tmp_path, vm_uuid=vm_id,
                       fake_port=imds.port, name="tools")
        with vm:
            vm.boot()
            print(f"\n[tools] booting ({vm.accel}), console: {vm.console_log}", flush=True)
            vm.wait_for_first_login(ADMIN, key, vmsession.SSH_DEADLINE)

            def run(cmd: str) -> str:
                rc, out = vm.ssh(ADMIN, key, cmd)
                assert rc == 0, f"`{cmd}` in the guest exited {rc}:\n{out}"
                return out

            run("sudo bootagent status --wait --timeout 120")
            compute = doc["compute"]
            expected = {
                "AZURE_VM_ID": vm_id, "AZURE_VM_NAME": "toolsvm", "AZURE_LOCATION": compute["location"],
                "AZURE_ZONE": compute["zone"], "AZURE_VM_SIZE": compute["vmSize"],
                "AZURE_RESOURCE_GROUP": compute["resourceGroupName"],
                "AZURE_SUBSCRIPTION_ID": compute["subscriptionId"], "AZURE_HOSTNAME": "toolsvm",
                "AZURE_PRIVATE_IPV4": "10.0.0.4", "AZURE_PUBLIC_IPV4": "20.1.2.3",
                **{tag_variable(name): value for name, value in TAGS.items() if name not in LEFT_OUT},
            }
            # systemd's EnvironmentFile=, in a unit ordered after bootagent
            props = run("systemctl show metadata-env-seen -p ActiveState -p Result")
            assert "ActiveState=active" in props and "Result=success" in props, props
            by_systemd = environ(run(f"sudo base64 -w0 {SEEN_FILE}"))
            assert by_systemd == expected
            # bash's `.` reads the same bytes alike
            by_sh = environ(run("sudo bash -c 'set -a; . /run/bootagent/metadata.env; env -0' | base64 -w0"))
            assert by_sh == expected
            # the left-out tag is named in the journal, its value never
            journal = run("sudo journalctl -b -u bootagent -o cat --no-pager")
            named = [line for line in journal.splitlines() if "AZURE_TAG_NEWLINE" in line]
            assert len(named) == 1 and "tag 'newline'" in named[0], journal[-3000:]
            assert "line1" not in journal
            # the example unit ran after bootagent and saw the VM's id
            props = run(f"systemctl show {EXAMPLE_UNIT} -p ActiveState -p Result")
            assert "ActiveState=active" in props and "Result=success" in props, props
            said = run(f"sudo journalctl -b -u {EXAMPLE_UNIT} -o cat --no-pager")
            assert f"this is VM {vm_id} ({compute['vmSize']}) in {compute['location']}, env=ci" in said, said
            # instance.json: 0644, the document without userData
            assert run("stat -c %a /run/bootagent/instance.json /run/bootagent/metadata.env").split() == \
                ["644", "644"]
            assert "userData" not in run("cat /run/bootagent/instance.json")
            # render in the guest gives the bytes the boot wrote
            assert run("sudo bootagent render motd.j2 --metadata-file /run/bootagent/instance.json") == \
                run("cat /etc/motd") == "Welcome to toolsvm (ci, it's \"quoted\")\n"
            timings = run("sudo bootagent status --timings")
            assert "ms  imds" in timings and "ms  templates" in timings, timings
            assert vm.poweroff(ADMIN, key), "the guest did not power off cleanly"
