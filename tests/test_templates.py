"""The templates step on a real scratch root: sandboxed strict rendering, tags as data,
written only when content differs, and the fast path that never imports Jinja or PyYAML."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bootagent.boot import Boot
from bootagent.imds.document import parse_document
from bootagent.state import InstanceState
from bootagent.steps import StepResult, templates
from conftest import REPO, b64


def write_template(root: Path, name: str, text: str) -> None:
    path = root / "etc/bootagent/templates" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def entry(src: str, dest: str, *, when: str | None = None, mode: int = 0o644,
          owner: str = "root", group: str = "root") -> dict:
    return {"src": src, "dest": dest, "when": when, "mode": mode, "owner": owner, "group": group}


def set_tags(document: dict, tags: dict) -> dict:
    document["compute"]["tagsList"] = [{"name": k, "value": v} for k, v in tags.items()]
    document["compute"]["tags"] = ";".join(f"{k}:{v}" for k, v in tags.items())
    return document


def make_boot(document: dict, hostname: str | None = "web-01", results: dict | None = None) -> Boot:
    boot = Boot(parse_document(document), InstanceState({"steps": {}}), api_version="2021-08-01")
    boot.hostname = hostname
    boot.results.update(results or {})
    return boot


def run_step(make_ctx, document, manifest, **boot_args) -> StepResult:
    ctx = make_ctx(config={"templates": manifest})
    return templates.run(ctx, make_boot(document, **boot_args))


def test_renders_the_context_keeps_the_final_newline_and_applies_mode_and_owner(root, make_ctx, document):
    with open(root / "etc/passwd", "a") as out:
        out.write("motd:x:1500:1600::/nonexistent:/usr/sbin/nologin\n")
    with open(root / "etc/group", "a") as out:
        out.write("motdgrp:x:1600:\n")
    write_template(root, "motd.j2",
                   "Host {{ hostname }} ({{ compute.location }}), admin {{ admin_user }}\n"
                   "env={{ tags.env }} ip={{ network.interface[0].ipv4.ipAddress[0].privateIpAddress }}\n"
                   "message={{ userdata.motd_message }}\n")
    document["compute"]["userData"] = b64("#cloud-config\nmotd_message: hello there\n")
    outcome = run_step(make_ctx, set_tags(document, {"env": "prod"}),
                       [entry("motd.j2", "/srv/new/dir/motd", mode=0o640, owner="motd", group="motdgrp")])
    assert outcome.status == "changed", outcome
    assert outcome.changed == ["/srv/new/dir/motd"]
    dest = root / "srv/new/dir/motd"
    assert dest.read_text() == ("Host web-01 (westeurope), admin azureuser\n"
                                "env=prod ip=10.0.0.4\nmessage=hello there\n")
    info = dest.stat()
    assert (oct(info.st_mode & 0o7777), info.st_uid, info.st_gid) == (oct(0o640), 1500, 1600)
    for parent in (root / "srv", root / "srv/new", root / "srv/new/dir"):
        assert (parent.stat().st_mode & 0o7777, parent.stat().st_uid) == (0o755, 0)


def test_a_second_run_writes_nothing_and_a_tag_change_renders_again(root, make_ctx, document):
    write_template(root, "env.j2", "ENV={{ tags.env }}\n")
    manifest = [entry("env.j2", "/etc/profile.d/azure-env.sh")]
    assert run_step(make_ctx, set_tags(document, {"env": "prod"}), manifest).status == "changed"
    dest = root / "etc/profile.d/azure-env.sh"
    before = dest.stat().st_mtime_ns
    again = run_step(make_ctx, document, manifest)
    assert (again.status, again.changed) == ("unchanged", [])
    assert dest.stat().st_mtime_ns == before
    assert run_step(make_ctx, set_tags(document, {"env": "test"}), manifest).status == "changed"
    assert dest.read_text() == "ENV=test\n"


def test_same_output_from_new_inputs_is_not_rewritten(root, make_ctx, document):
    write_template(root, "static.j2", "fixed\n")
    manifest = [entry("static.j2", "/etc/static")]
    run_step(make_ctx, document, manifest)
    before = (root / "etc/static").stat().st_mtime_ns
    outcome = run_step(make_ctx, set_tags(document, {"new": "tag"}), manifest)  # cache miss, same bytes
    assert outcome.status == "unchanged"
    assert (root / "etc/static").stat().st_mtime_ns == before


def test_a_destination_changed_behind_its_back_is_restored(root, make_ctx, document):
    write_template(root, "static.j2", "fixed\n")
    manifest = [entry("static.j2", "/etc/static", mode=0o644)]
    run_step(make_ctx, document, manifest)
    (root / "etc/static").write_text("edited\n")
    assert run_step(make_ctx, document, manifest).status == "changed"
    assert (root / "etc/static").read_text() == "fixed\n"
    os.chmod(root / "etc/static", 0o600)
    assert run_step(make_ctx, document, manifest).status == "changed"
    assert (root / "etc/static").stat().st_mode & 0o7777 == 0o644


def test_when_false_writes_nothing_and_when_true_writes(root, make_ctx, document):
    write_template(root, "a.j2", "a\n")
    manifest = [entry("a.j2", "/etc/prod-only", when="tags.get('env') == 'prod'"),
                entry("a.j2", "/etc/any-env", when="tags.get('env')")]
    set_tags(document, {"env": "test"})
    for _ in range(2):  # the second run answers from the cache
        outcome = run_step(make_ctx, document, manifest)
        assert not (root / "etc/prod-only").exists()
        assert (root / "etc/any-env").read_text() == "a\n"
    assert outcome.status == "unchanged"
    assert run_step(make_ctx, set_tags(document, {"env": "prod"}), manifest).changed == ["/etc/prod-only"]


def test_a_tag_with_a_newline_fails_only_the_templates_that_use_it(root, make_ctx, document):
    write_template(root, "uses-bad.j2", "role={{ tags.role }}\n")
    write_template(root, "uses-good.j2", "env={{ tags.env }}\n")
    write_template(root, "uses-all.j2", "{% for name, value in tags.items() %}{{ name }}={{ value }}\n{% endfor %}")
    set_tags(document, {"env": "prod", "role": "web\nPermitRootLogin yes"})
    outcome = run_step(make_ctx, document, [entry("uses-bad.j2", "/etc/bad"), entry("uses-good.j2", "/etc/good"),
                                            entry("uses-all.j2", "/etc/all")])
    assert outcome.status == "failed"
    assert outcome.changed == ["/etc/good"]
    assert (root / "etc/good").read_text() == "env=prod\n"
    assert not (root / "etc/bad").exists() and not (root / "etc/all").exists()
    assert "uses-bad.j2: tag 'role' holds a control character" in outcome.error
    assert "uses-all.j2: tag 'role'" in outcome.error
    assert "uses-good.j2" not in outcome.error
    assert "PermitRootLogin" not in outcome.error and "\n" not in outcome.error


@pytest.mark.parametrize("body", ["{{ tags }}", "{{ tags|tojson }}", "{{ dict.values(tags)|list }}",
                                  "{{ tags.copy() }}", "{{ tags.get('role')|upper }}",
                                  "{% if tags.role == 'x' %}x{% endif %}", "{{ tags['role'] ~ '' }}",
                                  "{{ tags.values()|join(',') }}", "{{ tags|dictsort }}"])
def test_a_poisoned_tag_cannot_be_reached_by_any_path(root, make_ctx, document, body):
    write_template(root, "t.j2", body)
    outcome = run_step(make_ctx, set_tags(document, {"env": "prod", "role": "a\tb"}), [entry("t.j2", "/etc/t")])
    assert outcome.status == "failed"
    assert "t.j2: tag 'role' holds a control character" in outcome.error
    assert not (root / "etc/t").exists()


def test_tag_and_userdata_values_are_data_never_templates(root, make_ctx, document):
    write_template(root, "t.j2", "{{ tags.env }}|{{ userdata.note }}\n")
    document["compute"]["userData"] = b64("note: \"{{ 6 * 7 }}{% raw %}\"\n")
    set_tags(document, {"env": "{{ cycler.__init__.__globals__ }}"})
    outcome = run_step(make_ctx, document, [entry("t.j2", "/etc/t")])
    assert outcome.status == "changed", outcome.error
    assert (root / "etc/t").read_text() == "{{ cycler.__init__.__globals__ }}|{{ 6 * 7 }}{% raw %}\n"


def test_an_undefined_name_fails_that_template_naming_it_and_others_render(root, make_ctx, document):
    write_template(root, "motd.j2", "line one\n{{ foo }}\n")
    write_template(root, "role.j2", "{{ tags.missing_tag }}\n")
    write_template(root, "ok.j2", "ok\n")
    outcome = run_step(make_ctx, document, [entry("motd.j2", "/etc/motd"), entry("role.j2", "/etc/role"),
                                            entry("ok.j2", "/etc/ok")])
    assert outcome.status == "failed"
    assert outcome.error.startswith("templates: motd.j2: undefined name 'foo' at line 2; role.j2: no tag 'missing_tag'")
    assert (root / "etc/ok").read_text() == "ok\n"
    assert not (root / "etc/motd").exists()
    assert "\n" not in outcome.error


@pytest.mark.parametrize("body", ["{{ ''.__class__.__mro__ }}", "{{ cycler.__init__.__globals__ }}",
                                  "{{ '{0.__class__}'.format('') }}", "{{ compute.update({}) }}",
                                  "{{ 'x' * 100000000 }}"])
def test_a_sandbox_escape_fails_that_template_with_a_clear_line(root, make_ctx, document, body):
    write_template(root, "evil.j2", body)
    write_template(root, "ok.j2", "ok\n")
    outcome = run_step(make_ctx, document, [entry("evil.j2", "/etc/evil"), entry("ok.j2", "/etc/ok")])
    assert outcome.status == "failed"
    assert outcome.error.startswith("templates: evil.j2: refused by the sandbox at line 1:")
    assert not (root / "etc/evil").exists()
    assert (root / "etc/ok").exists()


@pytest.mark.parametrize("body", ["{% include 'motd.j2' %}", "{% import 'x.j2' as x %}",
                                  "{% extends 'base.j2' %}", "{% include ['a.j2', 'b.j2'] %}"])
def test_include_import_and_extends_fail_that_template_saying_so(root, make_ctx, document, body):
    write_template(root, "motd.j2", "secret of another template\n")
    write_template(root, "t.j2", "first\n" + body + "\n")
    outcome = run_step(make_ctx, document, [entry("t.j2", "/etc/t")])
    assert outcome.error == ("templates: t.j2: include, import and extends are not supported at line 2: "
                             "put it all in one template")
    assert not (root / "etc/t").exists()


def test_errors_never_quote_userdata(root, make_ctx, document):
    document["compute"]["userData"] = b64("secret: hunter2-token\n")
    write_template(root, "a.j2", "{{ userdata[userdata.secret] }}")
    write_template(root, "b.j2", "{{ userdata.secret|int + 'x' }}")
    write_template(root, "c.j2", "{{ 1 // (userdata.secret|length - userdata.secret|length) }}")
    outcome = run_step(make_ctx, document, [entry(n, f"/etc/{n}") for n in ("a.j2", "b.j2", "c.j2")])
    assert outcome.status == "failed"
    assert "hunter2" not in outcome.error
    assert "c.j2: ZeroDivisionError at line 1" in outcome.error


def test_bad_userdata_leaves_an_empty_userdata_mapping(root, make_ctx, document):
    document["compute"]["userData"] = "not base64 at all!"
    write_template(root, "t.j2", "{{ userdata|length }} {{ userdata.get('x', 'none') }}\n")
    outcome = run_step(make_ctx, document, [entry("t.j2", "/etc/t")])
    assert outcome.status == "changed"
    assert (root / "etc/t").read_text() == "0 none\n"


def test_the_hostname_falls_back_to_etc_hostname_then_localhost(root, make_ctx, document):
    write_template(root, "h.j2", "{{ hostname }}\n")
    manifest = [entry("h.j2", "/etc/h")]
    (root / "etc/hostname").write_text("image-name\n")
    run_step(make_ctx, document, manifest, hostname="set-by-step")
    assert (root / "etc/h").read_text() == "set-by-step\n"
    failed = {"hostname": StepResult.failed("bad")}
    outcome = templates.run(make_ctx(config={"templates": manifest}),
                            make_boot(document, hostname="would-be", results=failed))
    assert outcome.status == "changed" and (root / "etc/h").read_text() == "image-name\n"
    run_step(make_ctx, document, manifest, hostname=None)
    assert (root / "etc/h").read_text() == "image-name\n"
    (root / "etc/hostname").unlink()
    run_step(make_ctx, document, manifest, hostname=None)
    assert (root / "etc/h").read_text() == "localhost\n"


def test_an_empty_manifest_is_skipped_and_a_missing_source_fails(root, make_ctx, document):
    outcome = run_step(make_ctx, document, [])
    assert (outcome.status, outcome.reason) == ("skipped", "no templates in the configuration")
    outcome = run_step(make_ctx, document, [entry("nowhere.j2", "/etc/x")])
    assert outcome.status == "failed"
    assert outcome.error.startswith("templates: nowhere.j2: not found at ")


def test_a_syntax_error_and_an_unknown_owner_fail_clearly(root, make_ctx, document):
    write_template(root, "broken.j2", "ok\n{% if %}\n")
    write_template(root, "ok.j2", "ok\n")
    outcome = run_step(make_ctx, document, [entry("broken.j2", "/etc/b"),
                                            entry("ok.j2", "/etc/o", owner="nobody-here")])
    assert outcome.status == "failed"
    assert "broken.j2: syntax error at line 2" in outcome.error
    assert "ok.j2: owner 'nobody-here' does not exist" in outcome.error


def test_dry_run_changes_nothing_and_shows_the_diff(root, make_ctx, document):
    write_template(root, "t.j2", "hello {{ tags.env }}\n")
    ctx = make_ctx(config={"templates": [entry("t.j2", "/etc/t")]}, dry_run=True)
    outcome = templates.run(ctx, make_boot(document))
    assert outcome.status == "changed"
    assert not (root / "etc/t").exists()
    assert not (root / "var/lib/bootagent/templates-cache.json").exists()
    assert any("+hello demo" in text for _, text in ctx.changes)


GUARD = textwrap.dedent("""
    import json, sys
    from bootagent import config
    from bootagent.boot import Boot
    from bootagent.context import Context
    from bootagent.imds.document import parse_document
    from bootagent.state import InstanceState
    from bootagent.steps import templates
    root, doc, manifest = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
    cfg = config.validate({"templates": manifest}, "test")
    boot = Boot(parse_document(doc), InstanceState({"steps": {}}), api_version="2021-08-01")
    boot.hostname = "web-01"
    outcome = templates.run(Context(root=root, config=cfg), boot)
    print(json.dumps({"status": outcome.status, "error": outcome.error,
                      "jinja2": "jinja2" in sys.modules, "yaml": "yaml" in sys.modules}))
""")


def test_a_later_boot_with_nothing_to_do_imports_neither_jinja_nor_yaml(root, make_ctx, document, tmp_path):
    write_template(root, "motd.j2", "{{ hostname }} {{ tags.env }} {{ userdata.motd_message }}\n")
    write_template(root, "never.j2", "x\n")
    document["compute"]["userData"] = b64("#cloud-config\nmotd_message: hi\n")
    manifest = [entry("motd.j2", "/etc/motd", mode=0o644), entry("never.j2", "/etc/never", when="tags.get('nope')")]
    (tmp_path / "doc.json").write_text(json.dumps(document))
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))

    def guarded_run() -> dict:
        proc = subprocess.run([sys.executable, "-c", GUARD, str(root), str(tmp_path / "doc.json"),
                               str(tmp_path / "manifest.json")], capture_output=True, text=True,
                              cwd=REPO, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    first = guarded_run()
    assert (first["status"], first["jinja2"], first["yaml"]) == ("changed", True, True)
    assert (root / "etc/motd").read_text() == "web-01 demo hi\n"
    later = guarded_run()
    assert later == {"status": "unchanged", "error": None, "jinja2": False, "yaml": False}
    (root / "etc/motd").write_text("tampered\n")          # the destination no longer holds its bytes
    assert guarded_run()["jinja2"] is True
    assert (root / "etc/motd").read_text() == "web-01 demo hi\n"


def test_the_shipped_examples_render_and_the_tags_file_is_safe_shell(root, make_ctx, document):
    import yaml

    from bootagent import config

    for template in (REPO / "templates").glob("*.j2"):
        write_template(root, template.name, template.read_text())
    manifest = config.validate(yaml.safe_load((REPO / "templates/bootagent.yaml").read_text()),
                               "templates/bootagent.yaml").to_dict()["templates"]
    tricky = {"env": "prod", "quote": "it's $(touch /tmp/pwned) `x` \"y\"", "team-name": "a b",
              "bad name!": "left out", "9lives": "left out"}
    outcome = run_step(make_ctx, set_tags(document, tricky), manifest)
    assert outcome.status == "changed", outcome.error
    assert sorted(outcome.changed) == ["/etc/issue.net", "/etc/motd", "/etc/profile.d/azure-tags.sh"]
    assert (root / "etc/motd").read_text().startswith("Welcome to web-01 (prod)\n")
    shown = subprocess.run(["sh", "-c", '. "$1"; printf "%s|%s|%s" "$AZURE_TAG_QUOTE" "$AZURE_TAG_TEAM_NAME" '
                            '"$AZURE_TAG_ENV"', "sh", str(root / "etc/profile.d/azure-tags.sh")],
                           capture_output=True, text=True, check=True).stdout
    assert shown == f"{tricky['quote']}|a b|prod"
    assert "left out" not in (root / "etc/profile.d/azure-tags.sh").read_text()
    run_step(make_ctx, set_tags(document, {"env": "dev"}), manifest)
    assert "dev" in (root / "etc/motd").read_text()
    assert "prod" in (root / "etc/issue.net").read_text()    # `when` false: left as it was


def test_a_failing_when_is_named_without_a_line_of_jinjas_own(root, make_ctx, document):
    """Jinja compiles a `when` into a template of its own: its line numbers (13) are not the
    manifest's, so the error names the entry's `when` and no line."""
    write_template(root, "a.j2", "a\n")
    outcome = run_step(make_ctx, document, [entry("a.j2", "/etc/a", when="no_such_name == 1")])
    assert outcome.status == "failed"
    assert outcome.error == "templates: a.j2: in 'when': undefined name 'no_such_name'"
