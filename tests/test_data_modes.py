"""Owner-only data dirs (connreg/datadir.py): every directory 0700 and every file 0600 on a
root and an edge after real use, a loose data dir tightened at start with one log line, and the
CLI commands that write a data dir leave it the same way."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx

from connreg.testing import start_node
from connreg.testing.hierarchy import wait_for
from connreg.testing.oci import OCI_MANIFEST, make_image
from helpers import push_image

OPEN = ["--no-auth"]
TIGHTENED = "were open to group or others"


def offenders(data_dir: Path) -> list[str]:
    """Every directory that is not 0700 and every regular file that is not 0600 (symlinks are
    not followed: nothing the node makes is one)."""
    found = []
    for path in [data_dir, *data_dir.rglob("*")]:
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue  # a running node's staging file, gone meanwhile
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode) and mode != 0o700 or \
                stat.S_ISREG(st.st_mode) and mode != 0o600:
            found.append(f"{oct(mode)} {path.relative_to(data_dir.parent)}")
    return found


def kinds(data_dir: Path) -> set[str]:
    """Names of what the walk saw, to show the test covered what it claims to."""
    return {p.name for p in data_dir.rglob("*")}


def push_at(node, auth=None) -> None:
    with httpx.Client(base_url=node.url, auth=auth, timeout=60) as c:
        push_image(c, "modes/app", make_image([2000, 3000]), "v1")
        # An upload left open: its file sits in store/uploads.
        r = c.post("/v2/modes/wip/blobs/uploads/")
        assert r.status_code == 202, r.text
        r = c.patch(r.headers["Location"], content=b"x" * 5000,
                    headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 202, r.text


def test_root_and_edge_keep_everything_owner_only(hierarchy):
    hierarchy.create("modesedge", "ReadOnly", ["modes/*"])
    edge = hierarchy.start_child("modesedge")
    root = hierarchy.root
    push_at(root, root.admin)

    def edge_has_it():
        r = httpx.head(f"{edge.url}/v2/modes/app/manifests/v1", auth=edge.admin, timeout=10,
                       headers={"Accept": OCI_MANIFEST})
        return r.status_code == 200
    wait_for(edge_has_it, 60, message="modes/app:v1 at the edge")

    for node in (root, edge):
        seen = kinds(node.data_dir)
        assert {"metadata.sqlite-wal", "control.sqlite-shm", "reserve", "uploads"} <= seen
        assert offenders(node.data_dir) == [], node.data_dir
    # Written at the edge's first start: its admin password, token signing key, activation.
    assert {"admin-password", "token-signing-key.pem", "connected-registry.json"} \
        <= kinds(edge.data_dir)
    assert any(p.name.startswith("sha256") or len(p.name) == 64
               for p in (root.data_dir / "store").rglob("*") if p.is_file())


def test_loose_data_dir_is_tightened_at_start_with_one_log_line(tmp_path):
    node = start_node(tmp_path / "node", args=OPEN)
    push_at(node)
    node.stop()
    data = node.data_dir
    blob = next(p for p in (data / "store" / "blobs").rglob("*") if p.is_file())
    outside = tmp_path / "outside.txt"
    outside.write_text("not the node's")
    outside.chmod(0o644)
    (data / "outside-link").symlink_to(outside)
    loosened = [(data, 0o755), (data / "metadata.sqlite", 0o644),
                (data / "store" / "blobs", 0o755), (blob, 0o644)]
    for path, mode in loosened:
        path.chmod(mode)

    log_before = len(node.log())
    node.start()
    try:
        lines = [line for line in node.log()[log_before:].splitlines() if TIGHTENED in line]
        assert len(lines) == 1, lines
        assert f": {len(loosened)} path(s) {TIGHTENED}" in lines[0], lines[0]
        assert offenders(data) == []
        assert stat.S_IMODE(outside.stat().st_mode) == 0o644, "followed a symlink out"
        # A restart with nothing loose says nothing.
        log_before = len(node.log())
        node.restart()
        assert TIGHTENED not in node.log()[log_before:]
    finally:
        node.stop()


def _loosen(data_dir: Path) -> None:
    for path in [data_dir, *data_dir.rglob("*")]:
        if path.is_symlink():
            continue
        path.chmod(0o755 if path.is_dir() else 0o644)


def _connreg(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNREG_")}
    return subprocess.run([sys.executable, "-m", "connreg", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_commands_on_a_data_dir_leave_it_owner_only(tmp_path):
    node = start_node(tmp_path / "node", args=OPEN)
    push_at(node)
    node.stop()
    data = node.data_dir

    for command, opens_store in (
            (["maintenance", "gc", "--data-dir", str(data)], True),
            (["sync", "parked", "list", "--data-dir", str(data), "--output", "json"], False),
            (["maintenance", "reindex-chunks", "--data-dir", str(data)], True)):
        _loosen(data)
        if opens_store:  # made again when the store opens: created under the umask
            (data / "store" / "tmp").rmdir()
        done = _connreg(*command)
        assert done.returncode == 0, done.stderr
        assert done.stderr.count(TIGHTENED) == 1, done.stderr
        assert offenders(data) == [], command
        assert (data / "store" / "tmp").is_dir()
