"""The bench's tools: the install under test, scratch roots, fake IMDS processes, a launcher
that times children and reads their peak RSS, and the `-X importtime` profile."""

from __future__ import annotations

import base64
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEV_VENV = REPO / ".venv"
BENCH_VENV = REPO / "bench" / ".venv"
sys.path.insert(0, str(REPO / "tests"))
from conftest import build_root  # noqa: E402  (the test suite's scratch root, one definition)

DROP_ENV = ("BOOTAGENT_", "IMDS_ENDPOINT", "IDENTITY_ENDPOINT", "JOURNAL_STREAM", "INVOCATION_ID",
            "NOTIFY_SOCKET", "PYTHON")


def clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith(DROP_ENV)}


# ---- the bootagent under test --------------------------------------------------------

def install_bench_venv(source: Path = REPO, quiet: bool = True) -> Path:
    """A venv without pip or setuptools (so no .pth of theirs at start), holding a regular
    install of this tree and its dependencies: what `pip install bootagent` gives a user."""
    base = Path(os.path.realpath(DEV_VENV / "bin" / "python"))
    fresh = not (BENCH_VENV / "bin" / "python").exists()
    if fresh:
        subprocess.run([str(base), "-m", "venv", "--without-pip", str(BENCH_VENV)], check=True)
    pip = [str(DEV_VENV / "bin" / "pip"), "--python", str(BENCH_VENV / "bin" / "python"),
           "install", "--disable-pip-version-check", *(["-q", "-q"] if quiet else [])]
    with tempfile.TemporaryDirectory(prefix="bootagent-src-") as copy:
        # built from a copy: setuptools builds in the tree and would leave build/ in it
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(source / name, Path(copy) / name)
        shutil.copytree(source / "bootagent", Path(copy) / "bootagent",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        args = [copy] if fresh else ["--no-deps", "--force-reinstall", copy]
        subprocess.run(pip + args, check=True)
    return BENCH_VENV


# ---- scratch roots and documents -------------------------------------------------------

def make_root(path: Path, *, host_keys: bool, templates: int = 3) -> Path:
    """A fresh root as the spec's first boot has it; with `host_keys`, an sshd_config and a
    DMI UUID (host keys are then made beside the fetch, as on a VM)."""
    shutil.rmtree(path, ignore_errors=True)
    build_root(path)
    if host_keys:
        dmi = path / "sys/class/dmi/id"
        dmi.mkdir(parents=True)
        (dmi / "product_uuid").write_text(str(uuid.uuid4()).upper() + "\n")
    else:
        (path / "etc/ssh/sshd_config").unlink()
    tdir = path / "etc/bootagent/templates"
    tdir.mkdir(parents=True)
    for src in (REPO / "templates").glob("*.j2"):
        shutil.copy(src, tdir / src.name)
    if templates == 3:
        shutil.copy(REPO / "templates/bootagent.yaml", path / "etc/bootagent/bootagent.yaml")
    else:
        names = sorted(p.name for p in (REPO / "templates").glob("*.j2"))
        lines = ["templates:"]
        for i in range(templates):
            lines += [f"  - src: {names[i % len(names)]}", f"    dest: /etc/bench/{i:03d}.conf"]
        (path / "etc/bootagent/bootagent.yaml").write_text("\n".join(lines) + "\n")
    return path


def many_keys_document(count: int) -> dict:
    """The fake's default document with `count` distinct, well-formed ed25519 keys."""
    from bootagent.fake.server import default_document

    doc = default_document()
    keys = []
    for _ in range(count):
        blob = b"\0\0\0\x0bssh-ed25519\0\0\0\x20" + os.urandom(32)
        keys.append({"keyData": f"ssh-ed25519 {base64.b64encode(blob).decode()} bench",
                     "path": "/home/azureuser/.ssh/authorized_keys"})
    doc["compute"]["publicKeys"] = keys
    return doc


class Fake:
    """`bootagent fake-imds` in a process of its own, its request log in a file."""

    def __init__(self, bootagent: str, workdir: Path, name: str, document: dict | None = None,
                 with_ca: bool = False):
        self.log = workdir / f"{name}-requests.jsonl"
        self.used: list[float] = []
        argv = [bootagent, "fake-imds", "--port", "0", "--log", str(self.log)]
        self.ca = workdir / f"{name}-ca.pem" if with_ca else None  # its test CA, for attest
        if self.ca:
            argv += ["--ca-out", str(self.ca)]
        if document is not None:
            doc_path = workdir / f"{name}-document.json"
            doc_path.write_text(json.dumps(document))
            argv += ["--metadata", str(doc_path)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env=clean_env(), text=True)
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://"):
            raise SystemExit(f"fake-imds did not start ({name}): {self.url!r}")

    def imds_requests(self) -> int:
        try:
            lines = self.log.read_text().splitlines()
        except FileNotFoundError:
            return 0
        return sum(1 for line in lines if json.loads(line)["path"].startswith("/metadata/"))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


class FakePool:
    """Fakes serving one document. IMDS allows 5 requests in any second and the fake
    enforces it; the bench asks faster than that, so each run gets a fake that has served
    fewer than 4 runs in the last second (another is started when none has)."""

    def __init__(self, bootagent: str, workdir: Path, name: str, document: dict | None = None,
                 runs_per_second: int = 4, with_ca: bool = False):
        self.args = (bootagent, workdir, name, document)
        self.runs_per_second = runs_per_second  # 2 for attest: two requests a run
        self.with_ca = with_ca
        self.fakes: list[Fake] = []

    def ca_for(self, url: str) -> str:
        """The test CA of the pool's fake at `url` (a pool made with_ca)."""
        return str(next(fake.ca for fake in self.fakes if fake.url == url))

    def get(self) -> Fake:
        now = time.monotonic()
        for fake in self.fakes:
            if sum(1 for t in fake.used if t > now - 1.1) < self.runs_per_second:
                break
        else:
            bootagent, workdir, name, document = self.args
            fake = Fake(bootagent, workdir, f"{name}-{len(self.fakes)}", document, with_ca=self.with_ca)
            self.fakes.append(fake)
        fake.used = [t for t in fake.used if t > now - 1.1] + [now]
        return fake

    def stop(self) -> None:
        for fake in self.fakes:
            fake.stop()


# ---- timing ------------------------------------------------------------------------------

class Sample:
    def __init__(self):
        self.times: list[float] = []
        self.rss_kib: list[int] = []
        self.cpu: list[float] = []
        self.requests: list[int] = []

    def summary(self, anchor: float | None, anchor_cpu: float | None = None) -> dict:
        med = statistics.median(self.times)
        out = {"min_ms": round(min(self.times) * 1e3, 1), "median_ms": round(med * 1e3, 1),
               "rounds": len(self.times),
               "cpu_median_ms": round(statistics.median(self.cpu) * 1e3, 1),
               "peak_rss_mib": round(max(self.rss_kib) / 1024, 1),
               "imds_requests": sorted(set(self.requests))}
        if anchor:
            out["ratio"] = round(med / anchor, 3)
            out["cpu_ratio"] = round(statistics.median(self.cpu) / anchor_cpu, 3)
        return out


# The launcher: every timed command is spawned by this small process, not by the bench.
# A child's ru_maxrss counts the memory of the process it was forked from (the kernel
# records the old address space's high-water mark at exec), so a child of the bench
# itself would report the bench's RSS. Protocol: one line in, argv joined by NUL; one
# line out, "wall cpu maxrss_kib exit_code". Output goes to the file descriptor 3.
LAUNCHER = r"""
import os, sys, time
actions = [(os.POSIX_SPAWN_DUP2, 3, 1), (os.POSIX_SPAWN_DUP2, 3, 2)]
for line in sys.stdin:
    argv = line.rstrip("\n").split("\0")
    start = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    sys.stdout.write(f"{wall} {usage.ru_utime + usage.ru_stime} {usage.ru_maxrss} "
                     f"{os.waitstatus_to_exitcode(status)}\n")
    sys.stdout.flush()
"""


class Launcher:
    def __init__(self, python: str, log, env: dict):
        self.proc = subprocess.Popen([python, "-S", "-I", "-c", LAUNCHER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, pass_fds=(log.fileno(),),
                                     preexec_fn=lambda: os.dup2(log.fileno(), 3))
        self.log = log

    def timed(self, argv: list[str]) -> tuple[float, float, int, int]:
        """(wall seconds, CPU seconds, peak RSS KiB, exit code) of one child, spawn to reaped.
        The CPU time (user + system, its waited-for children included) is what a busy
        machine disturbs least."""
        self.log.flush()
        self.proc.stdin.write("\0".join(argv) + "\n")
        self.proc.stdin.flush()
        wall, cpu, rss, code = self.proc.stdout.readline().split()
        return float(wall), float(cpu), int(rss), int(code)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


# ---- import profile ----------------------------------------------------------------------

def import_times(python: str, argv: list[str], repeat: int = 5) -> dict[str, int]:
    """Self time in µs of each module `-X importtime` reports for one command, the least of
    `repeat` runs (a busy machine only ever adds time)."""
    best: dict[str, int] = {}
    for _ in range(repeat):
        proc = subprocess.run([python, "-X", "importtime", *argv], capture_output=True, text=True,
                              env=clean_env())
        for line in proc.stderr.splitlines():
            if not line.startswith("import time:") or "self [us]" in line:
                continue
            self_us, _, name = line[len("import time:"):].split("|")
            name = name.strip()
            best[name] = min(best.get(name, 1 << 62), int(self_us))
    return best


def import_profile(python: str, argv, before=None) -> dict:
    """`-X importtime` of one command: total import time, and the five packages whose
    modules cost most (self time summed over each top-level package's modules). `before`
    runs ahead of each repeat (e.g. to make the root fresh again); `argv()` gives the command."""
    times = {}
    for _ in range(5):
        if before:
            before()
        for name, us in import_times(python, argv(), repeat=1).items():
            times[name] = min(times.get(name, 1 << 62), us)
    by_package: dict[str, int] = {}
    for name, us in times.items():
        top = name.split(".")[0]
        by_package[top] = by_package.get(top, 0) + us
    top5 = sorted(by_package.items(), key=lambda item: -item[1])[:5]
    return {"total_ms": round(sum(by_package.values()) / 1e3, 1),
            "top5_ms": {name: round(us / 1e3, 1) for name, us in top5},
            "imported": {pkg: any(m == pkg or m.startswith(pkg + ".") for m in times)
                         for pkg in ("requests", "yaml", "jinja2", "ssl", "subprocess", "argparse")}}


def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": len(os.sched_getaffinity(0)), "cpu": model, "kernel": platform.release(),
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "loadavg_at_end": os.getloadavg()[0]}
