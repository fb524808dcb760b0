"""The project's fake IMDS (``bootagent fake-imds``) as a host process, for a
guest to reach through QEMU's guestfwd. It serves IMDS and the wireserver on
one port and logs one JSON line per request (host clock)."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit


def bootagent_command() -> list[str]:
    """The venv's console script when the tests run from the venv, else
    `python -m bootagent` with this interpreter."""
    script = Path(sys.executable).parent / "bootagent"
    return [str(script)] if script.exists() else [sys.executable, "-m", "bootagent"]


class FakeImds:
    def __init__(self, document: dict, workdir: Path, name: str = "fake", extra_args: list[str] = ()):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.doc_path = self.workdir / f"{name}.document.json"
        self.log_path = self.workdir / f"{name}.requests.jsonl"
        self.stderr_path = self.workdir / f"{name}.stderr"
        self.doc_path.write_text(json.dumps(document, indent=2))
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None
        self.port: int | None = None

    def start(self, timeout: float = 30) -> "FakeImds":
        cmd = bootagent_command() + ["fake-imds", "--host", "127.0.0.1", "--port", "0",
                                     "--metadata", str(self.doc_path), "--log", str(self.log_path),
                                     *self.extra_args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("BOOTAGENT_")}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=open(self.stderr_path, "w"), env=env)
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            self.stop()
            raise RuntimeError(f"fake-imds printed no URL within {timeout:.0f} s: "
                               f"{self.stderr_path.read_text()[-2000:]}")
        line = self.proc.stdout.readline().decode().strip()
        if not line.startswith("http://"):
            self.stop()
            raise RuntimeError(f"fake-imds did not start (first line {line!r}): "
                               f"{self.stderr_path.read_text()[-2000:]}")
        self.url = line
        self.port = urlsplit(line).port
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> "FakeImds":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    def requests(self) -> list[dict]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]

    def instance_gets(self) -> list[dict]:
        return [r for r in self.requests()
                if r.get("method") == "GET" and r.get("path", "").rstrip("/") == "/metadata/instance"]

    def health_posts(self) -> list[dict]:
        return [r for r in self.requests()
                if r.get("method") == "POST" and r.get("path", "").rstrip("/") == "/machine"
                and r.get("query", {}).get("comp") == "health"]

    def first_request_time(self) -> float | None:
        reqs = self.requests()
        return min(r["time"] for r in reqs) if reqs else None

    def wait_for(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.2)
        return predicate(self)
