"""A real boot with Azure's provisioning media: a CD holding ovf-env.xml with the admin
password and customData, attached as Azure attaches it (a SCSI CD the guest sees as
/dev/sr0, found by `azure.provisioning_media: auto` on a VM whose DMI says Azure).

Three boots under QEMU:
1. disk A, an ISO 9660 CD: a password and a cloud-config customData that a template uses.
   SSH login with the password (the client forced to password authentication), the
   template shows the customData value, and no file of the guest nor its journal holds
   the password.
2. disk A again, same vmId, the CD removed: the template still sees customdata, nothing
   changes, still no trace of the password.
3. disk B, a UDF CD (with an ISO 9660 bridge; udev says UDF, the guest mounts it as
   UDF): a `#!` customData script leaves a marker; the password works there too.

Run: flock /tmp/realboot.lock .venv/bin/pytest -m realboot -s -q tests/test_realboot_media.py
"""

from __future__ import annotations

import copy
import secrets
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vm import image as vmimage  # noqa: E402
from vm import session as vmsession  # noqa: E402

pytestmark = pytest.mark.realboot

ADMIN = "azureuser"
PASSWORD = "Rb-" + secrets.token_hex(10)          # a fresh one each run: any trace is ours
CUSTOM_YAML = "#cloud-config\ngreeting: hello from customData\n"
CUSTOM_SCRIPT = "#!/bin/sh\necho ran >> /var/lib/customdata-marker\n"
CONFIG = """\
templates:
  - src: custom.j2
    dest: /etc/realboot/custom.conf
"""
TEMPLATES = {"custom.j2": "greeting={{ customdata.get('greeting', 'none') }}\n"}
# Every place a trace could stay, searched in the guest with the password on stdin (never
# on a command line, which sudo would log): files, then the journal.
TRACE = """p=$(cat)
grep -rlsF -D skip -- "$p" /etc /var /run /home /root
journalctl -b --no-pager -o cat | grep -qF -- "$p" && echo 'the journal'
journalctl -b -u bootagent --no-pager -o json | grep -qF -- "$p" && echo 'the journal of bootagent'
true
"""


@pytest.fixture(scope="module", autouse=True)
def _prerequisites():
    vmsession.require("the real boot with media",
                      vmsession.missing_prerequisites(("sshpass", "xorriso", "genisoimage")))


class MediaBench:
    def __init__(self, workdir: Path):
        from bootagent.fake.media import build_ovf, write_media

        self.workdir = workdir
        self.key = workdir / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "realboot-media",
                        "-f", str(self.key)], check=True)
        self.base = vmimage.build_base()
        installed = vmimage.install_bootagent(self.base, workdir / "media.raw", config=CONFIG,
                                              templates=TEMPLATES)
        self.disk_a = vmimage.overlay(installed, workdir / "a.qcow2")
        self.disk_b = vmimage.overlay(installed, workdir / "b.qcow2")
        self.vm_a, self.vm_b = str(uuid.uuid4()), str(uuid.uuid4())
        self.iso = workdir / "yaml.iso"
        write_media(str(self.iso), build_ovf(self.document(self.vm_a, "mediavm-a"), PASSWORD,
                                             CUSTOM_YAML.encode()))
        self.udf = workdir / "script.udf"
        write_media(str(self.udf), build_ovf(self.document(self.vm_b, "mediavm-b"), PASSWORD,
                                             CUSTOM_SCRIPT.encode()), "udf")
        self.done: set[str] = set()

    def document(self, vm_id: str, name: str) -> dict:
        from bootagent.fake.server import default_document

        doc = copy.deepcopy(default_document())
        compute = doc["compute"]
        compute.update(vmId=vm_id, name=name, osType="Linux", userData="")
        compute["osProfile"] = {"adminUsername": ADMIN, "computerName": name,
                                "disablePasswordAuthentication": "false"}
        compute["publicKeys"] = [{"keyData": Path(f"{self.key}.pub").read_text().strip(),
                                  "path": f"/home/{ADMIN}/.ssh/authorized_keys"}]
        return doc

    def boot(self, label: str, disk: Path, vm_id: str, name: str, cdrom: Path | None):
        return vmsession.power_on(self.base, disk, self.workdir, self.document(vm_id, name),
                                  label=label, vm_id=vm_id, admin=ADMIN, key=self.key, cdrom=cdrom)

    def run(self, vm, cmd: str, stdin: str | None = None) -> str:
        done = subprocess.run(vm.ssh_command(ADMIN, self.key, cmd), input=stdin or "",
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, f"`{cmd}` in the guest exited {done.returncode}:\n{done.stdout}{done.stderr}"
        return done.stdout

    def password_login(self, vm) -> subprocess.CompletedProcess:
        """`id -un` over SSH with the password alone (no key, no agent)."""
        command = ["sshpass", "-e", "ssh", "-q", "-F", "/dev/null", "-p", str(vm.ssh_port),
                   "-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no",
                   "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
                   "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                   "-o", "ConnectTimeout=10", f"{ADMIN}@127.0.0.1", "id -un"]
        return subprocess.run(command, env={"SSHPASS": PASSWORD, "PATH": "/usr/bin:/bin"},
                              capture_output=True, text=True, timeout=120)

    def traces(self, vm) -> str:
        """Where the guest holds the password: files under /etc /var /run /home /root, the
        journal. The script travels base64-encoded, the password on stdin."""
        import base64

        script = base64.b64encode(TRACE.encode()).decode()
        return self.run(vm, f'sudo sh -c "$(echo {script} | base64 -d)"', stdin=PASSWORD).strip()

    def result(self, vm) -> dict:
        import json
        return json.loads(self.run(vm, "sudo cat /run/bootagent/result.json"))


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return MediaBench(tmp_path_factory.mktemp("realboot-media"))


def statuses(result: dict) -> dict:
    return {name: step["status"] for name, step in result["steps"].items()}


def test_an_iso_media_gives_the_password_and_a_cloud_config_custom_data(bench):
    vm, fake = bench.boot("media1-iso", bench.disk_a, bench.vm_a, "mediavm-a", bench.iso)
    with vm, fake:
        result = bench.result(vm)
        assert result["status"] == "ok", result
        assert statuses(result)["customdata"] == "changed", result
        assert result["steps"]["users"]["password"] == "set from the provisioning media", result
        login = bench.password_login(vm)
        assert login.returncode == 0 and login.stdout.strip() == ADMIN, login
        assert bench.run(vm, "cat /etc/realboot/custom.conf") == "greeting=hello from customData\n"
        assert "PasswordAuthentication yes" in bench.run(vm, "cat /etc/ssh/sshd_config.d/50-bootagent.conf")
        assert "provisioning media read from /dev/sr" in bench.run(
            vm, "sudo journalctl -b -u bootagent --no-pager -o cat")
        assert ".media." not in bench.run(vm, "sudo ls -A /run/bootagent")   # unmounted, removed
        assert "/dev/sr0" not in bench.run(vm, "cat /proc/mounts")
        assert bench.traces(vm) == "", "the password left a trace in the guest"
        assert vm.poweroff(ADMIN, bench.key), "the guest did not power off cleanly"
    bench.done.add("iso")


def test_a_later_boot_without_the_cd_keeps_custom_data_and_reruns_nothing(bench):
    if "iso" not in bench.done:
        pytest.fail("the first media boot did not complete")
    vm, fake = bench.boot("media2-no-cd", bench.disk_a, bench.vm_a, "mediavm-a", None)
    with vm, fake:
        result = bench.result(vm)
        assert result["status"] == "ok", result
        changed = {name: s for name, s in statuses(result).items() if s not in ("unchanged", "skipped")}
        assert not changed, result
        assert statuses(result)["customdata"] == "unchanged"
        assert bench.run(vm, "cat /etc/realboot/custom.conf") == "greeting=hello from customData\n"
        assert bench.password_login(vm).returncode == 0
        assert bench.traces(vm) == ""
        assert vm.poweroff(ADMIN, bench.key), "the guest did not power off cleanly"


def test_a_udf_media_runs_a_custom_data_script_once(bench):
    vm, fake = bench.boot("media3-udf", bench.disk_b, bench.vm_b, "mediavm-b", bench.udf)
    with vm, fake:
        assert bench.run(vm, "sudo blkid -p -o value -s TYPE /dev/sr0").strip() == "udf"
        result = bench.result(vm)
        assert result["status"] == "ok", result
        custom = result["steps"]["customdata"]
        assert custom["kind"] == "script" and custom["script"] == "exited", custom
        assert custom["script_exit_status"] == 0, custom
        assert bench.run(vm, "sudo cat /var/lib/customdata-marker") == "ran\n"
        assert bench.run(vm, "cat /etc/realboot/custom.conf") == "greeting=none\n"
        assert bench.password_login(vm).returncode == 0
        assert bench.traces(vm) == ""
        assert vm.poweroff(ADMIN, bench.key), "the guest did not power off cleanly"

