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
    attest       bootagent attest --ca-file CA: two IMDS requests, the fake signs with its
                 test CA, four openssl runs verify (its own row; no budget)
    first+hk     a first boot whose root has an sshd_config and a DMI UUID: three new
                 host keys made beside the fetch (no budget of its own: see README)
    first+media  the first boot with a provisioning media (--provisioning-media DIR: an
                 ovf-env.xml with a password and a YAML customData): expat, crypt and
                 chpasswd on top of the first boot (no budget of its own)

Roots are rebuilt and the fake IMDS is started outside the timing. Peak RSS is the
child's ru_maxrss from os.wait4; IMDS requests are counted from the fake's request log.
By default bootagent is installed from this tree as users get it (a regular, not
editable, install in a bench-private venv under bench/.venv); --editable times the
development venv instead. Run it with the development venv's interpreter:

    .venv/bin/python bench/boot_bench.py [--install-anchor] [--rounds N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import (
    DEV_VENV,
    REPO,
    FakePool,
    Launcher,
    Sample,
    clean_env,
    import_profile,
    install_bench_venv,
    machine,
    make_root,
    many_keys_document,
)

BUDGETS = {"first": 0.75, "later": 0.45}  # SPEC "Budgets"
RSS_BUDGET_MIB = 36
LABELS = {
    "floor": "python -c pass (floor)",
    "anchor": "cloud-init --version (anchor)",
    "first": "run, first boot (budget case)",
    "later": "run, later boot (nothing to do)",
    "status": "status",
    "metadata": "metadata compute/vmId --format text",
    "attest": "attest --ca-file (verified)",
    "first+hk": "run, first boot + 3 host keys",
    "first+media": "run, first boot + media (password, customData)",
}
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
                host_keys: bool, attest_pool: FakePool | None = None) -> None:
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

    def attest_block(rec):
        if attest_pool:
            bench.run("attest", lambda url: [bench.bootagent, "attest", "--root", str(root), "--imds-url",
                                             url, "--ca-file", attest_pool.ca_for(url)], attest_pool, rec)

    media_root, media = bench.workdir / "root-media", media_dir(bench.workdir / "media")

    def media_block(rec):
        make_root(media_root, host_keys=False)
        bench.run("first+media", lambda url: bench.boot(media_root)(url) + ["--provisioning-media", str(media)],
                  pool, rec)

    blocks = [floor_block, anchor_block, ours_block, host_keys_block, attest_block, media_block]
    for block in blocks:  # warm-up: page cache and pyc files, not recorded
        block(False)
    for number in range(rounds):
        for block in (blocks if number % 2 == 0 else blocks[::-1]):
            block(True)


def media_dir(path: Path) -> Path:
    """A directory holding the ovf-env.xml Azure would give the fake's default document,
    with an admin password and a YAML customData."""
    from bootagent.fake.media import build_ovf
    from bootagent.fake.server import default_document

    path.mkdir(parents=True, exist_ok=True)
    (path / "ovf-env.xml").write_bytes(build_ovf(default_document(), "Bench-Pass 1",
                                                 b"#cloud-config\ngreeting: from customData\n"))
    return path


def scaling(bench: Bench, small: FakePool, many: FakePool, rounds: int) -> dict:
    """First and later boots with 2 or 100 keys and 3 or 50 templates, interleaved."""
    cases = {"2k-3t": (small, 3), "100k-3t": (many, 3), "2k-50t": (small, 50), "100k-50t": (many, 50)}
    for number in range(rounds + 1):
        order = list(cases.items()) if number % 2 == 0 else list(cases.items())[::-1]
        for name, (pool, templates) in order:
            root = make_root(bench.workdir / f"scale-{name}", host_keys=False, templates=templates)
            bench.run(f"scale first {name}", bench.boot(root), pool, number > 0)
            bench.run(f"scale later {name}", bench.boot(root), pool, number > 0)
    out = {"medians_ms": {}, "cpu_medians_ms": {}}
    for name, sample in bench.samples.items():
        if name.startswith("scale "):
            out["medians_ms"][name] = round(statistics.median(sample.times) * 1e3, 1)
            out["cpu_medians_ms"][name] = round(statistics.median(sample.cpu) * 1e3, 1)
    for kind in ("medians_ms", "cpu_medians_ms"):
        med = out[kind]
        out[kind.replace("medians_ms", "per_unit_ms")] = {
            "first boot, per key": round((med["scale first 100k-3t"] - med["scale first 2k-3t"]) / 98, 3),
            "first boot, per template": round((med["scale first 2k-50t"] - med["scale first 2k-3t"]) / 47, 3),
            "later boot, per key": round((med["scale later 100k-3t"] - med["scale later 2k-3t"]) / 98, 3),
            "later boot, per template": round((med["scale later 2k-50t"] - med["scale later 2k-3t"]) / 47, 3),
        }
    return out


def table(report: dict) -> str:
    rows = [f"{'command':<40} {'min ms':>7} {'median ms':>9} {'x anchor':>8} {'CPU ms':>7} "
            f"{'CPU x':>6} {'RSS MiB':>7} {'IMDS':>4}  budget (x anchor, median)"]
    for name, label in LABELS.items():
        s = report["commands"].get(name)
        if not s:
            continue
        ratio = f"{s['ratio']:.3f}" if "ratio" in s else "-"
        cpu_ratio = f"{s['cpu_ratio']:.3f}" if "cpu_ratio" in s else "-"
        budget = ""
        if name in BUDGETS and "ratio" in s:
            budget = f"<= {BUDGETS[name]}  {'ok' if s['ratio'] <= BUDGETS[name] else 'OVER'}"
        reqs = ",".join(map(str, s["imds_requests"])) if name not in ("floor", "anchor") else ""
        rows.append(f"{label:<40} {s['min_ms']:>7.1f} {s['median_ms']:>9.1f} {ratio:>8} "
                    f"{s['cpu_median_ms']:>7.1f} {cpu_ratio:>6} {s['peak_rss_mib']:>7.1f} {reqs:>4}  {budget}")
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
        rows.append("scaling, medians ms (wall / CPU): " + ", ".join(
            f"{k[6:]} {v} / {sc['cpu_medians_ms'][k]}" for k, v in sc["medians_ms"].items()))
        rows.append("scaling, ms per unit (wall / CPU): " + ", ".join(
            f"{k} {v} / {sc['cpu_per_unit_ms'][k]}" for k, v in sc["per_unit_ms"].items()))
    m = report["machine"]
    rows.append(f"machine: {m['nproc']} CPUs, {m['cpu']}, Linux {m['kernel']}, Python {m['python']}, "
                f"{m['date']}, load {m['loadavg_at_end']:.2f}; anchor: {report.get('anchor') or 'absent'}; "
                f"bootagent: {report['bootagent']} ({report['install']})")
    return "\n".join(rows) + "\n"


def interpreter_of(script: Path) -> str:
    """The interpreter a console script's #! line names (Debian's: /usr/bin/python3)."""
    with open(script, "rb") as handle:
        first = handle.readline().decode("utf-8", "replace")
    if not first.startswith("#!"):
        raise SystemExit(f"{script} has no #! line: is it a console script?")
    return first[2:].split()[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    parser.add_argument("--scaling-rounds", type=int, default=9, help="rounds of the scaling runs (0: none)")
    parser.add_argument("--no-host-keys", action="store_true", help="leave out the first boot with host keys")
    parser.add_argument("--editable", action="store_true",
                        help="time the development venv's (editable) install instead of a regular one")
    parser.add_argument("--source", type=Path, default=REPO,
                        help="install bootagent from this tree (e.g. a git worktree of an older commit)")
    parser.add_argument("--installed", type=Path, metavar="BOOTAGENT",
                        help="time this installed command (e.g. /usr/bin/bootagent of the Debian "
                             "package) instead of installing from a tree; its #! interpreter is the floor")
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
    if args.installed:
        bootagent = str(args.installed)
        python = interpreter_of(args.installed)
    else:
        venv = DEV_VENV if args.editable else install_bench_venv(args.source.resolve())
        bootagent = str(venv / "bin" / "bootagent")
        python = str(venv / "bin" / "python")
    floor = [os.path.realpath(python), "-c", "pass"]

    workdir = Path(tempfile.mkdtemp(prefix="bootagent-bench-"))
    bench = Bench(bootagent, workdir)
    small = FakePool(bootagent, workdir, "imds")
    many = FakePool(bootagent, workdir, "imds-100keys", many_keys_document(100))
    attested = FakePool(bootagent, workdir, "imds-attest", runs_per_second=2, with_ca=True)
    try:
        main_rounds(bench, small, floor, anchor, args.rounds, not args.no_host_keys, attested)
        anchor_median = statistics.median(bench.samples["anchor"].times) if anchor else None
        anchor_cpu = statistics.median(bench.samples["anchor"].cpu) if anchor else None
        report = {"machine": machine(), "bootagent": bootagent,
                  "anchor": subprocess.run([anchor, "--version"], capture_output=True, text=True,
                                           env=bench.env).stdout.strip() if anchor else None,
                  "install": (f"installed command, run by {python}" if args.installed
                              else "editable (development venv)" if args.editable
                              else "regular install in a venv without pip/setuptools"),
                  "anchor_present": bool(anchor), "budgets": {**BUDGETS, "rss_mib": RSS_BUDGET_MIB},
                  "commands": {name: bench.samples[name].summary(anchor_median, anchor_cpu)
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
        attested.stop()
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
