"""The journal's unit field: `journalctl -u` must find the early unit's lines even when
journald reads them after the process has exited (it then cannot see its cgroup)."""

from __future__ import annotations

from bootagent.log import own_unit, unit_of_cgroup


def test_the_unit_is_read_from_a_cgroup_v2_line():
    assert unit_of_cgroup("0::/system.slice/bootagent-host-keys.service\n") == "bootagent-host-keys.service"


def test_a_hybrid_hierarchy_names_the_unit_on_its_systemd_line():
    text = ("12:pids:/system.slice/bootagent.service\n"
            "1:name=systemd:/system.slice/bootagent.service\n0::/system.slice/bootagent.service\n")
    assert unit_of_cgroup(text) == "bootagent.service"


def test_no_unit_outside_systemd_services():
    assert unit_of_cgroup("0::/\n") is None
    assert unit_of_cgroup("0::/user.slice/user-0.slice/session-3.scope\n") == "session-3.scope"


def test_own_unit_reads_the_file_and_is_none_when_it_cannot(tmp_path):
    cgroup = tmp_path / "cgroup"
    cgroup.write_text("0::/system.slice/bootagent.service\n")
    assert own_unit(str(cgroup)) == "bootagent.service"
    assert own_unit(str(tmp_path / "missing")) is None
