"""bootagent's Debian package, as image builders get it: built from this tree by
scripts/build-deb.sh (Debian's dpkg-buildpackage in a clean export) in this run,
inspected, checked by lintian, then installed with apt-get into a scratch Debian 12
root (a copy of the real-boot image's root tree, tests/vm/image.py) and purged.

The build needs Debian's packaging tools (scripts/bootstrap.sh --full installs them);
the scratch root needs root and mmdebstrap. Missing, they skip these tests, except
in CI, where they fail."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import bootagent

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vm import image as vmimage  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEBIAN_PATH = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
BUILD_TOOLS = ("dpkg-buildpackage", "dh", "dpkg-deb", "lintian", "git")
UNITS = ("bootagent.service", "bootagent-host-keys.service")
DEPENDS = {"python3-requests", "python3-yaml", "python3-jinja2", "passwd", "openssh-client"}
RECOMMENDS = {"python3-systemd", "openssh-server"}


def _need(missing: list[str]) -> None:
    if missing:
        message = "needs " + ", ".join(missing) + " (scripts/bootstrap.sh --full)"
        if os.environ.get("CI"):
            pytest.fail(message)  # never skipped silently in CI
        pytest.skip(message)


def _changelog_version() -> str:
    first = (REPO / "debian" / "changelog").read_text().splitlines()[0]
    match = re.match(r"bootagent \(([^)]+)\) ", first)
    assert match, f"debian/changelog's first line names no bootagent version: {first!r}"
    return match.group(1)


def test_the_version_has_one_source():
    """debian/changelog says the version bootagent/__init__.py says; pyproject reads it there."""
    assert _changelog_version() == bootagent.__version__
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "bootagent.__version__"}


def test_pip_installs_it_with_that_version():
    """`pip install .` (scripts/bootstrap.sh's, into .venv) read the version from its one source."""
    import importlib.metadata
    assert importlib.metadata.version("bootagent") == bootagent.__version__
    [script] = [e for e in importlib.metadata.entry_points(group="console_scripts")
                if e.name == "bootagent"]
    assert script.value == "bootagent.cli:entry"


def test_the_units_run_usr_bin_bootagent():
    """The README's pip recipe rewrites /usr/bin/bootagent in every ExecStart: there is no other."""
    for unit in UNITS:
        execs = re.findall(r"^ExecStart=(\S+)", (REPO / "units" / unit).read_text(), re.M)
        assert execs == ["/usr/bin/bootagent"], unit


# ---------------------------------------------------------------------------
# The package itself

@pytest.fixture(scope="module")
def deb() -> Path:
    _need([t for t in BUILD_TOOLS if not shutil.which(t, path=DEBIAN_PATH["PATH"])])
    path = vmimage.build_deb(REPO)
    assert path == REPO / "dist" / f"bootagent_{bootagent.__version__}_all.deb"
    return path


def _deb(*args: str) -> str:
    return subprocess.run(["dpkg-deb", *args], check=True, capture_output=True, text=True,
                          env=DEBIAN_PATH).stdout


@pytest.fixture(scope="module")
def contents(deb) -> dict[str, tuple[str, str]]:
    """path in the package -> (mode string, owner/group), from `dpkg-deb -c`."""
    out = {}
    for line in _deb("-c", str(deb)).splitlines():
        mode, owner, _size, _date, _time, path, *_ = line.split()
        out[path.removeprefix(".")] = (mode, owner)
    return out


@pytest.fixture(scope="module")
def control(deb) -> dict[str, str]:
    fields = {}
    for line in _deb("-f", str(deb)).splitlines():
        if line and not line[0].isspace():
            name, _, value = line.partition(":")
            fields[name] = value.strip()
    return fields


def _names(relation: str) -> set[str]:
    return {re.split(r"[\s(:]", alt.strip())[0] for alt in relation.split(",") if alt.strip()}


def test_the_control_fields(control):
    assert control["Package"] == "bootagent"
    assert control["Version"] == bootagent.__version__
    assert control["Architecture"] == "all"
    depends = _names(control["Depends"])
    assert DEPENDS | {"python3"} <= depends, control["Depends"]
    assert _names(control["Recommends"]) == RECOMMENDS
    # nothing a user does not need: no Python build tools, no test dependencies
    assert not depends & {"python3-pytest", "python3-hypothesis", "python3-setuptools"}


def test_the_command_and_the_units_are_installed_with_their_modes(contents):
    assert contents["/usr/bin/bootagent"] == ("-rwxr-xr-x", "root/root")
    unit_dirs = {p.rsplit("/", 1)[0] for p in contents if p.endswith(".service")}
    assert unit_dirs <= {"/lib/systemd/system", "/usr/lib/systemd/system"}, unit_dirs
    for unit in UNITS:
        [path] = [p for p in contents if p.endswith("/" + unit)]
        assert contents[path] == ("-rw-r--r--", "root/root"), path
    site = "/usr/lib/python3/dist-packages/bootagent"
    for module in ("/__init__.py", "/cli.py", "/steps/host_keys.py", "/fake/default_document.json"):
        assert contents[site + module] == ("-rw-r--r--", "root/root"), module
    assert f"{site}-{bootagent.__version__}.dist-info/entry_points.txt" in contents


def test_the_installed_modules_are_the_trees(deb, contents, tmp_path):
    """Every module of the tree's package is shipped, byte for byte."""
    _deb("-x", str(deb), str(tmp_path))
    site = tmp_path / "usr/lib/python3/dist-packages/bootagent"
    tree = sorted(p.relative_to(REPO / "bootagent") for p in (REPO / "bootagent").rglob("*.py")
                  if "__pycache__" not in p.parts)
    shipped = sorted(p.relative_to(site) for p in site.rglob("*.py"))
    assert shipped == tree
    for rel in tree:
        assert (site / rel).read_bytes() == (REPO / "bootagent" / rel).read_bytes(), rel


def test_no_byte_code_tests_or_conffiles_are_shipped(deb, contents):
    assert not [p for p in contents if "__pycache__" in p or p.endswith((".pyc", ".pyo"))]
    assert not [p for p in contents if re.search(r"/(tests?|conftest\.py|test_[^/]*\.py)(/|$)", p)]
    # the example configuration is documentation: nothing under /etc changes behaviour
    assert not [p for p in contents if p.startswith("/etc/") and not p.endswith("/")]
    info = _deb("-I", str(deb))
    assert " conffiles" not in info
    examples = "/usr/share/doc/bootagent/examples/"
    assert {examples + "bootagent.yaml", examples + "motd.j2"} <= set(contents)


def test_the_install_enables_but_never_starts_or_restarts_the_units(deb, tmp_path):
    _deb("-e", str(deb), str(tmp_path))
    postinst = (tmp_path / "postinst").read_text()
    for unit in UNITS:
        assert f"deb-systemd-helper enable '{unit}'" in postinst
    scripts = "".join((tmp_path / s).read_text() for s in ("postinst", "prerm", "postrm")
                      if (tmp_path / s).exists())
    assert "deb-systemd-invoke" not in scripts  # no start, stop or restart, on install or upgrade
    postrm = (tmp_path / "postrm").read_text()
    assert re.search(r'"\$1" = "purge".*\n\s*rm -rf /var/lib/bootagent /run/bootagent', postrm)


def test_lintian_reports_no_error_and_only_the_warnings_the_readme_justifies(deb):
    r = subprocess.run(["lintian", "--fail-on", "error", str(deb)], capture_output=True,
                       text=True, env=DEBIAN_PATH, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    tags = re.findall(r"^([EW]): bootagent: (\S+)", r.stdout, re.M)
    assert not [t for level, t in tags if level == "E"], r.stdout
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Installing the Debian package"):]
    section = section[:section.find("\n## ", 3)]
    unjustified = [t for _, t in tags if f"`{t}`" not in section]
    assert not unjustified, f"lintian warnings the README does not justify: {unjustified}"


# ---------------------------------------------------------------------------
# Installed into a scratch Debian 12 root, as an image builder installs it

def _chroot(root: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["chroot", str(root), *cmd], capture_output=True, text=True,
                       env=vmimage.CHROOT_ENV, stdin=subprocess.DEVNULL, timeout=300)
    if check:
        assert r.returncode == 0, f"{cmd} in the chroot exited {r.returncode}:\n{r.stdout}{r.stderr}"
    return r


IDENTITY = ("etc/passwd", "etc/group", "etc/shadow", "etc/hostname")


@pytest.fixture(scope="module")
def scratch(deb, tmp_path_factory):
    """A copy of the real-boot image's root tree (before, after: its identity files)."""
    _need([t for t in ("mmdebstrap", "mkfs.ext4", "chroot") if not shutil.which(t)]
          + ([] if os.geteuid() == 0 else ["root (mmdebstrap --mode=root, chroot)"]))
    base = vmimage.build_base()

    def fresh(name: str) -> tuple[Path, dict[str, bytes]]:
        root = tmp_path_factory.mktemp(name) / "root"
        subprocess.run(["cp", "-a", "--reflink=auto", str(base.rootfs), str(root)], check=True)
        return root, {f: (root / f).read_bytes() for f in IDENTITY}
    return fresh


@pytest.fixture(scope="module")
def installed(deb, scratch):
    root, before = scratch("installed")
    vmimage.apt_install_deb(root, deb)
    return root, before


def test_apt_get_installs_it_and_dpkg_knows_it(installed):
    root, _ = installed
    out = _chroot(root, "dpkg-query", "-W", "-f", "${Status} ${Version}", "bootagent").stdout
    assert out == f"install ok installed {bootagent.__version__}"


def test_both_units_are_enabled(installed):
    root, _ = installed
    for unit in UNITS:
        link = root / "etc/systemd/system/multi-user.target.wants" / unit
        assert link.is_symlink(), link
        assert os.readlink(link) in (f"/lib/systemd/system/{unit}", f"/usr/lib/systemd/system/{unit}")
    out = _chroot(root, "systemctl", "is-enabled", *UNITS).stdout
    assert out.split() == ["enabled", "enabled"]


def test_bootagent_runs_from_usr_bin_with_debians_libraries(installed):
    root, _ = installed
    r = _chroot(root, "/usr/bin/bootagent", "--help")
    assert "usage: bootagent" in r.stdout
    r = _chroot(root, "/usr/bin/bootagent", "--version")
    assert bootagent.__version__ in r.stdout + r.stderr
    # the modules it imports at a boot are Debian's, not this machine's
    r = _chroot(root, "/usr/bin/python3", "-c",
                "import bootagent, requests, yaml, jinja2; print(bootagent.__file__, requests.__file__)")
    assert r.stdout.split() == ["/usr/lib/python3/dist-packages/bootagent/__init__.py",
                                "/usr/lib/python3/dist-packages/requests/__init__.py"]


def test_the_install_provisions_nothing(installed):
    """Installing on a build VM changes no user, host key or hostname, and runs nothing."""
    root, before = installed
    assert {f: (root / f).read_bytes() for f in IDENTITY} == before
    assert not (root / "run/bootagent").exists()
    assert not (root / "var/lib/bootagent").exists()
    assert not list((root / "etc/ssh").glob("ssh_host_*"))  # the image has none; none made
    assert not (root / "etc/bootagent").exists()  # the example is documentation, not a conffile


def test_reinstalling_over_it_keeps_both_units_enabled(deb, scratch):
    """What the Packer example runs over a previous bake (`apt-get install --reinstall`):
    an upgrade in dpkg's eyes, which keeps the units enabled and provisions nothing."""
    root, before = scratch("reinstalled")
    vmimage.apt_install_deb(root, deb)
    (root / "tmp" / deb.name).write_bytes(deb.read_bytes())
    _chroot(root, "apt-get", "install", "-y", "-q", "--reinstall", f"/tmp/{deb.name}")
    assert _chroot(root, "systemctl", "is-enabled", *UNITS).stdout.split() == ["enabled", "enabled"]
    assert {f: (root / f).read_bytes() for f in IDENTITY} == before
    assert not (root / "run/bootagent").exists() and not (root / "var/lib/bootagent").exists()


def test_purge_leaves_no_agent_state(deb, scratch):
    root, _ = scratch("purged")
    vmimage.apt_install_deb(root, deb)
    # what a booted image holds: the agent's state, this boot's record, the admin's config
    for path, text in (("var/lib/bootagent/instance-id", "x\n"), ("run/bootagent/result.json", "{}\n"),
                       ("etc/bootagent/bootagent.yaml", "templates: []\n")):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    _chroot(root, "apt-get", "purge", "-y", "-q", "bootagent")
    assert not (root / "var/lib/bootagent").exists()
    assert not (root / "run/bootagent").exists()
    assert not (root / "usr/bin/bootagent").exists()
    assert not (root / "usr/lib/python3/dist-packages/bootagent").exists()
    for unit in UNITS:
        assert not (root / "etc/systemd/system/multi-user.target.wants" / unit).is_symlink()
    assert _chroot(root, "dpkg-query", "-W", "bootagent", check=False).returncode != 0
    # the configuration is the administrator's: the package never shipped it
    assert (root / "etc/bootagent/bootagent.yaml").read_text() == "templates: []\n"
