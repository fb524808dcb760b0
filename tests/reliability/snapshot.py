"""Snapshots of a whole root and the judge of SPEC's promise "a run killed at any point
leaves every file either old or new".

A snapshot maps each relative path to an Entry: kind, bytes (files), link target
(symlinks), mode and owner. Directories are judged by mode and owner only; their
listing is judged through the entries below them.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

TEMP_NAME = re.compile(r"^\..+\.bootagent-tmp\.[A-Za-z0-9_-]{6,}$")
HOST_KEY = re.compile(r"^etc/ssh/ssh_host_[a-z0-9]+_key(\.pub)?$")
RESULT = "run/bootagent/result.json"
KVP_POOL = "var/lib/hyperv/.kvp_pool_1"
KVP_RECORD = 512 + 2048


@dataclass(frozen=True)
class Entry:
    kind: str               # "file" | "dir" | "link" | "other"
    mode: int
    uid: int
    gid: int
    data: bytes | None = None

    def meta(self) -> tuple:
        return (self.kind, self.mode, self.uid, self.gid)


def snapshot(root: Path) -> dict[str, Entry]:
    found: dict[str, Entry] = {}
    for here, dirs, files in os.walk(root):
        for name in dirs + files:
            full = os.path.join(here, name)
            rel = os.path.relpath(full, root)
            info = os.lstat(full)
            mode = stat.S_IMODE(info.st_mode)
            if stat.S_ISREG(info.st_mode):
                with open(full, "rb") as handle:
                    entry = Entry("file", mode, info.st_uid, info.st_gid, handle.read())
            elif stat.S_ISDIR(info.st_mode):
                entry = Entry("dir", mode, info.st_uid, info.st_gid)
            elif stat.S_ISLNK(info.st_mode):
                entry = Entry("link", mode, info.st_uid, info.st_gid, os.readlink(full).encode())
            else:
                entry = Entry("other", mode, info.st_uid, info.st_gid)
            found[rel] = entry
    return found


def is_temp(path: str) -> bool:
    """A temporary file or directory of the agent, or anything inside one."""
    return any(".bootagent-tmp." in part for part in path.split("/"))


def temp_files(snap: dict[str, Entry]) -> list[str]:
    """Paths of the agent's temporary files and directories (and what they hold)."""
    return sorted(p for p in snap if is_temp(p))


def key_pair_ok(private: bytes, public: bytes) -> bool:
    """True when `public` is the public half of `private` (ssh-keygen -y agrees)."""
    derived = subprocess.run(["ssh-keygen", "-y", "-P", "", "-f", "/dev/stdin"], input=private,
                             capture_output=True, timeout=30)
    return derived.returncode == 0 and derived.stdout.split()[:2] == public.split()[:2]


def private_key_ok(private: bytes) -> bool:
    derived = subprocess.run(["ssh-keygen", "-y", "-P", "", "-f", "/dev/stdin"], input=private,
                             capture_output=True, timeout=30)
    return derived.returncode == 0


def public_key_ok(public: bytes) -> bool:
    fields = public.split()
    return len(fields) >= 2 and fields[0].startswith((b"ssh-", b"ecdsa-")) and public.endswith(b"\n")


def normalized_result(data: bytes) -> dict:
    """What of result.json must not depend on where a run was killed: the timestamps
    differ from run to run, and a step done by a killed run is `unchanged` in the next."""
    try:
        record = json.loads(data)
    except ValueError:
        return {"unreadable": len(data)}
    return {"status": record["status"], "instance_id": record["instance_id"],
            "steps": sorted(record["steps"]), "error": record.get("error")}


def kvp_records(data: bytes) -> list[bytes]:
    assert len(data) % KVP_RECORD == 0, f"{KVP_POOL} holds a partial record ({len(data)} bytes)"
    return [data[i:i + KVP_RECORD] for i in range(0, len(data), KVP_RECORD)]


def judge_killed(old: dict, new: dict, now: dict) -> list[str]:
    """Every way `now` (a root after a killed run) breaks "every file old or new"."""
    problems = []
    for path in sorted(set(old) | set(new) | set(now)):
        if is_temp(path):
            outer = next(part for part in path.split("/") if ".bootagent-tmp." in part)
            if path in now and not TEMP_NAME.match(outer):
                problems.append(f"{path}: a temporary file under a name other programs may read")
            continue
        here, before, after = now.get(path), old.get(path), new.get(path)
        if HOST_KEY.match(path):
            problems += _judge_host_key(path, old, new, now)
        elif path == RESULT and here is not None:
            if after is None or normalized_result(here.data) != normalized_result(after.data):
                problems.append(f"{path}: neither absent nor the uninterrupted run's record")
        elif path == KVP_POOL and here is not None:
            for record in kvp_records(here.data):
                if b"PROVISIONING_REPORT" not in record[:512]:
                    problems.append(f"{path}: a record that is not the agent's report")
        elif here is None:
            if before is not None and after is not None:
                problems.append(f"{path}: gone, though both the old and the new root have it")
        elif before is None and after is None:
            problems.append(f"{path}: neither in the old root nor in the uninterrupted run's")
        else:
            problems += _judge_entry(path, before, after, here)
    return problems


def _judge_entry(path: str, before: Entry | None, after: Entry | None, here: Entry) -> list[str]:
    sides = [e for e in (before, after) if e is not None]
    problems = []
    if here.kind not in {e.kind for e in sides}:
        return [f"{path}: a {here.kind}, neither old nor new"]
    if here.data not in {e.data for e in sides if e.kind == here.kind}:
        problems.append(f"{path}: content is neither old nor new ({len(here.data or b'')} bytes)")
    if here.mode not in {e.mode for e in sides}:
        problems.append(f"{path}: mode {here.mode:04o} is neither old nor new")
    if (here.uid, here.gid) not in {(e.uid, e.gid) for e in sides}:
        problems.append(f"{path}: owner {here.uid}:{here.gid} is neither old nor new")
    return problems


def _judge_host_key(path: str, old: dict, new: dict, now: dict) -> list[str]:
    """Keys are random: "new" is a well-formed key with the new mode and owner. A pair whose
    halves are both new must match; one half old and one new is what a kill between the
    two renames leaves (each file old or new, the next run replaces the pair)."""
    before, after, here = old.get(path), new.get(path), now.get(path)
    if here is None:
        return [] if before is None or after is None else [f"{path}: gone"]
    if before is not None and here == before:
        return []
    if after is None:
        return [f"{path}: not in the old root nor made by an uninterrupted run"]
    problems = []
    if here.meta() != after.meta():
        problems.append(f"{path}: new key with mode {here.mode:04o} owner {here.uid}:{here.gid}, "
                        f"not {after.mode:04o} {after.uid}:{after.gid}")
    if path.endswith(".pub"):
        if not public_key_ok(here.data):
            problems.append(f"{path}: not a public key line")
        private = now.get(path[:-4])
        if private is not None and private != old.get(path[:-4]) \
                and not key_pair_ok(private.data, here.data):
            problems.append(f"{path}: both halves are new but do not match")
    elif not private_key_ok(here.data):
        problems.append(f"{path}: not a private key")
    return problems


def judge_recovered(old: dict, new: dict, now: dict) -> list[str]:
    """Every way `now` (a root after a kill and one more run) differs from `new` (after
    an uninterrupted run), modulo what is random or a timestamp."""
    problems = [f"{path}: a temporary file left behind" for path in temp_files(now)]
    for path in sorted((set(new) | set(now)) - set(temp_files(now))):
        here, after = now.get(path), new.get(path)
        if here is None or after is None:
            problems.append(f"{path}: {'missing' if here is None else 'not made by an uninterrupted run'}")
        elif HOST_KEY.match(path):
            if here.meta() != after.meta():
                problems.append(f"{path}: mode {here.mode:04o} owner {here.uid}:{here.gid}")
            if (old.get(path) == here) != (old.get(path) == after):
                problems.append(f"{path}: {'still the image' if old.get(path) == here else 'replaced'}'s key")
            if path.endswith(".pub") and path[:-4] in now \
                    and not key_pair_ok(now[path[:-4]].data, here.data):
                problems.append(f"{path}: does not match its private key")
        elif path == RESULT:
            if normalized_result(here.data) != normalized_result(after.data):
                problems.append(f"{path}: {normalized_result(here.data)}")
        elif path == KVP_POOL:
            if not kvp_records(here.data):
                problems.append(f"{path}: no report")
        elif here != after:
            problems.append(f"{path}: differs from the uninterrupted run's "
                            f"({_describe(here)} against {_describe(after)})")
    return problems


def _describe(entry: Entry) -> str:
    size = f", {len(entry.data)} bytes" if entry.kind == "file" else ""
    return f"{entry.kind} {entry.mode:04o} {entry.uid}:{entry.gid}{size}"
