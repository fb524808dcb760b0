"""A real boot: a Debian 12 image with bootagent's Debian package installed, booted under QEMU
as an Azure VM looks to its guest (IMDS and wireserver reachable at their
addresses, served by the project's fake IMDS on the host; Azure's DMI chassis
asset tag; the vmId as DMI system UUID), logged into over SSH with the key the
fake served.

Three boots of one VM disk: the first provisions; the same vmId again changes
nothing; a new vmId provisions again with new host keys. A fourth, of its own disk,
starts the early host-keys unit together with the run. Timings go to stdout
and to $BOOTAGENT_VM_REPORT (default build/realboot.json). See tests/vm/README.md.

Run: .venv/bin/pytest -m realboot -s
"""

from __future__ import annotations

import base64
import copy
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vm import image as vmimage  # noqa: E402
from vm import session as vmsession  # noqa: E402

pytestmark = pytest.mark.realboot

REPO = Path(__file__).resolve().parent.parent
ADMIN = "azureuser"
TAGS = {"env": "ci", "role": "realboot"}
USERDATA = "#cloud-config\ngreeting: hello from userData\n"
CONFIG = """\
templates:
  - src: motd.j2
    dest: /etc/motd
  - src: app.conf.j2
    dest: /etc/realboot/app.conf
    when: "tags.get('env') == 'ci'"
    mode: "0640"
"""
TEMPLATES = {
    "motd.j2": "Welcome to {{ hostname }} ({{ tags['env'] }})\n",
    "app.conf.j2": ("admin={{ admin_user }}\nrole={{ tags['role'] }}\n"
                    "greeting={{ userdata['greeting'] }}\n"),
}
STEPS = ("hostname", "users", "ssh_keys", "host_keys", "userdata", "templates", "report_ready")


@pytest.fixture(scope="module", autouse=True)
def _prerequisites():
    vmsession.require("the real-boot test", vmsession.missing_prerequisites())


class Bench:
    """What the three boots share: the image, the VM's disk and key, and timings."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.report: dict = {"boots": {}}
        self.fingerprints: dict[str, dict[str, str]] = {}
        self.results: dict[str, dict] = {}
        self.key = workdir / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "realboot",
                        "-f", str(self.key)], check=True)
        t0 = time.monotonic()
        self.base = vmimage.build_base()
        self.report["image_seconds"] = round(time.monotonic() - t0, 1)
        self.installed = vmimage.install_bootagent(
            self.base, workdir / "installed.raw", config=CONFIG, templates=TEMPLATES)
        self.disk = vmimage.overlay(self.installed, workdir / "vm.qcow2")

    def document(self, vm_id: str, computer_name: str) -> dict:
        from bootagent.fake.server import default_document
        doc = copy.deepcopy(default_document())
        compute = doc["compute"]
        compute["vmId"] = vm_id
        compute["name"] = computer_name
        compute["osType"] = "Linux"
        compute["osProfile"] = {"adminUsername": ADMIN, "computerName": computer_name,
                                "disablePasswordAuthentication": "true"}
        compute["publicKeys"] = [{"keyData": Path(f"{self.key}.pub").read_text().strip(),
                                  "path": f"/home/{ADMIN}/.ssh/authorized_keys"}]
        compute["tags"] = ";".join(f"{k}:{v}" for k, v in TAGS.items())
        compute["tagsList"] = [{"name": k, "value": v} for k, v in TAGS.items()]
        compute["userData"] = base64.b64encode(USERDATA.encode()).decode()
        return doc

    def boot(self, label: str, vm_id: str, computer_name: str, disk: Path | None = None):
        """Power the VM on (the three boots' disk unless `disk`) against a fake serving its
        document; wait for the admin's SSH login. Returns (vm, fake) running; the caller
        powers off."""
        return vmsession.power_on(self.base, disk or self.disk, self.workdir,
                                  self.document(vm_id, computer_name), label=label, vm_id=vm_id,
                                  admin=ADMIN, key=self.key, measured=True)

    def run(self, vm, cmd: str, ok: bool = True) -> str:
        rc, out = vm.ssh(ADMIN, self.key, cmd)
        if ok:
            assert rc == 0, f"`{cmd}` in the guest exited {rc}:\n{out}"
        return out

    def host_key_fingerprints(self, vm) -> dict[str, str]:
        out = self.run(vm, "for f in /etc/ssh/ssh_host_*_key.pub; do ssh-keygen -lf $f; done")
        return {line.split()[-1].strip("()"): line.split()[1] for line in out.splitlines() if line}

    def served_fingerprints(self, vm) -> dict[str, str]:
        """The host keys sshd actually serves, seen from the host."""
        scan = subprocess.run(["ssh-keyscan", "-T", "30", "-t", "rsa,ecdsa,ed25519",
                               "-p", str(vm.ssh_port), "127.0.0.1"],
                              capture_output=True, text=True, timeout=120).stdout
        lines = "".join(line + "\n" for line in scan.splitlines() if line and not line.startswith("#"))
        fp = subprocess.run(["ssh-keygen", "-lf", "-"], input=lines, capture_output=True,
                            text=True).stdout
        return {line.split()[-1].strip("()"): line.split()[1] for line in fp.splitlines() if line}

    def systemd_props(self, vm, unit: str, *props: str) -> dict[str, str]:
        out = self.run(vm, f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, vm, unit: str) -> list[dict]:
        out = self.run(vm, f"sudo journalctl -b -u {unit} -o json --no-pager")
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def document_received(self, vm) -> int | None:
        """Guest monotonic time (µs) of the run's "instance document received" line."""
        for entry in self.journal(vm, "bootagent"):
            if entry.get("MESSAGE") == "instance document received":
                return int(entry["__MONOTONIC_TIMESTAMP"])
        return None

    def early_host_keys(self, vm) -> str | None:
        """What bootagent-host-keys.service did this boot: its host_keys status word."""
        said = [e["MESSAGE"] for e in self.journal(vm, "bootagent-host-keys")
                if e.get("BOOTAGENT_STEP") == "host_keys"]
        return said[-1].split(":")[0] if said else None

    def record(self, label: str, vm, fake) -> dict:
        """Timings of this boot, printed and kept for the report."""
        unit = self.systemd_props(vm, "bootagent", "ExecMainStartTimestampMonotonic",
                                  "ExecMainExitTimestampMonotonic")
        keys_unit = self.systemd_props(vm, "bootagent-host-keys", "ExecMainStartTimestampMonotonic",
                                       "ExecMainExitTimestampMonotonic")
        ssh_unit = self.systemd_props(vm, "ssh", "ActiveEnterTimestampMonotonic")
        start, end = int(unit["ExecMainStartTimestampMonotonic"]), int(unit["ExecMainExitTimestampMonotonic"])
        keys_start = int(keys_unit["ExecMainStartTimestampMonotonic"])
        keys_end = int(keys_unit["ExecMainExitTimestampMonotonic"])
        # Both on the guest's monotonic clock (µs since its boot): the journal's
        # timestamp of the line the run logs once it has the document, and the
        # unit's exit. The fake's log is on the host clock, another clock.
        received = self.document_received(vm)
        first_imds = fake.first_request_time()
        login = vm.events.get("ssh_login")
        sshd = vm.events.get("ssh_started")
        rec = {
            "accel": vm.accel,
            "vm_id": vm.vm_uuid,
            # other work on the host slows a TCG guest: read the numbers with it
            "host_loadavg_1m": round(os.getloadavg()[0], 2),
            "unit_active_s": round((end - start) / 1e6, 3),
            "unit_active_after_document_s": round((end - received) / 1e6, 3) if received else None,
            "unit_started_after_kernel_s": round(start / 1e6, 3),
            "host_keys_unit_active_s": round((keys_end - keys_start) / 1e6, 3),
            "host_keys_unit_started_after_kernel_s": round(keys_start / 1e6, 3),
            "host_keys_unit_exit_after_unit_start_s": round((keys_end - start) / 1e6, 3),
            "unit_exit_to_sshd_active_s": round((int(ssh_unit["ActiveEnterTimestampMonotonic"]) - end) / 1e6, 3),
            "power_on_to_first_login_s": round(login - vm.power_on, 3),
            "imds_first_request_after_power_on_s": round(first_imds - vm.power_on, 3) if first_imds else None,
            "imds_first_request_to_sshd_started_s": round(sshd - first_imds, 3) if first_imds and sshd else None,
            "imds_first_request_to_first_login_s": round(login - first_imds, 3) if first_imds else None,
            "console_milestones_s": vm.timings(),
        }
        self.report["boots"][label] = rec
        print(f"[{label}] " + json.dumps({k: v for k, v in rec.items() if k != "console_milestones_s"}),
              flush=True)
        print(f"[{label}] console milestones (s since power-on): {rec['console_milestones_s']}", flush=True)
        return rec

    def write_report(self) -> Path:
        path = Path(os.environ.get("BOOTAGENT_VM_REPORT") or REPO / "build" / "realboot.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.report, indent=2) + "\n")
        print(f"\nreal-boot timings written to {path}", flush=True)
        return path


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    b = Bench(tmp_path_factory.mktemp("realboot"))
    yield b
    if b.report["boots"]:
        b.write_report()


def _result(bench: Bench, vm) -> dict:
    return json.loads(bench.run(vm, "sudo cat /run/bootagent/result.json"))


def _statuses(result: dict) -> dict[str, str]:
    return {name: step.get("status") for name, step in result.get("steps", {}).items()}


FIRST_ID = str(uuid.uuid4())
SECOND_ID = str(uuid.uuid4())


def test_first_boot_provisions_before_sshd(bench):
    vm, fake = bench.boot("boot1-first", FIRST_ID, "bootvm-1")
    with vm, fake:
        bench.record("boot1-first", vm, fake)
        # the admin logged in with the key IMDS served: users and ssh_keys worked
        assert bench.run(vm, "hostname").strip() == "bootvm-1"
        assert bench.run(vm, "cat /etc/hostname").strip() == "bootvm-1"
        assert bench.run(vm, "cat /etc/motd") == "Welcome to bootvm-1 (ci)\n"
        assert bench.run(vm, "sudo cat /etc/realboot/app.conf") == (
            f"admin={ADMIN}\nrole=realboot\ngreeting=hello from userData\n")
        assert bench.run(vm, "id -nG").split().count("sudo") == 1
        # the agent came from its Debian package, which enabled both units
        assert "Status: install ok installed" in bench.run(vm, "dpkg -s bootagent")
        assert bench.run(vm, "systemctl is-enabled bootagent.service "
                             "bootagent-host-keys.service").split() == ["enabled", "enabled"]
        assert bench.run(vm, "readlink -f /usr/bin/bootagent; dpkg -S /usr/bin/bootagent").split() == [
            "/usr/bin/bootagent", "bootagent:", "/usr/bin/bootagent"]

        rc, out = vm.ssh(ADMIN, bench.key, "sudo bootagent status")
        assert rc == 0, f"bootagent status exited {rc}:\n{out}"
        rc, out = vm.ssh(ADMIN, bench.key, "sudo bootagent status --wait --timeout 5")
        assert rc == 0, f"bootagent status --wait exited {rc}:\n{out}"
        result = _result(bench, vm)
        bench.results["first"] = result
        assert result["status"] == "ok", result
        assert result["instance_id"].lower() == FIRST_ID.lower()
        statuses = _statuses(result)
        assert set(STEPS) <= set(statuses), statuses
        assert {s: statuses[s] for s in STEPS if s != "host_keys"} == \
            {s: "changed" for s in STEPS if s != "host_keys"}, result
        # host keys: made once, by bootagent-host-keys.service early in boot (the DMI
        # UUID is the instance); the run's own step then found them in place
        assert (bench.early_host_keys(vm), statuses["host_keys"]) == ("changed", "unchanged"), result

        # journal: structured lines from the unit
        journal = bench.run(vm, "sudo journalctl -b -u bootagent -o json --no-pager")
        entries = [json.loads(line) for line in journal.splitlines() if line.startswith("{")]
        tagged = [e for e in entries if "BOOTAGENT_STEP" in e and "BOOTAGENT_INSTANCE_ID" in e]
        assert tagged, "no journal entry of bootagent.service has BOOTAGENT_STEP and " \
                       "BOOTAGENT_INSTANCE_ID:\n" + journal[-3000:]
        assert {e["BOOTAGENT_INSTANCE_ID"].lower() for e in tagged} == {FIRST_ID.lower()}
        assert {e["BOOTAGENT_STEP"] for e in tagged} & set(STEPS)

        # ordering: declared, and as it happened this boot
        before = bench.systemd_props(vm, "bootagent", "Before")["Before"].split()
        assert "ssh.service" in before and "systemd-user-sessions.service" in before, before
        after = bench.systemd_props(vm, "bootagent", "After")["After"].split()
        assert "network.target" in after and "network-online.target" not in after, after
        unit = bench.systemd_props(vm, "bootagent", "ExecMainExitTimestampMonotonic",
                                   "ExecMainStatus", "ActiveState", "Result")
        assert (unit["ActiveState"], unit["Result"], unit["ExecMainStatus"]) == ("active", "success", "0")
        ssh_unit = bench.systemd_props(vm, "ssh", "InactiveExitTimestampMonotonic",
                                       "ExecMainStartTimestampMonotonic")
        assert int(ssh_unit["InactiveExitTimestampMonotonic"]) >= int(unit["ExecMainExitTimestampMonotonic"]), \
            (unit, ssh_unit)
        keys_before = bench.systemd_props(vm, "bootagent-host-keys", "Before")["Before"].split()
        assert "ssh.service" in keys_before and "systemd-user-sessions.service" in keys_before, keys_before
        keys_unit = bench.systemd_props(vm, "bootagent-host-keys", "ExecMainExitTimestampMonotonic",
                                        "ExecMainStatus", "ActiveState", "Result")
        assert (keys_unit["ActiveState"], keys_unit["Result"], keys_unit["ExecMainStatus"]) == \
            ("active", "success", "0")
        assert int(ssh_unit["InactiveExitTimestampMonotonic"]) >= \
            int(keys_unit["ExecMainExitTimestampMonotonic"]), (keys_unit, ssh_unit)

        # IMDS once, Ready reported to the wireserver
        gets = fake.instance_gets()
        assert len(gets) == 1, f"expected exactly one GET /metadata/instance, got {len(gets)}"
        assert gets[0]["headers"]["Metadata"] == "true"
        health = fake.health_posts()
        assert len(health) == 1, health
        assert health[0]["status"] == 200 and health[0]["health"]["state"] == "Ready", health

        # host keys: made by the agent (the image has none), and served by sshd
        keys = bench.host_key_fingerprints(vm)
        bench.fingerprints["first"] = keys
        assert {"RSA", "ECDSA", "ED25519"} <= set(keys), keys
        assert bench.served_fingerprints(vm) == keys

        assert vm.poweroff(ADMIN, bench.key), "the guest did not power off cleanly"


def test_same_vm_id_again_changes_nothing(bench):
    if "first" not in bench.results:
        pytest.fail("the first boot did not complete; nothing to compare with")
    vm, fake = bench.boot("boot2-same-vmid", FIRST_ID, "bootvm-1")
    with vm, fake:
        bench.record("boot2-same-vmid", vm, fake)
        rc, out = vm.ssh(ADMIN, bench.key, "sudo bootagent status")
        assert rc == 0, f"bootagent status exited {rc}:\n{out}"
        result = _result(bench, vm)
        assert result["status"] == "ok", result
        assert result["started"] != bench.results["first"]["started"], "result.json is the last boot's"
        statuses = _statuses(result)
        changed = {s: st for s, st in statuses.items() if st not in ("unchanged", "skipped")}
        assert not changed, f"a boot of the same instance changed something: {result}"
        assert bench.early_host_keys(vm) == "unchanged"
        assert bench.host_key_fingerprints(vm) == bench.fingerprints["first"]
        assert bench.served_fingerprints(vm) == bench.fingerprints["first"]
        assert bench.run(vm, "hostname").strip() == "bootvm-1"
        assert len(fake.instance_gets()) == 1
        assert fake.health_posts() == [], "Ready was reported again for the same instance"
        assert vm.poweroff(ADMIN, bench.key), "the guest did not power off cleanly"


def test_new_vm_id_provisions_again(bench):
    if "first" not in bench.results:
        pytest.fail("the first boot did not complete; nothing to compare with")
    vm, fake = bench.boot("boot3-new-vmid", SECOND_ID, "bootvm-2")
    with vm, fake:
        bench.record("boot3-new-vmid", vm, fake)
        result = _result(bench, vm)
        assert result["status"] == "ok", result
        assert result["instance_id"].lower() == SECOND_ID.lower()
        statuses = _statuses(result)
        for step in ("hostname", "templates", "report_ready"):
            assert statuses[step] == "changed", (step, result)
        # a new DMI UUID: the early unit made new keys, the run found them in place
        assert (bench.early_host_keys(vm), statuses["host_keys"]) == ("changed", "unchanged"), result
        assert bench.run(vm, "hostname").strip() == "bootvm-2"
        assert bench.run(vm, "cat /etc/motd") == "Welcome to bootvm-2 (ci)\n"
        keys = bench.host_key_fingerprints(vm)
        assert set(keys) == set(bench.fingerprints["first"])
        for kind, fp in keys.items():
            assert fp != bench.fingerprints["first"][kind], f"{kind} host key kept for a new instance"
        assert bench.served_fingerprints(vm) == keys
        assert len(fake.instance_gets()) == 1
        health = fake.health_posts()
        assert len(health) == 1 and health[0]["health"]["state"] == "Ready", health
        assert vm.poweroff(ADMIN, bench.key), "the guest did not power off cleanly"


LATE_EARLY_UNIT = vmimage.GuestFile(
    "/etc/systemd/system/bootagent-host-keys.service.d/late.conf",
    b"[Service]\n# started about when the run starts, as behind a slow /var mount\n"
    b"ExecStartPre=/bin/sleep 4\n")


def test_the_early_unit_starting_with_the_run_still_gives_one_set_of_keys(bench):
    """Both make /run/bootagent and write in it, each sweeps it: neither may take the
    other's work away. Whichever gets the keys' lock first makes the keys."""
    disk = vmimage.overlay(vmimage.install_bootagent(bench.base, bench.workdir / "late.raw", config=CONFIG,
                                                     templates=TEMPLATES, extra=[LATE_EARLY_UNIT]),
                           bench.workdir / "late.qcow2")
    vm, fake = bench.boot("boot4-late-early-unit", str(uuid.uuid4()), "bootvm-4", disk=disk)
    with vm, fake:
        bench.record("boot4-late-early-unit", vm, fake)
        result = _result(bench, vm)
        assert result["status"] == "ok", result
        for unit in ("bootagent", "bootagent-host-keys"):
            props = bench.systemd_props(vm, unit, "ActiveState", "Result", "ExecMainStatus")
            assert (props["ActiveState"], props["Result"], props["ExecMainStatus"]) == \
                ("active", "success", "0"), (unit, props)
        made = sorted([bench.early_host_keys(vm), _statuses(result)["host_keys"]])
        assert made == ["changed", "unchanged"], result
        keys = bench.host_key_fingerprints(vm)
        assert {"RSA", "ECDSA", "ED25519"} <= set(keys), keys
        assert bench.served_fingerprints(vm) == keys
        assert ".bootagent-tmp." not in bench.run(vm, "sudo ls -A /run/bootagent /etc/ssh")
        assert vm.poweroff(ADMIN, bench.key), "the guest did not power off cleanly"
