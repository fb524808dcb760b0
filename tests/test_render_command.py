"""`bootagent render`: a template exactly as the boot renders it (one code path: the
templates step's context builder and renderer), from the fake's default document, a
--metadata-file or IMDS; overrides by --tag, --userdata and --customdata; --manifest
with `when` and diffs; exit 0 / 1 (a template failed) / 2 (usage, unreadable template);
nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import REPO, b64, run_cli

TEMPLATES = REPO / "templates"


def install_examples(root: Path) -> list[dict]:
    """The repository's example templates and manifest under the root; the manifest."""
    target = root / "etc/bootagent/templates"
    target.mkdir(parents=True, exist_ok=True)
    for src in TEMPLATES.glob("*.j2"):
        shutil.copy(src, target / src.name)
    shutil.copy(TEMPLATES / "bootagent.yaml", root / "etc/bootagent/bootagent.yaml")
    return yaml.safe_load((TEMPLATES / "bootagent.yaml").read_text())["templates"]


def write_template(root: Path, name: str, text: str) -> None:
    path = root / "etc/bootagent/templates" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_config(root: Path, text: str) -> None:
    (root / "etc/bootagent").mkdir(parents=True, exist_ok=True)
    (root / "etc/bootagent/bootagent.yaml").write_text(text)


def render(root: Path, *args: str):
    return run_cli("render", "--root", str(root), *args)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("document_source", ["default", "metadata-file"])
def test_render_and_the_boot_give_the_same_bytes_for_every_example_template(root, tmp_path, document,
                                                                           document_source):
    manifest = install_examples(root)
    assert {entry["src"] for entry in manifest} == {p.name for p in TEMPLATES.glob("*.j2")}
    doc = tmp_path / "doc.json"
    if document_source == "default":  # render's own default: the fake's document, as shipped
        shutil.copy(REPO / "bootagent/fake/default_document.json", doc)
        source = []
    else:
        document["compute"]["userData"] = b64("#cloud-config\nmotd_message: from userData\n")
        document["compute"]["tagsList"].append({"name": "owner", "value": "team-a"})
        doc.write_text(json.dumps(document))
        source = ["--metadata-file", str(doc)]
    done = run_cli("run", "--root", str(root), "--metadata-file", str(doc))
    assert done.returncode == 0, done.stderr
    for entry in manifest:
        rendered = render(root, entry["src"], *source)
        assert rendered.returncode == 0, rendered.stderr
        assert rendered.stdout.encode() == (root / entry["dest"].lstrip("/")).read_bytes(), entry["src"]
    after_boot = tree(root)
    listed = render(root, "--manifest", *source)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("unchanged") == len(manifest), listed.stdout
    assert tree(root) == after_boot  # render wrote nothing, not even a cache


def test_render_of_a_fresh_root_writes_nothing(root):
    install_examples(root)
    before = tree(root)
    for src in ("motd.j2", "--manifest"):
        assert render(root, src).returncode == 0
    assert tree(root) == before


def test_overrides_tags_userdata_customdata(root, tmp_path):
    write_template(root, "t.j2", "{{ hostname }} {{ tags.env }} {{ tags.get('new', '-') }} "
                                 "{{ userdata.get('u', '-') }} {{ customdata.get('c', '-') }}\n")
    assert render(root, "t.j2").stdout == "demo-vm-01 demo - - -\n"  # the default document
    (root / "var/lib/bootagent").mkdir(parents=True)
    (root / "var/lib/bootagent/custom-data").write_text("#cloud-config\nc: kept\n")
    assert render(root, "t.j2").stdout == "demo-vm-01 demo - - kept\n"
    userdata, customdata = tmp_path / "ud", tmp_path / "cd"
    userdata.write_text("#cloud-config\nu: given\nhostname: from-userdata\n")
    customdata.write_text("c: given\n")
    done = render(root, "t.j2", "--tag", "env=prod", "--tag", "new=a=b", "--userdata", str(userdata),
                  "--customdata", str(customdata))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "from-userdata prod a=b given given\n"


def test_a_gzipped_userdata_file_is_unpacked_as_at_boot(root, tmp_path):
    import gzip

    write_template(root, "t.j2", "{{ userdata.u }}\n")
    packed = tmp_path / "ud.gz"
    packed.write_bytes(gzip.compress(b"#cloud-config\nu: unpacked\n"))
    done = render(root, "t.j2", "--userdata", str(packed))
    assert (done.returncode, done.stdout) == (0, "unpacked\n"), done.stderr


def test_a_path_with_a_slash_is_the_callers_own_file(root, tmp_path):
    own = tmp_path / "mine.j2"
    own.write_text("{{ compute.vmId }}")
    done = run_cli("render", "--root", str(root), str(own))
    assert (done.returncode, done.stdout) == (0, "6fce6ebb-7896-4f8f-af8c-0d467c3b061a")


def test_imds_url_reads_the_document_from_imds(root, fake_imds, document):
    write_template(root, "t.j2", "{{ compute.name }}\n")
    done = render(root, "t.j2", "--imds-url", fake_imds.url, "--timeout", "10")
    assert (done.returncode, done.stdout) == (0, "demo-vm-01\n"), done.stderr
    assert fake_imds.count("/metadata/instance") == 1


def test_an_undefined_name_fails_with_the_template_and_line(root):
    write_template(root, "bad.j2", "line one\n{{ nope }}\n")
    done = render(root, "bad.j2")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == "bootagent: error: render bad.j2: undefined name 'nope' at line 2\n"


def test_a_tag_with_a_control_character_fails_only_templates_that_use_it(root):
    write_template(root, "uses.j2", "{{ tags.evil }}\n")
    write_template(root, "other.j2", "{{ tags.env }}\n")
    for value in ("a\nb", "a\x01b"):
        uses = render(root, "uses.j2", "--tag", f"evil={value}")
        assert uses.returncode == 1
        assert "tag 'evil' holds a control character" in uses.stderr and "a\nb" not in uses.stderr
        other = render(root, "other.j2", "--tag", f"evil={value}")
        assert (other.returncode, other.stdout) == (0, "demo\n")


def test_tags_are_data_never_templates(root):
    write_template(root, "t.j2", "{{ tags.x }}\n")
    done = render(root, "t.j2", "--tag", "x={{ 7 * 7 }} $HOME")
    assert done.stdout == "{{ 7 * 7 }} $HOME\n"


@pytest.mark.parametrize("args, says", [
    (["missing.j2"], "cannot read the template 'missing.j2': not found"),
    (["/nonexistent/x.j2"], "cannot read the template '/nonexistent/x.j2'"),
    ([], "render needs a template"),
    (["t.j2", "--manifest"], "a template or --manifest, not both"),
    (["t.j2", "--tag", "novalue"], "--tag 'novalue' is not KEY=VALUE"),
    (["t.j2", "--tag", "=x"], "--tag '=x' is not KEY=VALUE"),
    (["t.j2", "--metadata-file", "/nonexistent.json"], "cannot read --metadata-file"),
    (["t.j2", "--metadata-file", "x", "--imds-url", "http://127.0.0.1:1"], "not both"),
    (["t.j2", "--userdata", "/nonexistent"], "cannot read the userData file '/nonexistent'"),
])
def test_usage_errors_and_unreadable_templates_are_exit_2(root, args, says):
    write_template(root, "t.j2", "x\n")
    done = render(root, *args)
    assert done.returncode == 2, done
    assert says in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr


def test_a_template_that_is_not_utf8_is_exit_2(root):
    (root / "etc/bootagent/templates").mkdir(parents=True)
    (root / "etc/bootagent/templates/bin.j2").write_bytes(b"\xff\xfe")
    done = render(root, "bin.j2")
    assert done.returncode == 2 and "not UTF-8" in done.stderr


def test_a_metadata_file_that_is_not_a_document_is_exit_2(root, tmp_path):
    write_template(root, "t.j2", "x\n")
    doc = tmp_path / "doc.json"
    doc.write_text('{"compute": {}}')
    done = render(root, "t.j2", "--metadata-file", str(doc))
    assert done.returncode == 2 and "vmId" in done.stderr


def test_the_manifest_shows_when_and_diffs(root):
    write_template(root, "a.j2", "a={{ tags.env }}\n")
    write_config(root, "templates:\n"
                       "  - {src: a.j2, dest: /etc/a}\n"
                       "  - {src: a.j2, dest: /etc/prod-only, when: \"tags.get('env') == 'prod'\"}\n"
                       "  - {src: a.j2, dest: /etc/demo-only, when: \"tags.get('env') == 'demo'\"}\n")
    (root / "etc/a").write_text("a=old\n")
    done = render(root, "--manifest")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "a.j2 -> /etc/a: always: rendered, would change\n--- a/etc/a\n+++ b/etc/a\n" in out
    assert "-a=old\n+a=demo\n" in out
    assert "a.j2 -> /etc/prod-only: when \"tags.get('env') == 'prod'\": does not hold, not rendered" in out
    assert "a.j2 -> /etc/demo-only: when \"tags.get('env') == 'demo'\": holds, would change" in out
    assert (root / "etc/a").read_text() == "a=old\n" and not (root / "etc/demo-only").exists()


def test_a_manifest_entry_whose_when_fails_is_exit_1_and_named(root):
    write_template(root, "a.j2", "a\n")
    write_config(root, "templates:\n"
                       "  - {src: a.j2, dest: /etc/good}\n"
                       "  - {src: a.j2, dest: /etc/bad, when: \"no_such_name == 1\"}\n")
    done = render(root, "--manifest")
    assert done.returncode == 1
    assert "a.j2 -> /etc/good: always: rendered" in done.stdout
    assert done.stderr == ("bootagent: error: a.j2 -> /etc/bad: in 'when': "
                           "undefined name 'no_such_name'\n")


def test_a_manifest_entry_whose_template_is_missing_is_exit_2(root):
    write_template(root, "a.j2", "a\n")
    write_config(root, "templates:\n  - {src: a.j2, dest: /etc/a}\n  - {src: gone.j2, dest: /etc/b}\n"
                       "  - {src: a.j2, dest: /etc/c, when: \"nope\"}\n")
    done = render(root, "--manifest")
    assert done.returncode == 2
    assert "cannot read the template 'gone.j2'" in done.stderr and "in 'when'" in done.stderr
