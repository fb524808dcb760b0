#!/usr/bin/env python3
"""A complete `packer build` of bootagent.pkr.hcl on this machine, then a boot
of the baked image as a new VM to prove it provisions again.

    .venv/bin/python examples/packer/build-local.py [--keep WORKDIR]

Optional, not part of CI. Needs what the real-boot test needs (see
tests/vm/README.md) plus packer. Under TCG it takes a few minutes.

1. This tree's Debian package is built (scripts/build-deb.sh). The real-boot
   test's Debian 12 base, with that package installed, is the base image:
   Packer logs in as the user bootagent makes for it, from a document served by
   `bootagent fake-imds` (user "packer", the build's key).
2. Packer waits for that run (`bootagent status --wait`), uploads the package
   and installs it with apt-get, runs `bootagent clean --machine-id
   --ssh-host-keys`, and deletes its user at shutdown.
3. The output is booted with a new vmId and another admin: it must provision
   again (new host keys, new machine-id, no build user left), with the package
   installed and both units enabled.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests"))

from vm import fake as vmfake  # noqa: E402
from vm import image as vmimage  # noqa: E402
from vm import qemu as vmqemu  # noqa: E402


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


def document(vm_id: str, admin: str, name: str, key: Path) -> dict:
    from bootagent.fake.server import default_document
    doc = copy.deepcopy(default_document())
    c = doc["compute"]
    c.update(vmId=vm_id, name=name, tags="", tagsList=[], userData="")
    c["osProfile"] = {"adminUsername": admin, "computerName": name,
                      "disablePasswordAuthentication": "true"}
    c["publicKeys"] = [{"keyData": Path(f"{key}.pub").read_text().strip(),
                        "path": f"/home/{admin}/.ssh/authorized_keys"}]
    return doc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary one)")
    args = ap.parse_args()
    missing = [t for t in ("packer", "socat", "qemu-system-x86_64", "qemu-img") if not shutil.which(t)]
    if missing:
        print("build-local: missing " + ", ".join(missing), file=sys.stderr)
        return 2
    work = Path(args.keep or tempfile.mkdtemp(prefix="bootagent-packer-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()

    deb = vmimage.build_deb(REPO)
    base = vmimage.build_base()
    stage1 = vmimage.install_bootagent(base, work / "base-with-bootagent.raw",
                                       config="templates: []\n", deb=deb)
    packer_key = keygen(work / "packer_key")
    accel = vmqemu.detect_accel(base.kernel, base.initrd)
    build_vm = str(uuid.uuid4())
    out_dir = work / "output"
    shutil.rmtree(out_dir, ignore_errors=True)

    with vmfake.FakeImds(document(build_vm, "packer", "packer-build", packer_key), work,
                         name="packer-fake") as fake:
        varfile = work / "build.pkrvars.json"
        varfile.write_text(json.dumps({
            "base_image": str(stage1),
            "ssh_private_key_file": str(packer_key),
            "bootagent_deb": str(deb),
            "delete_build_user": True,
            "accelerator": accel,
            "fake_imds_port": fake.port,
            "output_directory": str(out_dir),
            "extra_qemuargs": [
                ["-kernel", str(base.kernel)], ["-initrd", str(base.initrd)],
                ["-append", "root=/dev/vda rw console=ttyS0"],
                ["-serial", f"file:{work / 'packer-console.log'}"],
                ["-smbios", f"type=3,asset={vmqemu.AZURE_ASSET_TAG}"],
                ["-uuid", build_vm],
            ],
        }, indent=2))
        print(f"build-local: packer build ({accel}), log {work / 'packer.log'}", flush=True)
        with open(work / "packer.log", "w") as log:
            r = subprocess.run(["packer", "build", "-color=false", f"-var-file={varfile}",
                                str(HERE / "bootagent.pkr.hcl")], cwd=work, stdout=log,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            print((work / "packer.log").read_text()[-4000:], file=sys.stderr)
            print(f"build-local: packer build failed ({r.returncode})", file=sys.stderr)
            return 1
        assert fake.instance_gets(), "the build VM never asked the fake IMDS"
    baked = out_dir / "debian-12-bootagent.qcow2"
    t_build = time.monotonic() - t0
    print(f"build-local: baked {baked} in {t_build:.0f} s", flush=True)

    # The baked image as a new VM: a new vmId, another admin, its own key.
    new_vm = str(uuid.uuid4())
    user_key = keygen(work / "user_key")
    disk = vmimage.overlay(baked, work / "first-vm.qcow2")
    with vmfake.FakeImds(document(new_vm, "azureuser", "baked-vm-1", user_key), work,
                         name="verify-fake") as fake:
        vm = vmqemu.VM(disk, base.kernel, base.initrd, workdir=work, vm_uuid=new_vm,
                       fake_port=fake.port, name="verify", accel=accel)
        with vm:
            vm.boot()
            vm.wait_for_ssh("azureuser", user_key, 300)

            def sh(cmd: str) -> str:
                rc, out = vm.ssh("azureuser", user_key, cmd)
                if rc != 0:
                    raise SystemExit(f"build-local: `{cmd}` exited {rc}: {out}")
                return out

            result = json.loads(sh("sudo cat /run/bootagent/result.json"))
            checks = {
                "provisioned as the new instance": result.get("instance_id", "").lower() == new_vm,
                # made early by bootagent-host-keys.service (else by the run itself)
                "new host keys": "changed" in (
                    result["steps"]["host_keys"]["status"],
                    sh("sudo journalctl -b -u bootagent-host-keys -o cat --no-pager | "
                       "grep -E '^(changed|unchanged)' | tail -n 1").split(":")[0].strip()),
                "hostname": sh("hostname").strip() == "baked-vm-1",
                "machine-id made at boot": len(sh("cat /etc/machine-id").strip()) == 32,
                "build user gone": vm.ssh("azureuser", user_key, "getent passwd packer")[0] != 0,
                "status ok": vm.ssh("azureuser", user_key, "sudo bootagent status")[0] == 0,
                "package installed": "Status: install ok installed" in sh("dpkg -s bootagent"),
                "both units enabled": sh("systemctl is-enabled bootagent.service "
                                         "bootagent-host-keys.service").split() == ["enabled"] * 2,
            }
            vm.poweroff("azureuser", user_key)
    for name, ok in checks.items():
        print(f"build-local: {'PASS' if ok else 'FAIL'} {name}")
    print(f"build-local: total {time.monotonic() - t0:.0f} s (work dir {work})")
    if not args.keep and all(checks.values()):
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
