"""bootagent/tools.py: one way to find and run a system tool, its failures as structure."""

import os
import subprocess
import sys

import pytest

from bootagent import tools
from bootagent.errors import StepError, ToolError


def tool(directory, name, body):
    path = directory / name
    path.write_text(body)
    path.chmod(0o755)
    return path


def test_the_system_dirs_are_searched_after_the_callers_path_and_never_the_working_directory(tmp_path,
                                                                                         monkeypatch):
    mine = tool(tmp_path, "sh", "#!/bin/sh\n")
    assert tools.which({"PATH": str(tmp_path)}, "sh") == str(mine)
    assert tools.which({}, "sh") not in (None, str(mine))
    monkeypatch.chdir(tmp_path)
    tool(tmp_path, "bootagent-test-tool", "#!/bin/sh\n")
    assert tools.which({}, "bootagent-test-tool") is None
    assert tools.which({"PATH": ""}, "bootagent-test-tool") is None


def test_each_failure_says_its_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(tools, "SYSTEM_BIN_DIRS", ())
    where = {"PATH": str(tmp_path)}
    with pytest.raises(ToolError) as caught:
        tools.run(["absent"], where=where, timeout=10)
    assert (caught.value.reason, caught.value.tool, caught.value.search) == ("missing", "absent", str(tmp_path))
    assert isinstance(caught.value, StepError)
    tool(tmp_path, "fails", "#!/bin/sh\necho out; echo said >&2; exit 3\n")
    with pytest.raises(ToolError) as caught:
        tools.run(["fails"], where=where, timeout=10)
    assert (caught.value.reason, caught.value.exit_status) == ("failed", 3)
    assert (caught.value.stdout, caught.value.stderr) == ("out\n", "said\n")
    assert tools.run(["fails"], where=where, timeout=10, check=False) == (3, "out\n", "said\n")
    tool(tmp_path, "hangs", "#!/bin/sh\nexec sleep 30\n")
    with pytest.raises(ToolError) as caught:
        tools.run(["hangs"], where=where, timeout=0.2)
    assert caught.value.reason == "timeout"
    broken = tool(tmp_path, "broken", "#!/nonexistent/interpreter\n")
    with pytest.raises(ToolError) as caught:
        tools.run(["broken"], where=where, timeout=10)
    assert caught.value.reason == "unstartable" and str(caught.value).startswith(f"cannot run {broken}: ")


def test_stdin_is_given_or_empty(tmp_path):
    tool(tmp_path, "echoes", "#!/bin/sh\ncat\n")
    where = {"PATH": str(tmp_path)}
    assert tools.run(["echoes"], where=where, timeout=10, stdin="name:hash\n").stdout == "name:hash\n"
    assert tools.run(["echoes"], where=where, timeout=10).stdout == ""


def test_worded_gives_the_callers_text_for_the_reason():
    def error(reason):
        return ToolError("cannot run /bin/x: Permission denied", tool="x", reason=reason)
    words = {"missing": "m", "timeout": "t", "failed": "f"}
    assert [str(error(reason).worded(**words)) for reason in words] == ["m", "t", "f"]
    assert str(error("unstartable").worded(**words)) == "cannot run /bin/x: Permission denied"


def test_importing_the_runner_loads_neither_subprocess_nor_shutil():
    code = "import sys; import bootagent.tools; print('subprocess' in sys.modules, 'shutil' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert done.stdout.split() == ["False", "False"], done.stderr
