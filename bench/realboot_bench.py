#!/usr/bin/env python3
"""Real boots, bootagent against cloud-init: power-on to the first SSH login.

    sudo .venv/bin/python bench/realboot_bench.py [--rounds 3] [--json] [--keep DIR]

Three images made from the same Debian 12 base (tests/vm/image.py, cached):
bootagent installed as the real-boot test installs it (its Debian package, with
apt-get); Debian's cloud-init 22.4
with only its Azure datasource (tests/vm/cloudinit.py); and the floor: no agent,
with host keys and the admin's key already in place, the boot every agent stands
on. Each round boots each image, reversing the order every other round, each
from a fresh qcow2 overlay (a new VM: both agents make new SSH host keys), with
the same DMI system UUID and Azure's asset tag and the same fake IMDS document
served by `bootagent fake-imds` through the same guestfwd. cloud-init 22.4
provisions from IMDS alone (see tests/vm/cloudinit.py); `--ovf-cd` attaches the
provisioning CD that Azure gives every new VM to all three (cloud-init then reads
its ovf-env.xml; bootagent ignores it). The time is from QEMU's start to the
first successful SSH login as the admin with the key IMDS served (host clock).

Prints min and median per image, the ratio of medians (bootagent / cloud-init;
the spec's budget is at most 0.5) and what each agent adds to the floor; and, read
just after each first login, the CPU seconds the agent's units took (systemd's
accounting, children such as ssh-keygen included) and the whole guest's. The guest's
two emulated CPUs are saturated during the boot, so the login follows CPU time: the
agent's is the less noisy measure of a change, apart from RSA key generation, whose
cost is luck (the prime search).
`--tree NAME=DIR` (repeatable) adds an image to the same rounds: the bootagent of
another tree (e.g. `git worktree add DIR <commit>`) installed by that tree's own
tests/vm/image.py, so before and after are measured under the same load. Needs
what the real-boot test needs (tests/vm/README.md), plus genisoimage for
`--ovf-cd`. Not part of the test run.
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from vm import cloudinit, fake, image, qemu  # noqa: E402

ADMIN = "azureuser"
HOSTNAME = "benchvm"
TAGS = {"env": "bench", "role": "realboot"}
USERDATA = "#cloud-config\ngreeting: hello from userData\n"
# bootagent's configuration: one template, as a small real image would have.
CONFIG = "templates:\n  - src: motd.j2\n    dest: /etc/motd\n"
TEMPLATES = {"motd.j2": "Welcome to {{ hostname }} ({{ tags['env'] }})\n"}
VARIANTS = ("bootagent", "cloud-init", "floor")
# Each image's agent units (another tree's image: bootagent's): systemd's CPU accounting
# of them (their children, ssh-keygen and useradd, included) says how much of the
# guest's two emulated CPUs the agent took.
AGENT_UNITS = {"bootagent": ("bootagent-host-keys.service", "bootagent.service"),
               "cloud-init": ("cloud-init-local.service", "cloud-init.service",
                              "cloud-config.service", "cloud-final.service"),
               "floor": ()}
USER_HZ = 100  # /proc/stat's unit
SSH_DEADLINE = 600  # a guard, not a measurement
BUDGET = 0.5


def document(vm_id: str, public_key: str) -> dict:
    """The fake's document: one admin with one key, tags, a YAML userData, and
    the guest NIC's own MAC (cloud-init renders its network from it)."""
    from bootagent.fake.server import default_document

    doc = copy.deepcopy(default_document())
    compute = doc["compute"]
    compute.update(vmId=vm_id, name=HOSTNAME, osType="Linux",
                   tags=";".join(f"{k}:{v}" for k, v in TAGS.items()),
                   tagsList=[{"name": k, "value": v} for k, v in TAGS.items()],
                   userData=base64.b64encode(USERDATA.encode()).decode())
    compute["osProfile"] = {"adminUsername": ADMIN, "computerName": HOSTNAME,
                            "disablePasswordAuthentication": "true"}
    compute["publicKeys"] = [{"keyData": public_key, "path": f"/home/{ADMIN}/.ssh/authorized_keys"}]
    doc["network"]["interface"][0]["macAddress"] = cloudinit.QEMU_FIRST_MAC
    return doc


def install_floor(base: image.BaseImage, dest: Path, public_key: str) -> Path:
    """The base as a VM provisioned by nobody looks once provisioned: SSH host keys
    and the admin with the key already in place, no agent at all. Its time to the
    first login is the floor every agent's boot stands on."""
    image.copy_disk(base.disk, dest)
    w = image.Ext4Writer(dest)
    with tempfile.TemporaryDirectory(prefix="floor-keys-") as tmp:
        for kind in ("rsa", "ecdsa", "ed25519"):
            key = Path(tmp) / f"ssh_host_{kind}_key"
            subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "", "-f", str(key)], check=True)
            w.write(f"/etc/ssh/{key.name}", key.read_bytes(), mode=0o600)
            w.write(f"/etc/ssh/{key.name}.pub", Path(f"{key}.pub").read_bytes(), mode=0o644)
    uid = 1000
    for path, line in (("/etc/passwd", f"{ADMIN}:x:{uid}:{uid}::/home/{ADMIN}:/bin/bash\n"),
                       ("/etc/group", f"{ADMIN}:x:{uid}:\n"),
                       ("/etc/shadow", f"{ADMIN}:!:19000:0:99999:7:::\n"),
                       ("/etc/gshadow", f"{ADMIN}:!::\n")):
        mode = 0o644 if path in ("/etc/passwd", "/etc/group") else 0o640
        gid = 0 if mode == 0o644 else 42  # shadow
        w.write(path, image.read_file(dest, path) + line.encode(), mode=mode, gid=gid)
    w.mkdir(f"/home/{ADMIN}/.ssh", 0o755)
    w.write(f"/home/{ADMIN}/.ssh/authorized_keys", public_key + "\n", mode=0o600, uid=uid, gid=uid)
    w.commit()
    return dest


def install_other_tree(tree: Path, base: image.BaseImage, dest: Path) -> Path:
    """`tree`'s bootagent installed by `tree`'s own tests/vm/image.py (its package, or
    for older trees its copied tree and launcher), on this run's base image."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("other_tree_vm_image", tree / "tests/vm/image.py")
    other = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = other  # its dataclasses look their module up
    spec.loader.exec_module(other)
    return other.install_bootagent(base, dest, config=CONFIG, templates=TEMPLATES, repo=tree)


def missing_prerequisites(ovf_cd: bool) -> list[str]:
    tools = ("mmdebstrap", "mkfs.ext4", "debugfs", "qemu-system-x86_64", "qemu-img", "socat",
             "ssh", "ssh-keygen") + (("genisoimage",) if ovf_cd else ())
    missing = [t for t in tools if not shutil.which(t)]
    if os.geteuid() != 0:
        missing.append("root (mmdebstrap --mode=root)")
    return missing


class Bench:
    def __init__(self, work: Path, log=print, ovf_cd: bool = False,
                 trees: dict[str, Path] | None = None):
        self.work = work
        self.log = log
        self.key = work / "id_ed25519"
        if not self.key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "realboot-bench",
                            "-f", str(self.key)], check=True)
        self.public_key = Path(f"{self.key}.pub").read_text().strip()
        t0 = time.monotonic()
        base = image.build_base()
        cloud = image.build_base(variant=cloudinit.VARIANT)
        self.image_seconds = round(time.monotonic() - t0, 1)
        installed = image.install_bootagent(base, work / "bootagent.raw", config=CONFIG,
                                            templates=TEMPLATES)
        floor = install_floor(base, work / "floor.raw", self.public_key)
        self.images = {"bootagent": (installed, base), "cloud-init": (cloud.disk, cloud),
                       "floor": (floor, base)}
        for name, tree in (trees or {}).items():
            self.images[name] = (install_other_tree(tree, base, work / f"{name}.raw"), base)
        self.qemu_args: list[str] = []
        if ovf_cd:
            ovf = cloudinit.ovf_env_xml(admin=ADMIN, hostname=HOSTNAME, public_key=self.public_key)
            self.qemu_args = cloudinit.cdrom_args(cloudinit.provisioning_iso(work / "ovf-env.iso", ovf))
        self.boots: list[dict] = []

    def boot(self, variant: str, round_no: int, vm_id: str) -> dict:
        disk, img = self.images[variant]
        name = f"r{round_no}-{variant}"
        overlay = image.overlay(disk, self.work / f"{name}.qcow2")
        imds = fake.FakeImds(document(vm_id, self.public_key), self.work, name=name).start()
        vm = qemu.VM(overlay, img.kernel, img.initrd, workdir=self.work, vm_uuid=vm_id,
                     fake_port=imds.port, name=name, extra_args=self.qemu_args)
        try:
            load = os.getloadavg()[0]
            vm.boot()
            login = vm.wait_for_first_login(ADMIN, self.key, SSH_DEADLINE)
            rec = {"variant": variant, "round": round_no, "vm_id": vm_id, "accel": vm.accel,
                   "power_on_to_first_login_s": round(login - vm.power_on, 3),
                   "host_loadavg_1m_at_power_on": round(load, 2)}
            first = imds.first_request_time()
            rec["imds_first_request_after_power_on_s"] = round(first - vm.power_on, 3) if first else None
            rec["milestones_s"] = vm.timings()
            rc, out = vm.ssh(ADMIN, self.key, "hostname; ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub")
            lines = out.split("\n")
            rec["hostname"] = lines[0].strip() if rc == 0 else None
            rec["host_key_ed25519"] = lines[1].split()[1] if rc == 0 and len(lines) > 1 else None
            rec.update(guest_cpu(vm, self.key, AGENT_UNITS.get(variant, AGENT_UNITS["bootagent"])))
            rec["imds_instance_gets"] = len(imds.instance_gets())
            rec["health_reports"] = [{"status": h.get("status"), "state": (h.get("health") or {}).get("state"),
                                      "agent": h["headers"].get("x-ms-agent-name")}
                                     for h in imds.health_posts()]
            rec["console_log"] = str(vm.console_log)
            self.boots.append(rec)
            return rec
        finally:
            vm.kill()
            imds.stop()
            overlay.unlink(missing_ok=True)


def guest_cpu(vm, key: Path, units: tuple[str, ...]) -> dict:
    """CPU seconds, read just after the first login: each of the agent's units (systemd's
    CPUUsageNSec) and the whole guest's busy time since power-on (/proc/stat)."""
    command = "head -1 /proc/stat"
    if units:
        command = f"systemctl show -p Id -p CPUUsageNSec {' '.join(units)}; " + command
    rc, out = vm.ssh(ADMIN, key, command)
    if rc != 0:
        return {"agent_cpu_s": None, "unit_cpu_s": {}, "guest_busy_cpu_s": None}
    per_unit = {}
    for block in out.split("\n\n"):
        fields = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if fields.get("CPUUsageNSec", "").isdigit():
            per_unit[fields["Id"]] = round(int(fields["CPUUsageNSec"]) / 1e9, 3)
    ticks = [int(x) for x in next(line for line in out.splitlines() if line.startswith("cpu ")).split()[1:]]
    busy = sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait
    return {"agent_cpu_s": round(sum(per_unit.values()), 3) if per_unit else None,
            "unit_cpu_s": per_unit, "guest_busy_cpu_s": round(busy / USER_HZ, 2)}


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def summarize(boots: list[dict]) -> dict:
    out: dict = {"variants": {}}
    for variant in dict.fromkeys(b["variant"] for b in boots):
        times = [b["power_on_to_first_login_s"] for b in boots if b["variant"] == variant]
        mine = [b for b in boots if b["variant"] == variant]
        out["variants"][variant] = {
            "n": len(times), "min_s": min(times), "median_s": round(statistics.median(times), 3),
            "max_s": max(times),
            "imds_first_request_median_s": _median([b["imds_first_request_after_power_on_s"] for b in mine]),
            "agent_cpu_median_s": _median([b.get("agent_cpu_s") for b in mine]),
            "guest_busy_cpu_median_s": _median([b.get("guest_busy_cpu_s") for b in mine]),
        }
    v = out["variants"]
    agents = [k for k in v if k not in ("cloud-init", "floor")]  # bootagent, and other trees
    if "cloud-init" in v:
        anchor = v["cloud-init"]["median_s"]
        out["ratio_median"] = {k: round(v[k]["median_s"] / anchor, 3) for k in agents}
        out["budget"] = BUDGET
        out["meets_budget"] = {k: r <= BUDGET for k, r in out["ratio_median"].items()}
        if "floor" in v:  # what each agent adds to the boot it stands on
            floor = v["floor"]["median_s"]
            out["over_floor_s"] = {k: round(v[k]["median_s"] - floor, 3) for k in agents + ["cloud-init"]}
            out["floor_ratio"] = round(floor / anchor, 3)
    keys: dict[str, list] = {}
    for b in boots:
        if b["variant"] != "floor":  # its keys are baked in
            keys.setdefault(b["variant"], []).append(b.get("host_key_ed25519"))
    out["new_host_keys_every_boot"] = {k: len(set(v)) == len(v) and None not in v for k, v in keys.items()}
    return out


def table(boots: list[dict], summary: dict) -> str:
    nan = float("nan")
    lines = [f"{'round':>5}  {'image':<16} {'login s':>8} {'IMDS s':>7} {'keys s':>7} {'ssh up s':>8} "
             f"{'agent cpu':>9} {'guest cpu':>9} {'load':>5}  report"]
    for b in boots:
        reports = ",".join(f"{r['status']}/{r['state']}" for r in b["health_reports"]) or "none"
        m = b["milestones_s"]
        keys = m["host_keys_done"] - m["host_keys_started"] if "host_keys_done" in m and \
            "host_keys_started" in m else nan
        lines.append(f"{b['round']:>5}  {b['variant']:<16} {b['power_on_to_first_login_s']:>8.1f} "
                     f"{b['imds_first_request_after_power_on_s'] or nan:>7.1f} {keys:>7.1f} "
                     f"{m.get('ssh_started', nan):>8.1f} "
                     f"{_or_nan(b.get('agent_cpu_s')):>9.1f} {_or_nan(b.get('guest_busy_cpu_s')):>9.1f} "
                     f"{b['host_loadavg_1m_at_power_on']:>5.1f}  {reports}")
    lines.append("")
    lines.append(f"{'image':<16} {'n':>2} {'min s':>7} {'median s':>9} {'max s':>7} "
                 f"{'agent cpu s':>11} {'guest cpu s':>11}")
    for variant, s in summary["variants"].items():
        lines.append(f"{variant:<16} {s['n']:>2} {s['min_s']:>7.1f} {s['median_s']:>9.1f} {s['max_s']:>7.1f} "
                     f"{_or_nan(s['agent_cpu_median_s']):>11.1f} {_or_nan(s['guest_busy_cpu_median_s']):>11.1f}")
    lines.append("(cpu: seconds of the guest's CPU up to the first login; agent: its units and their "
                 "children, ssh-keygen included; guest: all of it, two emulated CPUs)")
    over = summary.get("over_floor_s", {})
    for agent, ratio in summary.get("ratio_median", {}).items():
        verdict = "meets" if summary["meets_budget"][agent] else "MISSES"
        extra = f", {over[agent]:+.1f} s over the floor" if agent in over else ""
        lines.append(f"{agent} / cloud-init, ratio of medians: {ratio:.3f} ({verdict} the budget "
                     f"of {BUDGET}){extra}")
    if over:
        lines.append(f"cloud-init: {over['cloud-init']:+.1f} s over the floor (no agent, keys and user "
                     f"in place); the floor alone is {summary['floor_ratio']:.3f} x cloud-init")
    lines.append(f"new SSH host keys on every boot: {summary['new_host_keys_every_boot']}")
    return "\n".join(lines)


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="rounds of one boot of each image (default 3)")
    ap.add_argument("--only", choices=VARIANTS, help="boot only this image (no ratio)")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (console logs, fake logs)")
    ap.add_argument("--tree", metavar="NAME=DIR", action="append", default=[],
                    help="also boot DIR's bootagent, installed by DIR's tests/vm/image.py, as NAME")
    ap.add_argument("--ovf-cd", action="store_true",
                    help="attach Azure's provisioning CD (ovf-env.xml) to every VM")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args()
    trees = dict(tree.split("=", 1) for tree in args.tree if "=" in tree)
    if len(trees) != len(args.tree) or set(trees) & set(VARIANTS):
        ap.error(f"--tree takes NAME=DIR, NAME not one of {', '.join(VARIANTS)}")
    trees = {name: Path(tree) for name, tree in trees.items()}
    missing = missing_prerequisites(args.ovf_cd)
    if missing:
        print("realboot_bench: missing " + ", ".join(missing) + " (apt-get install mmdebstrap "
              "e2fsprogs qemu-system-x86 qemu-utils socat openssh-client genisoimage)", file=sys.stderr)
        return 2
    work = Path(args.keep or tempfile.mkdtemp(prefix="realboot-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else \
        (lambda *a: print(*a, flush=True))
    bench = Bench(work, say, ovf_cd=args.ovf_cd, trees=trees)
    variants = [args.only] if args.only else list(VARIANTS) + list(trees)
    for round_no in range(1, args.rounds + 1):
        vm_id = str(uuid.uuid4())
        order = variants if round_no % 2 else variants[::-1]
        for variant in order:
            rec = bench.boot(variant, round_no, vm_id)
            say(f"round {round_no} {variant}: first login {rec['power_on_to_first_login_s']:.1f} s "
                f"after power-on (IMDS first asked at {rec['imds_first_request_after_power_on_s']} s, "
                f"load {rec['host_loadavg_1m_at_power_on']}); reports {rec['health_reports']}")
    summary = summarize(bench.boots)
    result = {"accel": bench.boots[0]["accel"] if bench.boots else None, "cpus": os.cpu_count(),
              "ovf_cd": args.ovf_cd,
              "image_seconds": bench.image_seconds, "workdir": str(work),
              "summary": summary, "boots": bench.boots}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print()
        print(table(bench.boots, summary))
        print(f"\nconsole and fake logs: {work}")
    if not args.keep:
        for f in work.glob("*.raw"):
            f.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
