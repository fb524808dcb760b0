"""Shared fixtures: a scratch root that `useradd --root` accepts, a Context on it, and the
project's own fake IMDS on a free loopback port (it counts the requests it gets)."""

from __future__ import annotations

import base64
import copy
import json
import os
import subprocess
import sys
import threading
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from hypothesis import settings

from bootagent import config as config_mod
from bootagent.context import Context

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
BOOTAGENT = str(VENV_BIN / "bootagent")

# Property tests: derandomized under CI (CI=true, as .ci/run sets it), so a run never passes
# or fails by the luck of a draw; HYPOTHESIS_PROFILE=long draws ten times as many examples
# from a fresh seed each run, to look for what CI's fixed draw does not show.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("long", derandomize=False)
HYPOTHESIS_PROFILE = os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "default")
settings.load_profile(HYPOTHESIS_PROFILE)
LONG_FACTOR = 10


def examples(count: int) -> int:
    """A property test's number of examples: `count`, times LONG_FACTOR under the long profile
    (a test's own max_examples overrides any profile's, so the factor is applied here)."""
    return count * LONG_FACTOR if HYPOTHESIS_PROFILE == "long" else count


PASSWD = "root:x:0:0:root:/root:/bin/bash\n"
GROUP = "root:x:0:\nsudo:x:27:\nusers:x:100:\n"
SHADOW = "root:*:19000:0:99999:7:::\n"
GSHADOW = "root:*::\nsudo:*::\nusers:*::\n"


def build_root(path: Path) -> Path:
    """A minimal root: account databases, /etc/hosts, /etc/ssh/sshd_config, /home."""
    for sub in ("etc/ssh", "home", "root", "tmp", "var/lib", "run"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    (path / "etc/passwd").write_text(PASSWD)
    (path / "etc/group").write_text(GROUP)
    (path / "etc/shadow").write_text(SHADOW)
    (path / "etc/gshadow").write_text(GSHADOW)
    os.chmod(path / "etc/shadow", 0o640)
    os.chmod(path / "etc/gshadow", 0o640)
    (path / "etc/hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n")
    (path / "etc/hostname").write_text("localhost\n")
    (path / "etc/ssh/sshd_config").write_text("# test sshd_config\nPasswordAuthentication no\n")
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return build_root(tmp_path / "root")


@pytest.fixture
def make_ctx(root: Path):
    def make(**overrides) -> Context:
        cfg = config_mod.validate(overrides.pop("config", {}), "the test's configuration")
        return Context(root=str(root), config=cfg, **overrides)
    return make


def b64(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return base64.b64encode(data).decode()


@pytest.fixture
def document():
    """A fresh copy of the fake IMDS's default Linux VM document."""
    from bootagent.fake.server import default_document
    return copy.deepcopy(default_document())


@pytest.fixture
def fake_imds(document):
    from bootagent.fake.server import FakeImds
    with FakeImds(document) as fake:
        yield fake


def run_cli(*args: str, env: dict | None = None, timeout: float = 120, input: str | None = None):
    """Run the installed `bootagent` console script; returns CompletedProcess with text output."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BOOTAGENT_")}
    full_env.update(env or {})
    return subprocess.run([BOOTAGENT, *args], capture_output=True, text=True, timeout=timeout,
                          env=full_env, input=input)


def plain_env() -> dict:
    """This environment without the agent's test seams and without a journal."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("BOOTAGENT_") and k not in ("JOURNAL_STREAM", "INVOCATION_ID")}


@contextmanager
def background(*args: str):
    """The installed command, started and left running (text pipes); killed if the test
    leaves it running."""
    process = subprocess.Popen([BOOTAGENT, *args], env=plain_env(), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


@contextmanager
def lock_held(path: Path):
    """An flock on `path`, held as another agent process holds it; yields its release."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        yield lambda: fcntl.flock(held, fcntl.LOCK_UN)


def result_json(root: Path) -> dict:
    return json.loads((root / "run/bootagent/result.json").read_text())


@contextmanager
def loopback_server(handler):
    """A stdlib HTTP server on a free loopback port, for answers the fake IMDS does not give
    (an impostor, an endless body, a challenge of our own). Yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
