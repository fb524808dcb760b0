#!/usr/bin/env python3
"""Boot benchmark: bootagent against the spec's budgets, measured interleaved in one run.

Each round runs every command once, alternating them (the order is reversed on odd
rounds), so that drift of the machine touches all of them alike:

    floor        <interpreter> -c pass   (the venv's real interpreter, never a shim)
    anchor       cloud-init --version    (Debian's package; --install-anchor installs it)
    first        bootagent run on a fresh root: two keys, a YAML userData, three
                 templates, IMDS on loopback (the root has no sshd_config: no host keys)
    later        bootagent run again on that root: nothing to do
    status       bootagent status
    metadata     bootagent metadata compute/vmId --format text
    first+hk     a first boot whose root has an sshd_config and a DMI UUID: three new
                 host keys made beside the fetch (no budget of its own: see README)

Roots are rebuilt and the fake IMDS is started outside the timing. Peak RSS is the
child's ru_maxrss from os.wait4; IMDS requests are counted from the fake's request log.
By default bootagent is installed from this tree as users get it (a regular, not
editable, install in a bench-private venv under bench/.venv); --editable times the
development venv instead. Run it with the development venv's interpreter:

    .venv/bin/python bench/boot_bench.py [--install-anchor] [--rounds N] [--json]
"""

from __future__ import annotations

import argparse
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

BUDGETS = {"first": 0.85, "later": 0.65}
RSS_BUDGET_MIB = 40
LABELS = {
    "floor": "python -c pass (floor)",
    "anchor": "cloud-init --version (anchor)",
    "first": "run, first boot",
    "later": "run, later boot (nothing to do)",
    "status": "status",
    "metadata": "metadata compute/vmId --format text",
    "first+hk": "run, first boot + host keys",
}
DROP_ENV = ("BOOTAGENT_", "IMDS_ENDPOINT", "IDENTITY_ENDPOINT", "JOURNAL_STREAM", "INVOCATION_ID",
            "NOTIFY_SOCKET", "PYTHON")


def clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith(DROP_ENV)}


# ---- the bootagent under test --------------------------------------------------------

def install_bench_venv(quiet: bool = True) -> Path:
    """A venv without pip or setuptools (so no .pth of theirs at start), holding a regular
    install of this tree and its dependencies: what `pip install bootagent` gives a user."""
    base = Path(os.path.realpath(DEV_VENV / "bin" / "python"))
    fresh = not (BENCH_VENV / "bin" / "python").exists()
    if fresh:
        subprocess.run([str(base), "-m", "venv", "--without-pip", str(BENCH_VENV)], check=True)
    pip = [str(DEV_VENV / "bin" / "pip"), "--python", str(BENCH_VENV / "bin" / "python"),
           "install", "--disable-pip-version-check", *(["-q", "-q"] if quiet else [])]
    args = [str(REPO)] if fresh else ["--no-deps", "--force-reinstall", str(REPO)]
    subprocess.run(pip + args, check=True)
    shutil.rmtree(REPO / "build", ignore_errors=True)  # setuptools' in-tree leftovers
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

    def __init__(self, bootagent: str, workdir: Path, name: str, document: dict | None = None):
        self.log = workdir / f"{name}-requests.jsonl"
        self.used: list[float] = []
        argv = [bootagent, "fake-imds", "--port", "0", "--log", str(self.log)]
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

    def __init__(self, bootagent: str, workdir: Path, name: str, document: dict | None = None):
        self.args = (bootagent, workdir, name, document)
        self.fakes: list[Fake] = []

    def get(self) -> Fake:
        now = time.monotonic()
        for fake in self.fakes:
            if sum(1 for t in fake.used if t > now - 1.1) < 4:
                break
        else:
            bootagent, workdir, name, document = self.args
            fake = Fake(bootagent, workdir, f"{name}-{len(self.fakes)}", document)
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

    def summary(self, anchor: float | None) -> dict:
        med = statistics.median(self.times)
        out = {"min_ms": round(min(self.times) * 1e3, 1), "median_ms": round(med * 1e3, 1),
               "rounds": len(self.times),
               "cpu_median_ms": round(statistics.median(self.cpu) * 1e3, 1),
               "peak_rss_mib": round(max(self.rss_kib) / 1024, 1),
               "imds_requests": sorted(set(self.requests))}
        if anchor:
            out["ratio"] = round(med / anchor, 3)
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


class Bench:
    def __init__(self, bootagent: str, workdir: Path):
        self.bootagent, self.workdir = bootagent, workdir
        self.env = clean_env()
        self.samples: dict[str, Sample] = {}
        self.output = open(workdir / "commands.log", "ab")
        self.launcher = Launcher(os.path.realpath(sys.executable), self.output, self.env)

    def run(self, name: str, argv, pool: FakePool | None = None, record: bool = True,
            expect: int = 0) -> float:
        """Time one command; `argv` is a list, or with `pool` a function of the IMDS URL."""
        fake = pool.get() if pool else None
        argv = argv(fake.url) if fake else argv
        before = fake.imds_requests() if fake else 0
        self.output.write(f"\n$ {' '.join(argv)}\n".encode())
        self.output.flush()
        elapsed, cpu, rss, code = self.launcher.timed(argv)
        if code != expect:
            self.output.flush()
            tail = (self.workdir / "commands.log").read_text(errors="replace")[-2000:]
            raise SystemExit(f"{name}: exit {code}, expected {expect}: {' '.join(argv)}\n{tail}")
        if record:
            sample = self.samples.setdefault(name, Sample())
            sample.times.append(elapsed)
            sample.rss_kib.append(rss)
            sample.cpu.append(cpu)
            sample.requests.append((fake.imds_requests() - before) if fake else 0)
        return elapsed

    def boot(self, root: Path):
        return lambda url: [self.bootagent, "run", "--root", str(root), "--imds-url", url]


def main_rounds(bench: Bench, pool: FakePool, floor: list[str], anchor: str | None, rounds: int,
                host_keys: bool) -> None:
    root = bench.workdir / "root"
    hk_root = bench.workdir / "root-hk"

    def floor_block(rec):
        bench.run("floor", floor, record=rec)

    def anchor_block(rec):
        if anchor:
            bench.run("anchor", [anchor, "--version"], record=rec)

    def ours_block(rec):
        make_root(root, host_keys=False)
        bench.run("first", bench.boot(root), pool, rec)
        bench.run("later", bench.boot(root), pool, rec)
        bench.run("status", [bench.bootagent, "status", "--root", str(root)], None, rec)
        bench.run("metadata", lambda url: [bench.bootagent, "metadata", "compute/vmId", "--format",
                                           "text", "--root", str(root), "--imds-url", url], pool, rec)

    def host_keys_block(rec):
        if host_keys:
            make_root(hk_root, host_keys=True)
            bench.run("first+hk", bench.boot(hk_root), pool, rec)

    blocks = [floor_block, anchor_block, ours_block, host_keys_block]
    for block in blocks:  # warm-up: page cache and pyc files, not recorded
        block(False)
    for number in range(rounds):
        for block in (blocks if number % 2 == 0 else blocks[::-1]):
            block(True)


def scaling(bench: Bench, small: FakePool, many: FakePool, rounds: int) -> dict:
    """First and later boots with 2 or 100 keys and 3 or 50 templates, interleaved."""
    cases = {"2k-3t": (small, 3), "100k-3t": (many, 3), "2k-50t": (small, 50), "100k-50t": (many, 50)}
    for number in range(rounds + 1):
        order = list(cases.items()) if number % 2 == 0 else list(cases.items())[::-1]
        for name, (pool, templates) in order:
            root = make_root(bench.workdir / f"scale-{name}", host_keys=False, templates=templates)
            bench.run(f"scale first {name}", bench.boot(root), pool, number > 0)
            bench.run(f"scale later {name}", bench.boot(root), pool, number > 0)
    med = {name: statistics.median(s.times) for name, s in bench.samples.items()
           if name.startswith("scale ")}
    return {
        "medians_ms": {name: round(value * 1e3, 1) for name, value in med.items()},
        "first_ms_per_key": round((med["scale first 100k-3t"] - med["scale first 2k-3t"]) / 98 * 1e3, 3),
        "first_ms_per_template": round((med["scale first 2k-50t"] - med["scale first 2k-3t"]) / 47 * 1e3, 3),
        "later_ms_per_key": round((med["scale later 100k-3t"] - med["scale later 2k-3t"]) / 98 * 1e3, 3),
        "later_ms_per_template": round((med["scale later 2k-50t"] - med["scale later 2k-3t"]) / 47 * 1e3, 3),
    }


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


# ---- report ------------------------------------------------------------------------------

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


def table(report: dict) -> str:
    rows = [f"{'command':<40} {'min ms':>8} {'median ms':>10} {'x anchor':>9} {'CPU ms':>7} "
            f"{'RSS MiB':>8} {'IMDS':>5}  budget"]
    for name, label in LABELS.items():
        s = report["commands"].get(name)
        if not s:
            continue
        ratio = f"{s['ratio']:.3f}" if "ratio" in s else "-"
        budget = ""
        if name in BUDGETS and "ratio" in s:
            budget = f"<= {BUDGETS[name]}  {'ok' if s['ratio'] <= BUDGETS[name] else 'OVER'}"
        reqs = ",".join(map(str, s["imds_requests"])) if name not in ("floor", "anchor") else ""
        rows.append(f"{label:<40} {s['min_ms']:>8.1f} {s['median_ms']:>10.1f} {ratio:>9} {s['cpu_median_ms']:>7.1f} "
                    f"{s['peak_rss_mib']:>8.1f} {reqs:>5}  {budget}")
    first = report["commands"].get("first")
    if first:
        rss_ok = "ok" if first["peak_rss_mib"] <= RSS_BUDGET_MIB else "OVER"
        one = "ok" if first["imds_requests"] == [1] else "OVER"
        rows.append(f"first boot: peak RSS {first['peak_rss_mib']} MiB (budget {RSS_BUDGET_MIB}: {rss_ok}); "
                    f"IMDS requests per run {first['imds_requests']} (budget exactly 1: {one})")
    if not report.get("anchor_present"):
        rows.append("anchor absent: no ratios (apt-get install cloud-init, or --install-anchor)")
    for which, prof in report.get("imports", {}).items():
        top = ", ".join(f"{k} {v}" for k, v in prof["top5_ms"].items())
        loaded = ", ".join(k for k, v in prof["imported"].items() if v) or "none of them"
        rows.append(f"imports, {which}: {prof['total_ms']} ms total; top five (ms): {top}; "
                    f"of requests/yaml/jinja2/ssl/subprocess/argparse: {loaded}")
    sc = report.get("scaling")
    if sc:
        rows.append("scaling (medians ms): " + ", ".join(f"{k[6:]} {v}" for k, v in sc["medians_ms"].items()))
        rows.append(f"scaling: first boot {sc['first_ms_per_key']} ms/key, {sc['first_ms_per_template']} "
                    f"ms/template; later boot {sc['later_ms_per_key']} ms/key, "
                    f"{sc['later_ms_per_template']} ms/template")
    m = report["machine"]
    rows.append(f"machine: {m['nproc']} CPUs, {m['cpu']}, Linux {m['kernel']}, Python {m['python']}, "
                f"{m['date']}, load {m['loadavg_at_end']:.2f}; bootagent: {report['bootagent']} ({report['install']})")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    parser.add_argument("--scaling-rounds", type=int, default=5, help="rounds of the scaling runs (0: none)")
    parser.add_argument("--no-host-keys", action="store_true", help="leave out the first boot with host keys")
    parser.add_argument("--editable", action="store_true",
                        help="time the development venv's (editable) install instead of a regular one")
    parser.add_argument("--install-anchor", action="store_true", help="apt-get install -y cloud-init first")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 when a budget is not met")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    if args.install_anchor and not shutil.which("cloud-init"):
        subprocess.run(["apt-get", "install", "-y", "cloud-init"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    anchor = shutil.which("cloud-init")
    venv = DEV_VENV if args.editable else install_bench_venv()
    bootagent = str(venv / "bin" / "bootagent")
    python = str(venv / "bin" / "python")
    floor = [os.path.realpath(python), "-c", "pass"]

    workdir = Path(tempfile.mkdtemp(prefix="bootagent-bench-"))
    bench = Bench(bootagent, workdir)
    small = FakePool(bootagent, workdir, "imds")
    many = FakePool(bootagent, workdir, "imds-100keys", many_keys_document(100))
    try:
        main_rounds(bench, small, floor, anchor, args.rounds, not args.no_host_keys)
        anchor_median = statistics.median(bench.samples["anchor"].times) if anchor else None
        report = {"machine": machine(), "bootagent": bootagent,
                  "install": "editable (development venv)" if args.editable
                  else "regular install in a venv without pip/setuptools",
                  "anchor_present": bool(anchor), "budgets": {**BUDGETS, "rss_mib": RSS_BUDGET_MIB},
                  "commands": {name: bench.samples[name].summary(anchor_median)
                               for name in LABELS if name in bench.samples}}
        root = make_root(workdir / "root-profile", host_keys=False)
        fresh = lambda: make_root(root, host_keys=False)  # noqa: E731
        report["imports"] = {
            "first boot": import_profile(python, lambda: bench.boot(root)(small.get().url), before=fresh),
            "later boot": import_profile(python, lambda: bench.boot(root)(small.get().url)),
            "status": import_profile(python, lambda: [bootagent, "status", "--root", str(root)]),
        }
        if args.scaling_rounds:
            report["scaling"] = scaling(bench, small, many, args.scaling_rounds)
    finally:
        small.stop()
        many.stop()
        bench.launcher.close()
        bench.output.close()
        shutil.rmtree(workdir, ignore_errors=True)
    sys.stdout.write(json.dumps(report, indent=2) + "\n" if args.json else table(report))
    if args.check:
        cmds = report["commands"]
        over = [n for n, limit in BUDGETS.items() if cmds.get(n, {}).get("ratio", 0) > limit]
        if cmds["first"]["peak_rss_mib"] > RSS_BUDGET_MIB or cmds["first"]["imds_requests"] != [1]:
            over.append("first (RSS or IMDS requests)")
        return 1 if over else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
