"""Boot a disk under QEMU the way Azure would look to the guest, and talk to it.

What the guest sees:
- user-mode networking on 168.0.0.0/7, a net that holds both Azure addresses,
  so the guest's DHCP lease puts them on link and slirp answers for them:
  169.254.169.254:80 (IMDS) and 168.63.129.16:80 (wireserver) are forwarded
  to one host port, where a fake IMDS (``bootagent fake-imds``) serves both;
- the guest's port 22 forwarded to a free host port on 127.0.0.1;
- Azure's DMI chassis asset tag and the vmId as the DMI system UUID;
- direct kernel boot of the image's own kernel and initrd, the serial console
  read line by line and time-stamped on the host clock.

Accelerator: KVM when it works, else TCG. ``/dev/kvm`` existing is not enough
(a nested layer may start QEMU but never run the guest), so a short probe boot
must reach the initramfs's userspace first. ``BOOTAGENT_VM_ACCEL=kvm|tcg``
skips the probe; the probe's verdict is kept for the process.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

AZURE_ASSET_TAG = "7783-7084-3265-9085-8269-3286-77"
IMDS_IP = "169.254.169.254"
WIRESERVER_IP = "168.63.129.16"
GUEST_NET = "168.0.0.0/7"
# QEMU's MAC for the first NIC when none is given (the guest's primary NIC), and the
# optional second NIC's own user-mode network (no guestfwd there: it is only a NIC)
FIRST_MAC = "52:54:00:12:34:56"
SECOND_NET = "10.0.3.0/24"

# Console lines that mark boot milestones (first match wins, host clock).
MILESTONES = {
    "kernel": re.compile(r"Linux version \d"),
    "userspace": re.compile(r"Run /init as init process|Loading, please wait"),
    "systemd": re.compile(r"systemd\[1\]: .*running in system mode|Welcome to .*Debian"),
    "networkd": re.compile(r"Started systemd-networkd\.service|Started .*Network Configuration"),
    # networkd's own line, on the console when journald forwards to it
    "dhcp": re.compile(r"DHCPv4 address \d+\.\d+\.\d+\.\d+"),
    "host_keys_started": re.compile(r"Starting bootagent-host-keys\.service|Starting .*SSH host keys of"),
    "host_keys_done": re.compile(r"Finished bootagent-host-keys\.service|Finished .*SSH host keys of|"
                                 r"Failed to start bootagent-host-keys\.service"),
    "bootagent_started": re.compile(r"Starting bootagent\.service|Starting .*bootagent first-boot"),
    "bootagent_done": re.compile(r"Finished bootagent\.service|Finished .*bootagent first-boot|"
                                 r"Failed to start bootagent\.service|Failed to start .*bootagent first-boot"),
    # the cloud-init image of bench/realboot_bench.py
    "cloud_init_local_started": re.compile(r"Starting cloud-init-local\.service|Starting .*cloud-init.*local"),
    "cloud_init_local_done": re.compile(r"Finished cloud-init-local\.service|Finished .*cloud-init.*local"),
    "cloud_init_done": re.compile(r"Finished cloud-init\.service|Finished .*Initial cloud-init job"),
    "ssh_started": re.compile(r"Started ssh\.service|Started .*OpenBSD Secure Shell"),
    "login_prompt": re.compile(r" login: ?$"),
    "power_off": re.compile(r"reboot: Power down|Power down\.?$"),
    # sshd will not come up in this boot any more
    "ssh_gave_up": re.compile(r"ssh\.service: Start request repeated too quickly"),
}

_ACCEL: str | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_tools() -> list[str]:
    """Names of the host tools this module needs that are missing."""
    return [t for t in ("qemu-system-x86_64", "qemu-img", "socat", "ssh", "ssh-keygen")
            if not shutil.which(t)]


class VM:
    """One guest. ``boot()`` powers it on; the serial console goes to
    ``console_log`` with each line's host time since power-on."""

    def __init__(self, disk: Path, kernel: Path, initrd: Path, *, workdir: Path,
                 vm_uuid: str, fake_port: int, name: str = "vm", accel: str | None = None,
                 memory: int = 1024, cpus: int = 2, append: str = "",
                 extra_args: list[str] = (), second_nic_mac: str | None = None,
                 cdrom: Path | None = None, drives: list[Path] = ()):
        self.disk, self.kernel, self.initrd = Path(disk), Path(kernel), Path(initrd)
        self.workdir = Path(workdir)
        self.vm_uuid = vm_uuid
        self.fake_port = fake_port
        self.name = name
        self.accel = accel
        self.memory, self.cpus = memory, cpus
        self.append = append
        self.extra_args = list(extra_args)  # more QEMU arguments
        self.second_nic_mac = second_nic_mac  # a second NIC on SECOND_NET with this MAC
        # an image attached as a SCSI CD (virtio-scsi; the guest sees /dev/sr0), as Azure
        # attaches its provisioning media; None: no CD drive at all
        self.cdrom = Path(cdrom) if cdrom is not None else None
        self.drives = [Path(d) for d in drives]  # raw images after the root: /dev/vdb, /dev/vdc...
        self.ssh_port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.console_log = self.workdir / f"{name}.console.log"
        self.power_on: float | None = None          # host time.time()
        self.events: dict[str, float] = {}          # milestone -> host time.time()
        self.lines: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None

    # -- power --------------------------------------------------------------

    def command(self) -> list[str]:
        accel = self.accel or detect_accel(self.kernel, self.initrd)
        self.accel = accel
        fwd = f"cmd:socat STDIO TCP:127.0.0.1:{self.fake_port}"
        netdev = ",".join([
            "user", "id=n0", f"net={GUEST_NET}",
            f"hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22",
            f"guestfwd=tcp:{IMDS_IP}:80-{fwd}",
            f"guestfwd=tcp:{WIRESERVER_IP}:80-{fwd}",
        ])
        # `ro`, as Debian's GRUB boots: the root turns writable when systemd-remount-fs runs
        append = ("root=/dev/vda ro console=ttyS0 panic=-1 "
                  "systemd.journald.forward_to_console=1 " + self.append).strip()
        cmd = ["qemu-system-x86_64", "-name", self.name,
               "-m", str(self.memory), "-smp", str(self.cpus),
               "-nographic", "-monitor", "none", "-serial", "stdio", "-no-reboot",
               "-kernel", str(self.kernel), "-initrd", str(self.initrd), "-append", append,
               "-drive", f"file={self.disk},if=virtio,format={_fmt(self.disk)},cache=unsafe",
               "-netdev", netdev, "-device", "virtio-net-pci,netdev=n0",
               "-smbios", f"type=3,asset={AZURE_ASSET_TAG}",
               "-uuid", self.vm_uuid,
               "-device", "virtio-rng-pci"]
        if self.second_nic_mac:
            cmd += ["-netdev", f"user,id=n2,net={SECOND_NET}",
                    "-device", f"virtio-net-pci,netdev=n2,mac={self.second_nic_mac}"]
        for drive in self.drives:
            cmd += ["-drive", f"file={drive},if=virtio,format=raw,cache=unsafe"]
        cmd += ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else ["-accel", "tcg"]
        if self.cdrom is not None:
            cmd += ["-device", "virtio-scsi-pci,id=scsi0",
                    "-drive", f"file={self.cdrom},if=none,id=cd0,media=cdrom,readonly=on,format=raw",
                    "-device", "scsi-cd,drive=cd0,bus=scsi0.0"]
        return cmd + self.extra_args

    def boot(self) -> "VM":
        if self.proc is not None:
            raise RuntimeError("already running")
        self.ssh_port = free_port()
        cmd = self.command()
        self.events, self.lines = {}, []
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / f"{self.name}.cmdline").write_text(shlex.join(cmd) + "\n")
        self.power_on = time.time()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self._reader = threading.Thread(target=self._read_console, daemon=True)
        self._reader.start()
        return self

    def _read_console(self) -> None:
        assert self.proc and self.proc.stdout
        with open(self.console_log, "a", encoding="utf-8", errors="replace") as log:
            log.write(f"==== power on {time.strftime('%H:%M:%S')} accel={self.accel} "
                      f"uuid={self.vm_uuid} ssh=127.0.0.1:{self.ssh_port}\n")
            for raw in iter(self.proc.stdout.readline, b""):
                now = time.time()
                line = _clean(raw.decode("utf-8", "replace"))
                log.write(f"[{now - self.power_on:8.3f}] {line}\n")
                log.flush()
                with self._cond:
                    self.lines.append((now, line))
                    for name, rx in MILESTONES.items():
                        if name not in self.events and rx.search(line):
                            self.events[name] = now
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_for_console(self, pattern: str | re.Pattern, timeout: float,
                         after: float = 0.0) -> tuple[float, str]:
        """Wait for a console line matching `pattern` (seen at host time >=
        `after`); returns (host time, line). Raises TimeoutError with the
        console's tail."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for t, line in self.lines[seen:]:
                    if t >= after and rx.search(line):
                        return t, line
                seen = len(self.lines)
                if not self.running() and (self._reader is None or not self._reader.is_alive()):
                    raise RuntimeError(f"{self.name}: QEMU exited ({self.proc.returncode}) "
                                       f"before {rx.pattern!r}\n{self.tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.name}: no console line {rx.pattern!r} within "
                                       f"{timeout:.0f} s\n{self.tail()}")
                self._cond.wait(min(left, 1.0))

    def wait_for_event(self, name: str, timeout: float) -> float:
        return self.wait_for_console(MILESTONES[name], timeout)[0]

    def tail(self, n: int = 40) -> str:
        """The console's last lines, and before them every line bootagent
        logged (they say why a boot went wrong)."""
        with self._cond:
            lines = self.lines[-n:]
            agent = [(t, line) for t, line in self.lines[:-n] if "bootagent[" in line]
        base = self.power_on or 0
        out = [f"  [{t - base:7.2f}] {line}" for t, line in agent]
        if agent:
            out.append("  ...")
        return "\n".join(out + [f"  [{t - base:7.2f}] {line}" for t, line in lines])

    def wait_exit(self, timeout: float) -> bool:
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        if self._reader:
            self._reader.join(5)
        return True

    def kill(self) -> None:
        """Pull the plug (QEMU still flushes its own block layer)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            if not self.wait_exit(10):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.wait_exit(10)
        self.proc = None

    def poweroff(self, user: str, key: Path, timeout: float = 120) -> bool:
        """Clean shutdown through the guest (`sudo systemctl poweroff`), so the
        next boot of the same disk is a reboot, not a crash. Falls back to kill."""
        clean = False
        if self.running():
            self.ssh(user, key, "sudo systemctl poweroff --no-block", timeout=30)
            clean = self.wait_exit(timeout)
        self.kill()
        return clean

    def __enter__(self) -> "VM":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()

    # -- ssh ----------------------------------------------------------------

    def ssh_command(self, user: str, key: Path, cmd: str, connect_timeout: int = 5) -> list[str]:
        return ["ssh", "-q", "-F", "/dev/null", "-i", str(key), "-p", str(self.ssh_port),
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", f"ConnectTimeout={connect_timeout}", "-o", "LogLevel=ERROR",
                "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=6",
                f"{user}@127.0.0.1", cmd]

    def ssh(self, user: str, key: Path, cmd: str, timeout: float = 120) -> tuple[int, str]:
        """Run `cmd` in the guest as `user`; (exit status, stdout+stderr).
        255 is ssh's own failure (no connection, key refused)."""
        try:
            r = subprocess.run(self.ssh_command(user, key, cmd), stdin=subprocess.DEVNULL,
                               capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"") if isinstance(e.stdout, bytes) else (e.stdout or "")
            return 124, str(out) + f"\n(ssh: timed out after {timeout:.0f} s)"
        return r.returncode, r.stdout + r.stderr

    def wait_for_ssh(self, user: str, key: Path, timeout: float) -> float:
        """Wait until `user` logs in with `key`; returns the host time of the
        first successful login. Polling starts only once the guest has its
        address: slirp holds connections made to a forwarded port before
        that and replays them all at once, which would skew the timings."""
        deadline = time.monotonic() + timeout
        self.wait_for_console(re.compile(f"{MILESTONES['dhcp'].pattern}|"
                                         f"{MILESTONES['networkd'].pattern}"), timeout)
        last = ""
        while True:
            if not self.running():
                raise RuntimeError(f"{self.name}: QEMU exited while waiting for SSH\n{self.tail()}")
            if "ssh_gave_up" in self.events:
                raise RuntimeError(f"{self.name}: sshd failed to start and systemd gave up on it "
                                   f"(console: {self.console_log})\n{self.tail()}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no SSH login as {user} within {timeout:.0f} s "
                                   f"(last ssh output: {last.strip()!r})\n{self.tail()}")
            rc, out = self.ssh(user, key, "true", timeout=min(20, max(left, 1)))
            if rc == 0:
                now = time.time()
                self.events.setdefault("ssh_login", now)
                return now
            last = out
            time.sleep(0.25)

    def wait_for_first_login(self, user: str, key: Path, timeout: float,
                             every: float = 0.5, in_flight: int = 4) -> float:
        """Like wait_for_ssh, for measuring: a new attempt starts every `every`
        seconds while earlier ones are still under way (at most `in_flight`).
        One attempt at a time measures the poll, not the guest: an attempt made
        while sshd is not listening yet may hang in slirp until its
        ConnectTimeout (5 s) although sshd is up a moment later (measured under
        TCG: the first login 5.5 s after "Started ssh.service", when a login then
        takes 1 s). Returns the host time the first attempt succeeded."""
        deadline = time.monotonic() + timeout
        self.wait_for_console(re.compile(f"{MILESTONES['dhcp'].pattern}|"
                                         f"{MILESTONES['networkd'].pattern}"), timeout)
        running: list[subprocess.Popen] = []
        last, started = "", 0.0
        try:
            while True:
                for attempt in list(running):
                    if attempt.poll() is None:
                        continue
                    running.remove(attempt)
                    out = attempt.stdout.read() if attempt.stdout else ""
                    if attempt.returncode == 0:
                        now = time.time()
                        self.events.setdefault("ssh_login", now)
                        return now
                    last = out or last
                if not self.running():
                    raise RuntimeError(f"{self.name}: QEMU exited while waiting for SSH\n{self.tail()}")
                if "ssh_gave_up" in self.events:
                    raise RuntimeError(f"{self.name}: sshd failed to start and systemd gave up on it "
                                       f"(console: {self.console_log})\n{self.tail()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name}: no SSH login as {user} within {timeout:.0f} s "
                                       f"(last ssh output: {last.strip()!r})\n{self.tail()}")
                if len(running) < in_flight and time.monotonic() - started >= every:
                    started = time.monotonic()
                    running.append(subprocess.Popen(
                        self.ssh_command(user, key, "true"), stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
                time.sleep(0.05)
        finally:
            for attempt in running:
                attempt.kill()
                attempt.wait()

    def timings(self) -> dict[str, float]:
        """Milestones in seconds since power-on (host clock)."""
        return {k: round(v - self.power_on, 3) for k, v in sorted(self.events.items(), key=lambda kv: kv[1])}


def _fmt(disk: Path) -> str:
    with open(disk, "rb") as f:
        return "qcow2" if f.read(4) == b"QFI\xfb" else "raw"


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][AB0-9]|\r")


def _clean(s: str) -> str:
    return _ANSI.sub("", s).rstrip("\n")


def detect_accel(kernel: Path, initrd: Path, timeout: float = 20) -> str:
    """'kvm' when a KVM guest gets to userspace, else 'tcg'. Forced by
    BOOTAGENT_VM_ACCEL; the probe runs once per process."""
    global _ACCEL
    forced = os.environ.get("BOOTAGENT_VM_ACCEL", "").strip().lower()
    if forced:
        if forced not in ("kvm", "tcg"):
            raise ValueError(f"BOOTAGENT_VM_ACCEL must be kvm or tcg, not {forced!r}")
        return forced
    if _ACCEL is None:
        _ACCEL = "kvm" if kvm_boots(kernel, initrd, timeout) else "tcg"
    return _ACCEL


def kvm_boots(kernel: Path, initrd: Path, timeout: float = 20) -> bool:
    """Boot the kernel and initrd under KVM with no root device: a working
    KVM reaches the initramfs's /init (userspace) in a few seconds."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    cmd = ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "512", "-smp", "1",
           "-nographic", "-monitor", "none", "-serial", "stdio", "-no-reboot",
           "-kernel", str(kernel), "-initrd", str(initrd),
           "-append", "console=ttyS0 panic=-1 rootdelay=1 root=/dev/nonexistent"]
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, start_new_session=True)
    ok = threading.Event()

    def read() -> None:
        for raw in iter(p.stdout.readline, b""):
            if MILESTONES["userspace"].search(raw.decode("utf-8", "replace")) and b"Run /init" not in raw:
                ok.set()
                return

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(timeout)  # ends early when the guest got there or QEMU gave up
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()
    return ok.is_set()
