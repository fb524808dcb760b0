"""Hypothesis strategies shared by the parser fuzzing and the hostile-document runs."""

from __future__ import annotations

import base64
import copy

from hypothesis import strategies as st

from bootagent.fake.server import default_document

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                    st.text(max_size=40))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=12), inner, max_size=5)),
    max_leaves=30)
nasty_text = st.text(alphabet=st.one_of(st.characters(), st.sampled_from("\x00\r\n\t:;=#\u2028\ufeff")),
                     max_size=200)
huge_text = st.sampled_from(["x" * 100_000, "\u00e9" * 50_000, "a." * 40_000, "\n" * 10_000])

FIELDS = [
    ("compute",), ("network",), ("compute", "vmId"), ("compute", "name"), ("compute", "osProfile"),
    ("compute", "osProfile", "adminUsername"), ("compute", "osProfile", "computerName"),
    ("compute", "osProfile", "disablePasswordAuthentication"), ("compute", "publicKeys"),
    ("compute", "publicKeys", 0), ("compute", "publicKeys", 0, "keyData"),
    ("compute", "publicKeys", 1, "path"), ("compute", "tags"), ("compute", "tagsList"),
    ("compute", "tagsList", 0, "value"), ("compute", "tagsList", 1, "name"), ("compute", "userData"),
    ("compute", "location"), ("compute", "vmSize"), ("compute", "offer"),
]
special_values = st.sampled_from([
    "", " ", "root", "../../etc", "/etc/passwd", "/home/azureuser/../../etc/shadow",
    "/home/azureuser/.ssh/../../../root/.ssh/authorized_keys", "-rf", "a\nb", "a\x00b",
    "line\r\n", "\u202e\u0645", "env:prod;role:a\nb", "7" * 64, "true", "false", "TRUE", [], {},
    "IyEvYmluL3NoCmVjaG8gaGkK",           # a #! script (never run with --root)
    base64.b64encode(b"#cloud-config\nhostname: 2001-02-30\n").decode(),
    base64.b64encode(b"#cloud-config\nhostname: -bad-\n").decode(),
    base64.b64encode(b"hostname: [1, 2]\n").decode(),
    "not base64 !!",
]).map(copy.deepcopy)  # a fresh [] or {} each time: a shared one could end up inside itself


@st.composite
def hostile_documents(draw, max_mutations: int = 6):
    """The fake's default document with fields removed, retyped, blown up or poisoned."""
    doc = default_document()
    for _ in range(draw(st.integers(1, max_mutations))):
        path = draw(st.sampled_from(FIELDS))
        parent = doc
        for key in path[:-1]:
            if isinstance(parent, dict) and isinstance(key, str):
                parent = parent.get(key)
            elif isinstance(parent, list) and isinstance(key, int) and key < len(parent):
                parent = parent[key]
            else:
                parent = None
        last = path[-1]
        if isinstance(parent, list) and isinstance(last, int) and last < len(parent):
            pass
        elif not isinstance(parent, dict) or not isinstance(last, str):
            continue
        if isinstance(parent, dict) and draw(st.integers(0, 3)) == 0:
            parent.pop(last, None)
        else:
            parent[last] = draw(st.one_of(json_values, nasty_text, special_values, huge_text))
    return doc
