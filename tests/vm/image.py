"""Build a minimal Debian 12 disk image and put bootagent into copies of it.

The base image is a sparse raw ext4 file system plus the kernel and initrd
extracted from it (QEMU boots them directly), built with mmdebstrap from the
Debian mirrors that the host's own apt sources name. It is cached under
``$BOOTAGENT_VM_CACHE`` (default ``~/.cache/bootagent-vm``), keyed by a hash of
the recipe (package list, hooks, sizes), so local runs build it once.

The root tree the disk was made from stays in the cache beside it: bootagent's
Debian package is installed with ``apt-get install ./bootagent_*.deb`` in a copy
of that tree (chroot, no network: its dependencies are in the base) and the copy
becomes a disk of its own, cached by the package's content. Each VM's
configuration and templates are then written into a copy of that disk with
``debugfs -w`` (nothing is mounted). Per-boot disks are qcow2 overlays on top of
that copy (see ``overlay``), so the copy stays as installed and booting the same
overlay again is "the same VM, rebooted".
"""

from __future__ import annotations

import dataclasses
import fcntl
import glob
import hashlib
import inspect
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable

SUITE = "bookworm"
DISK_SIZE = "3G"

# What the guest needs: an init and udev, sshd, the agent's interpreter and the
# libraries it imports (Debian's, as a real image would have them), a kernel whose
# initrd (MODULES=most) carries virtio_blk/virtio_net, and the tools the agent
# runs (useradd from passwd, ssh-keygen from openssh-client via openssh-server).
# The kernel is Debian's cloud flavour, as in Debian's own Azure images: measured
# under TCG it reaches SSH about 6.5 s sooner than linux-image-amd64 (whose
# 36 MB initrd, floppy and sound probing come before any service starts).
PACKAGES = [
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "openssh-server",
    "python3",
    "python3-requests",
    "python3-yaml",
    "python3-jinja2",
    "python3-systemd",
    "linux-image-cloud-amd64",
    "iproute2",
    "sudo",
    "passwd",
    "procps",
    # the resource disk: sfdisk (fdisk), mkfs.ext4 (e2fsprogs), ntfsls (ntfs-3g)
    "fdisk",
    "e2fsprogs",
    "ntfs-3g",
]

# Runs on the host with the new root as $1 after all packages are installed.
# Test-image choices (not product behaviour) are marked as such.
CUSTOMIZE = r"""
set -eu
R="$1"
# DHCP on the first NIC with systemd-networkd; no IPv4LL: 169.254.0.0/16 on the
# link would shadow the route to IMDS.
mkdir -p "$R/etc/systemd/network"
cat > "$R/etc/systemd/network/20-wired.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no
EOF
chroot "$R" systemctl enable systemd-networkd.service
# Nothing the test needs, and each costs boot time or does network traffic.
for t in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer \
         e2scrub_reap.service; do
    chroot "$R" systemctl disable "$t" 2>/dev/null || true
done
printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' > "$R/etc/fstab"
printf 'debian\n' > "$R/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' > "$R/etc/hosts"
: > "$R/etc/resolv.conf"
chmod 0644 "$R/etc/hostname" "$R/etc/hosts" "$R/etc/resolv.conf"
# Test-image choice: the admin user's password is locked (key login only), so
# group sudo may use sudo without one.
printf '%%sudo ALL=(ALL:ALL) NOPASSWD: ALL\n' > "$R/etc/sudoers.d/90-test-image-nopasswd"
chmod 0440 "$R/etc/sudoers.d/90-test-image-nopasswd"
# Captured-image state, as `bootagent clean --machine-id --ssh-host-keys` leaves
# it: no host keys (the agent must make them before sshd starts), empty machine-id.
rm -f "$R"/etc/ssh/ssh_host_*
: > "$R/etc/machine-id"
rm -f "$R/var/lib/dbus/machine-id"
rm -rf "$R"/var/cache/apt/archives/*.deb "$R"/var/lib/apt/lists/*
"""

DPKG_OPTS = [
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
]

RECIPE_VERSION = 1
UNUSED_FOR = 3600  # seconds before another recipe's cached image may be removed


@dataclasses.dataclass(frozen=True)
class Variant:
    """The base recipe plus more packages and one more customize hook (run
    after CUSTOMIZE, with the root as $1), cached under its own name: e.g. the
    cloud-init image that bench/realboot_bench.py compares with. The plain base
    is ``Variant()``."""
    name: str = "base"
    packages: tuple[str, ...] = ()
    customize: str = ""


BASE = Variant()


def recipe_key(variant: Variant = BASE) -> str:
    """Hash of everything that decides the image's content: the package
    list, the hooks and the build function's own code."""
    h = hashlib.sha256()
    recipe = {
        "version": RECIPE_VERSION, "suite": SUITE, "size": DISK_SIZE,
        "packages": PACKAGES, "customize": CUSTOMIZE, "dpkg": DPKG_OPTS,
        "build": inspect.getsource(_build_into),
    }
    if variant != BASE:
        recipe["variant"] = dataclasses.asdict(variant)
    h.update(json.dumps(recipe, sort_keys=True).encode())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    d = os.environ.get("BOOTAGENT_VM_CACHE")
    return Path(d) if d else Path.home() / ".cache" / "bootagent-vm"


@dataclasses.dataclass(frozen=True)
class BaseImage:
    disk: Path      # raw ext4 file system, root of the guest (/dev/vda)
    kernel: Path
    initrd: Path

    @classmethod
    def in_dir(cls, d: Path) -> "BaseImage":
        return cls(d / "disk.raw", d / "vmlinuz", d / "initrd.img")

    @property
    def rootfs(self) -> Path:
        """The root tree the disk was made from, kept: packages are installed
        into copies of it (chroot apt-get)."""
        return self.disk.parent / "rootfs"

    def exists(self) -> bool:
        return (all(p.is_file() for p in (self.disk, self.kernel, self.initrd))
                and self.rootfs.is_dir())


# ---------------------------------------------------------------------------
# Mirrors, from the host's apt sources

def _parse_one_line(text: str) -> list[tuple[str, str, list[str], str | None]]:
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        words = line.split()[1:]
        signed_by = None
        if words and words[0].startswith("["):
            opts = []
            while words:
                w = words.pop(0)
                opts.append(w)
                if w.endswith("]"):
                    break
            for o in " ".join(opts).strip("[]").split():
                if o.startswith("signed-by="):
                    signed_by = o.split("=", 1)[1]
        if len(words) >= 3:
            out.append((words[0], words[1], words[2:], signed_by))
    return out


def _parse_deb822(text: str) -> list[tuple[str, str, list[str], str | None]]:
    out = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0] in " \t" and key:
                fields[key] += " " + line.strip()
                continue
            if ":" in line:
                key, val = line.split(":", 1)
                key = key.strip().lower()
                fields[key] = val.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        signed_by = fields.get("signed-by")
        if signed_by and not signed_by.startswith("/"):
            signed_by = None  # an inline key: let apt use its default keyrings
        comps = fields.get("components", "main").split()
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                out.append((uri, suite, comps, signed_by))
    return out


def host_apt_sources(etc: Path = Path("/etc/apt")) -> list[tuple[str, str, list[str], str | None]]:
    entries = []
    main = etc / "sources.list"
    if main.is_file():
        entries += _parse_one_line(main.read_text(errors="replace"))
    for f in sorted((etc / "sources.list.d").glob("*")):
        if f.suffix == ".list":
            entries += _parse_one_line(f.read_text(errors="replace"))
        elif f.suffix == ".sources":
            entries += _parse_deb822(f.read_text(errors="replace"))
    return entries


def debian_mirrors(suite: str = SUITE, etc: Path = Path("/etc/apt")) -> list[str]:
    """One-line apt sources for `suite` (main only), made from the host's own
    sources: its entries for the suite when it has them, else its Debian
    archive and security URIs with the suite swapped in. Nothing is hard-coded:
    the machine may only reach the mirrors its apt is configured for."""
    entries = [e for e in host_apt_sources(etc) if "main" in e[2]]

    def line(uri: str, s: str, signed_by: str | None) -> str:
        opt = f"[signed-by={signed_by}] " if signed_by and Path(signed_by).exists() else ""
        return f"deb {opt}{uri} {s} main"

    wanted = {suite, f"{suite}-updates", f"{suite}-security", f"{suite}/updates"}
    same = [line(u, s, k) for u, s, c, k in entries if s in wanted]
    if any(s == suite for _, s, _, _ in entries):
        return list(dict.fromkeys(same))
    # Host on another Debian release: reuse its archive URIs.
    archive = [(u, k) for u, s, c, k in entries
               if "security" not in s and "security" not in u and "-" not in s]
    security = [(u, k) for u, s, c, k in entries if "security" in s or "security" in u]
    if not archive:
        raise RuntimeError(
            "no Debian archive found in the host's apt sources (/etc/apt/sources.list*); "
            "mmdebstrap needs a reachable mirror for " + suite)
    u, k = archive[0]
    out = [line(u, suite, k), line(u, f"{suite}-updates", k)]
    if security:
        u, k = security[0]
        out.append(line(u, f"{suite}-security", k))
    return out


# ---------------------------------------------------------------------------
# Building the base image

def _log(msg: str) -> None:
    print(f"[vm.image] {msg}", file=sys.stderr, flush=True)


def build_base(force: bool = False, log_file: Path | None = None,
               variant: Variant = BASE) -> BaseImage:
    """Return the cached base image (or `variant` of it), building it first
    when needed."""
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    key = recipe_key(variant)
    name = variant.name
    final = root / f"{name}-{key}"
    img = BaseImage.in_dir(final)
    with open(root / f".lock-{key}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be building it
        if img.exists() and not force:
            os.utime(final)  # in use: see the clean-up below
            return img
        for stale in root.glob(f".build-{key}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=root))
        try:
            _build_into(work, log_file or (root / f"build-{key}.log"), variant)
            if final.exists():
                shutil.rmtree(final)
            work.rename(final)
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
    # Keep the cache at about one image per variant, but never pull one from under
    # another checkout's run (another recipe, e.g. a clean clone testing HEAD):
    # only images that no build_base returned for an hour go.
    for old in root.glob(f"{name}-*"):
        if (old != final and old.is_dir() and old.name.count("-") == name.count("-") + 1
                and time.time() - old.stat().st_mtime > UNUSED_FOR):
            shutil.rmtree(old, ignore_errors=True)
    return BaseImage.in_dir(final)


def _build_into(work: Path, log_file: Path, variant: Variant = BASE) -> None:
    for tool in ("mmdebstrap", "mkfs.ext4"):
        if not shutil.which(tool):
            raise RuntimeError(f"{tool} not found: apt-get install mmdebstrap e2fsprogs")
    rootfs = work / "rootfs"
    hook = work / "customize.sh"
    hook.write_text(CUSTOMIZE)
    packages = PACKAGES + list(variant.packages)
    mirrors = debian_mirrors()
    cmd = ["mmdebstrap", "--mode=root", "--variant=minbase", "--format=directory",
           "--include=" + ",".join(packages),
           "--aptopt=Acquire::Retries \"3\"",
           f"--customize-hook=sh {hook} \"$1\""]
    if variant.customize:
        variant_hook = work / "customize-variant.sh"
        variant_hook.write_text(variant.customize)
        cmd.append(f"--customize-hook=sh {variant_hook} \"$1\"")
    cmd += [f"--dpkgopt={o}" for o in DPKG_OPTS]
    cmd += [SUITE, str(rootfs), *mirrors]
    t0 = time.monotonic()
    _log(f"building Debian {SUITE} root with mmdebstrap (log: {log_file})")
    with open(log_file, "w") as lf:
        lf.write("$ " + " ".join(cmd) + "\n")
        lf.flush()
        r = subprocess.run(cmd, stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        tail = log_file.read_text(errors="replace").splitlines()[-25:]
        raise RuntimeError(f"mmdebstrap failed ({r.returncode}); last lines of {log_file}:\n"
                           + "\n".join(tail))
    kernels = sorted(glob.glob(str(rootfs / "boot/vmlinuz-*")))
    initrds = sorted(glob.glob(str(rootfs / "boot/initrd.img-*")))
    if not kernels or not initrds:
        raise RuntimeError("the root has no /boot/vmlinuz-* or /boot/initrd.img-*")
    shutil.copyfile(kernels[-1], work / "vmlinuz")
    shutil.copyfile(initrds[-1], work / "initrd.img")
    disk = work / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(_size_bytes(DISK_SIZE))
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "bootroot", "-E", "root_owner=0:0",
                    "-d", str(rootfs), str(disk)], check=True)
    # The tree stays: packages (bootagent's .deb) are installed into copies of it
    (work / "manifest.json").write_text(json.dumps({
        "suite": SUITE, "variant": variant.name, "packages": packages, "mirrors": mirrors,
        "key": recipe_key(variant),
        "kernel": Path(kernels[-1]).name, "build_seconds": round(time.monotonic() - t0, 1),
    }, indent=2) + "\n")
    _log(f"base image built in {time.monotonic() - t0:.0f} s")


def _size_bytes(s: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(s[:-1]) * units[s[-1]] if s[-1] in units else int(s)


# ---------------------------------------------------------------------------
# Writing files into an ext4 image with debugfs (no mount, no root needed)

@dataclasses.dataclass
class GuestFile:
    path: str               # absolute path in the guest
    data: bytes
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


class Ext4Writer:
    """Collects files, directories and symlinks, then writes them in one
    ``debugfs -w`` session. Existing files at those paths are replaced."""

    def __init__(self, disk: Path):
        self.disk = disk
        self.dirs: dict[str, int] = {}
        self.files: list[GuestFile] = []
        self.links: list[tuple[str, str]] = []

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            self.dirs.setdefault("/" + "/".join(parts[:i]), 0o755)
        self.dirs["/" + "/".join(parts)] = mode

    def write(self, path: str, data: bytes | str, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.mkdir(os.path.dirname(path))
        self.files.append(GuestFile(path, data, mode, uid, gid))

    def symlink(self, path: str, target: str) -> None:
        self.mkdir(os.path.dirname(path))
        self.links.append((path, target))

    def commit(self) -> None:
        existing = self._existing(list(self.dirs) + [f.path for f in self.files]
                                  + [p for p, _ in self.links])
        with tempfile.TemporaryDirectory(prefix="vm-ext4-") as tmp:
            cmds = []
            for d in sorted(self.dirs, key=lambda p: p.count("/")):
                if existing.get(d) != "dir":
                    cmds.append(f"mkdir {_q(d)}")
                cmds.append(f"sif {_q(d)} mode 0{0o40000 | self.dirs[d]:o}")
            for i, f in enumerate(self.files):
                src = Path(tmp) / f"f{i}"
                src.write_bytes(f.data)
                if f.path in existing:
                    cmds.append(f"rm {_q(f.path)}")
                cmds.append(f"write {src} {_q(f.path)}")
                cmds.append(f"sif {_q(f.path)} mode 0{0o100000 | f.mode:o}")
                cmds.append(f"sif {_q(f.path)} uid {f.uid}")
                cmds.append(f"sif {_q(f.path)} gid {f.gid}")
            for path, target in self.links:
                if path in existing:
                    cmds.append(f"rm {_q(path)}")
                cmds.append(f"symlink {_q(path)} {_q(target)}")
            script = Path(tmp) / "cmds"
            script.write_text("\n".join(cmds) + "\n")
            r = subprocess.run(["debugfs", "-w", "-f", str(script), str(self.disk)],
                               capture_output=True, text=True)
        errors = [line for line in r.stderr.splitlines()
                  if line.strip() and not line.startswith("debugfs ")]
        if r.returncode != 0 or errors:
            raise RuntimeError("debugfs failed:\n" + "\n".join(errors or [r.stderr]))
        # Prove it: every file reads back with its bytes.
        for f in self.files:
            got = read_file(self.disk, f.path)
            if got != f.data:
                raise RuntimeError(f"debugfs wrote {f.path} but it reads back differently")

    def _existing(self, paths: Iterable[str]) -> dict[str, str]:
        paths = list(dict.fromkeys(paths))
        out: dict[str, str] = {}
        if not paths:
            return out
        script = "\n".join(f"stat {_q(p)}" for p in paths) + "\n"
        r = subprocess.run(["debugfs", "-f", "-", str(self.disk)], input=script,
                           capture_output=True, text=True)
        # stat output: "Inode: N   Type: regular ..." per found path, in order;
        # missing ones print "...: File not found by ext2_lookup" on stderr.
        for chunk in re.split(r"^debugfs:\s+stat ", r.stdout, flags=re.M)[1:]:
            name, _, rest = chunk.partition("\n")
            name = name.strip().strip('"')
            if "Type: directory" in rest:
                out[name] = "dir"
            elif "Type: " in rest:
                out[name] = "file"
        return out


def _q(path: str) -> str:
    if any(c in path for c in ' "\n\t'):
        raise ValueError(f"unsupported character in guest path {path!r}")
    return path


def read_file(disk: Path, path: str) -> bytes:
    """Read one file out of an ext4 image (debugfs cat)."""
    r = subprocess.run(["debugfs", "-R", f"cat {_q(path)}", str(disk)], capture_output=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr.decode(errors="replace"))
    return r.stdout


# ---------------------------------------------------------------------------
# Putting bootagent into a copy of the base image

REPO = Path(__file__).resolve().parents[2]

# The units the package enables for multi-user.target (see their [Install] sections).
UNITS = ("bootagent.service", "bootagent-host-keys.service")
# Debian's tools with Debian's python3 (a pyenv shim earlier on PATH would shadow it).
CHROOT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root",
              "DEBIAN_FRONTEND": "noninteractive"}

CONFIG_CACHE = "/var/lib/bootagent/config-cache.json"
# `bootagent clean`, run over a staging root, by this interpreter and the tree's package
CLEAN = "import sys; sys.path.insert(0, sys.argv[1]); from bootagent.cli import main; sys.exit(main(sys.argv[2:]))"


def captured_config_cache(config: str, repo: Path = REPO) -> bytes:
    """What an image captured as the Packer example captures it (`bootagent clean` last)
    holds beside its configuration: clean validates it and leaves its parse cached, so
    the first boot reads it without PyYAML. Made by the tree's own clean."""
    with tempfile.TemporaryDirectory(prefix="vm-capture-") as stage:
        path = Path(stage) / "etc/bootagent/bootagent.yaml"
        path.parent.mkdir(parents=True)
        path.write_text(config)
        subprocess.run([sys.executable, "-c", CLEAN, str(repo), "clean", "--root", stage],
                       check=True, capture_output=True)
        return (Path(stage) / CONFIG_CACHE.lstrip("/")).read_bytes()


def copy_disk(src: Path, dest: Path) -> Path:
    subprocess.run(["cp", "--sparse=always", "--reflink=auto", str(src), str(dest)], check=True)
    return dest


# ---------------------------------------------------------------------------
# bootagent's Debian package, installed as image builders install it

def build_deb(repo: Path = REPO) -> Path:
    """`repo`'s .deb, made by its scripts/build-deb.sh (rebuilt only when its files changed)."""
    r = subprocess.run([str(repo / "scripts" / "build-deb.sh"), "--if-changed", "--no-lintian"],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise RuntimeError(f"scripts/build-deb.sh failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return Path(r.stdout.strip().splitlines()[-1])


def deb_key(deb: Path) -> str:
    """Hash of what the package installs and runs (file names, modes, bytes, control
    files), not of its time stamps: the same tree built twice keys the same layer."""
    import tarfile
    h = hashlib.sha256()
    for part in ("--ctrl-tarfile", "--fsys-tarfile"):
        data = subprocess.run(["dpkg-deb", part, str(deb)], check=True, capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for m in sorted(tar.getmembers(), key=lambda m: m.name):
                h.update(f"{part} {m.name} {m.type!r} {m.mode:o} {m.linkname}\n".encode())
                if m.isfile():
                    h.update(tar.extractfile(m).read())
    return h.hexdigest()[:16]


def apt_install_deb(root: Path, deb: Path) -> str:
    """`apt-get install ./bootagent_*.deb` in the chroot `root`, as an image builder
    runs it (its dependencies are in the base already: no network). Returns apt's output."""
    staged = root / "tmp" / deb.name
    shutil.copyfile(deb, staged)
    try:
        r = subprocess.run(["chroot", str(root), "apt-get", "install", "-y", "-q",
                            "--no-install-recommends", f"/tmp/{deb.name}"],
                           env=CHROOT_ENV, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    finally:
        staged.unlink(missing_ok=True)
    if r.returncode != 0:
        raise RuntimeError(f"apt-get install {deb.name} in {root} failed ({r.returncode}):\n"
                           + (r.stdout + r.stderr)[-3000:])
    return r.stdout + r.stderr


def packaged_disk(base: BaseImage, deb: Path) -> Path:
    """The base disk with `deb` installed by apt-get in a copy of the base's root tree,
    cached beside the base, keyed by the package's content (deb_key)."""
    d = base.disk.parent
    key = deb_key(deb)
    final = d / f"bootagent-{key}.raw"
    with open(d / f".lock-bootagent-{key}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_file():
            os.utime(final)
            return final
        work = Path(tempfile.mkdtemp(prefix=f".pkg-{key}-", dir=d))
        try:
            root = work / "root"
            subprocess.run(["cp", "-a", "--reflink=auto", str(base.rootfs), str(root)], check=True)
            apt_install_deb(root, deb)
            disk = work / "disk.raw"
            with open(disk, "wb") as f:
                f.truncate(_size_bytes(DISK_SIZE))
            subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "bootroot", "-E", "root_owner=0:0",
                            "-d", str(root), str(disk)], check=True)
            disk.rename(final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    for old in d.glob("bootagent-*.raw"):  # other packages' layers, unused for an hour
        if old != final and time.time() - old.stat().st_mtime > UNUSED_FOR:
            old.unlink(missing_ok=True)
    return final


def install_bootagent(base: BaseImage, dest: Path, *, config: str | None = None,
                      templates: dict[str, str] | None = None,
                      extra: Iterable[GuestFile] = (), repo: Path = REPO,
                      deb: Path | None = None, units: dict[str, bytes] | None = None) -> Path:
    """Install bootagent as an image builder does: its Debian package (`deb`, else
    `repo`'s, built by scripts/build-deb.sh) with apt-get into the base's root
    (cached, see packaged_disk), which enables both units for multi-user.target;
    then, in a copy of that disk at `dest`, /etc/bootagent/bootagent.yaml (with the
    parse cache `bootagent clean` leaves at capture) and templates. `units`: more unit
    files (name to bytes), installed and enabled for multi-user.target beside
    bootagent's (e.g. examples/units/)."""
    layer = packaged_disk(base, deb or build_deb(repo))
    copy_disk(layer, dest)
    w = Ext4Writer(dest)
    if config is not None:
        w.write("/etc/bootagent/bootagent.yaml", config)
        w.write(CONFIG_CACHE, captured_config_cache(config, repo), mode=0o600)
    for name, text in (templates or {}).items():
        w.write(f"/etc/bootagent/templates/{name}", text)
    for name, data in (units or {}).items():
        w.write(f"/etc/systemd/system/{name}", data)
        w.symlink(f"/etc/systemd/system/multi-user.target.wants/{name}", f"/etc/systemd/system/{name}")
    for f in extra:
        w.write(f.path, f.data, f.mode, f.uid, f.gid)
    w.commit()
    return dest


def overlay(backing: Path, dest: Path) -> Path:
    """A qcow2 overlay on `backing`: one VM's disk. Reusing it is a reboot."""
    with open(backing, "rb") as f:
        fmt = "qcow2" if f.read(4) == b"QFI\xfb" else "raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt,
                    "-b", str(backing.resolve()), str(dest)], check=True)
    return dest


if __name__ == "__main__":
    img = build_base(force="--force" in sys.argv)
    print(json.dumps({k: str(v) for k, v in dataclasses.asdict(img).items()}))
