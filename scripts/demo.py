"""Provision a scratch root from the fake IMDS and show what bootagent did."""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent / "bootagent"


def scratch_root(path: Path) -> None:
    """The few files a Debian root has that bootagent reads: accounts, hosts, sshd_config."""
    for sub in ("etc/ssh", "etc/bootagent/templates", "home", "var/lib", "run"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    (path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (path / "etc/group").write_text("root:x:0:\nsudo:x:27:\nusers:x:100:\n")
    (path / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    (path / "etc/gshadow").write_text("root:*::\nsudo:*::\nusers:*::\n")
    (path / "etc/hosts").write_text("127.0.0.1\tlocalhost\n")
    (path / "etc/ssh/sshd_config").write_text("Include /etc/ssh/sshd_config.d/*.conf\n")
    shutil.copy(REPO / "templates/bootagent.yaml", path / "etc/bootagent/bootagent.yaml")
    for template in (REPO / "templates").glob("*.j2"):
        shutil.copy(template, path / "etc/bootagent/templates" / template.name)


def show(title: str, text: str) -> None:
    print(f"\n\033[1m== {title}\033[0m")
    print(text.rstrip())


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), *args], capture_output=True, text=True)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="bootagent-demo-"))
    root = work / "root"
    scratch_root(root)
    fake = subprocess.Popen([str(BIN), "fake-imds", "--port", "0", "--log", str(work / "imds.log")],
                            stdout=subprocess.PIPE, text=True)
    try:
        url = fake.stdout.readline().strip()
        show("fake IMDS", f"listening on {url}; scratch root {root}")
        for boot in ("first boot", "second boot (nothing to do)"):
            done = run("run", "--root", str(root), "--imds-url", url)
            show(f"bootagent run: {boot} (exit {done.returncode})", done.stderr)
            if boot == "first boot":
                show("/etc/hostname", (root / "etc/hostname").read_text())
                show("/etc/hosts", (root / "etc/hosts").read_text())
                show("/etc/passwd (admin user)", (root / "etc/passwd").read_text().splitlines()[-1])
                keys = root / "home/azureuser/.ssh/authorized_keys"
                show("~azureuser/.ssh/authorized_keys", keys.read_text() if keys.exists() else "(none)")
                show("SSH host keys", "\n".join(sorted(p.name for p in (root / "etc/ssh").glob("ssh_host_*"))))
                for dest in ("etc/motd", "etc/profile.d/azure-tags.sh", "etc/issue.net"):
                    if (root / dest).exists():
                        show(f"/{dest} (from a template)", (root / dest).read_text())
        show("bootagent status", run("status", "--root", str(root)).stdout)
        requests = sum(1 for _ in open(work / "imds.log"))
        show("fake IMDS log", f"{requests} requests in all (one per boot)")
    finally:
        fake.terminate()
        fake.wait(timeout=5)
    print(f"\nThe scratch root stays in {root} for a look around.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
