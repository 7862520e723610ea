"""Upload sessions are bounded (issue 8, item 5): idle files are closed and reopened, expired
sessions are purged while running, open sessions are capped per identity and in total, and no
request fails with 5xx for lack of file descriptors."""

from __future__ import annotations

import os
import resource
import socket
import sqlite3
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from connreg.control.activation import parse_connection_string
from connreg.testing import Node, start_node
from connreg.testing.hierarchy import Hierarchy, wait_for
from connreg.testing.oci import make_image, sha256

from helpers import error_codes, push_image

ADMIN_PASSWORD = "upload-sessions-admin-Pa55word-0123"
MiB = 1024 * 1024


def settings_env(**values) -> dict[str, str]:
    return {f"CONNREG_{k.upper()}": str(v) for k, v in values.items()}


def make_token(node: Node, name: str, repos: list[str]) -> tuple[str, str]:
    actions = [f"repositories/{repo}/{a}" for repo in repos
               for a in ("content/read", "content/write", "content/delete", "metadata/read",
                         "metadata/write")]
    r = httpx.post(f"{node.url}/connreg/v1/tokens", auth=node.admin, timeout=30,
                   json={"name": name, "actions": actions})
    assert r.status_code == 201, r.text
    return name, r.json()["passwords"][0]["value"]


def open_files(node: Node) -> list[str]:
    """What the node's descriptors point at right now."""
    fd_dir = Path(f"/proc/{node.proc.pid}/fd")
    targets = []
    for fd in os.listdir(fd_dir):
        try:
            targets.append(os.readlink(fd_dir / fd))
        except FileNotFoundError:  # closed while we looked
            pass
    return targets


def open_upload_files(node: Node) -> list[str]:
    uploads = str(node.data_dir / "store" / "uploads") + "/"
    return [t for t in open_files(node) if t.startswith(uploads)]


def upload_rows(node: Node) -> dict[str, tuple[str, float, float]]:
    """id → (owner, created, touched), read straight from the node's metadata database."""
    conn = sqlite3.connect(f"file:{node.data_dir / 'metadata.sqlite'}?mode=ro", uri=True,
                           timeout=30)
    try:
        return {row[0]: row[1:] for row in
                conn.execute("SELECT id, owner, created, touched FROM uploads")}
    finally:
        conn.close()


def session_id(r: httpx.Response) -> str:
    return r.headers["Location"].rsplit("/", 1)[1]


def push_chunked(c: httpx.Client, repo: str, data: bytes, pieces: int = 3) -> str:
    """POST, PATCH in pieces, PUT ?digest=: the resumable path a normal client takes."""
    r = c.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, r.text
    location, step = r.headers["Location"], -(-len(data) // pieces)
    for start in range(0, len(data), step):
        piece = data[start:start + step]
        r = c.patch(location, content=piece, headers={
            "Content-Range": f"{start}-{start + len(piece) - 1}",
            "Content-Type": "application/octet-stream"})
        assert r.status_code == 202, r.text
        location = r.headers["Location"]
    r = c.put(location, params={"digest": sha256(data)})
    assert r.status_code == 201, r.text
    return r.headers["Docker-Content-Digest"]


def test_a_session_flood_under_ulimit_1024_never_answers_5xx(tmp_path):
    """1,100 session starts by one token over 50 concurrent connections with RLIMIT_NOFILE
    1024 for the node: only 202 or 429; the 1,000 idle sessions hold at most
    max_open_upload_files descriptors; then another identity's normal push answers 201."""
    node = start_node(tmp_path / "node", admin_password=ADMIN_PASSWORD, env=settings_env(
        max_upload_sessions=1050, max_upload_sessions_per_identity=1000,
        max_open_upload_files=64))
    try:
        resource.prlimit(node.proc.pid, resource.RLIMIT_NOFILE, (1024, 1024))
        junk = make_token(node, "junk-pusher", ["junk/x"])
        before = len(open_files(node))
        with httpx.Client(base_url=node.url, auth=junk, timeout=60,
                          limits=httpx.Limits(max_connections=50)) as c:
            def start(_):
                return c.post("/v2/junk/x/blobs/uploads/").status_code
            with ThreadPoolExecutor(50) as pool:
                codes = Counter(pool.map(start, range(1100)))
            print(f"1,100 session starts under ulimit -n 1024: {dict(codes)}")
            assert set(codes) <= {202, 429}, codes
            assert codes == {202: 1000, 429: 100}  # the per-identity cap, exactly
            r = c.post("/v2/junk/x/blobs/uploads/")
            assert r.status_code == 429 and error_codes(r) == ["TOOMANYREQUESTS"]
            assert r.headers["Retry-After"].isdigit()
            assert "junk-pusher" in r.json()["errors"][0]["message"]
            assert "max_upload_sessions_per_identity" in r.json()["errors"][0]["message"]
        assert len(os.listdir(node.data_dir / "store" / "uploads")) == 1000
        # 1,000 idle sessions, and the node's descriptors stay bounded (500 would do).
        assert len(open_upload_files(node)) <= 64
        wait_for(lambda: len(open_files(node)) <= before + 64 + 10, timeout=60,
                 message="the node's descriptors back near where they started")

        # Another identity pushes as usual, chunked and monolithic: all 201.
        with httpx.Client(base_url=node.url, auth=node.admin, timeout=60) as c:
            layer = os.urandom(3 * MiB)
            assert push_chunked(c, "team/app", layer) == sha256(layer)
            push_image(c, "team/app", make_image([4000, 200_000]), "v1")
            assert c.get(f"/v2/team/app/blobs/{sha256(layer)}").content == layer
        log = node.log()
        assert "Too many open files" not in log and "EMFILE" not in log, log[-3000:]
    finally:
        node.stop()


def test_sessions_are_capped_per_identity_and_in_total(tmp_path):
    node = start_node(tmp_path / "node", admin_password=ADMIN_PASSWORD, env=settings_env(
        max_upload_sessions_per_identity=3, max_upload_sessions=5))
    try:
        alice = httpx.Client(base_url=node.url, auth=make_token(node, "alice", ["a/app"]),
                             timeout=30)
        bob = httpx.Client(base_url=node.url, auth=make_token(node, "bobby", ["b/app"]),
                           timeout=30)
        started = [alice.post("/v2/a/app/blobs/uploads/") for _ in range(3)]
        assert [r.status_code for r in started] == [202, 202, 202]
        r = alice.post("/v2/a/app/blobs/uploads/")
        assert r.status_code == 429 and error_codes(r) == ["TOOMANYREQUESTS"]
        assert int(r.headers["Retry-After"]) > 0
        error = r.json()["errors"][0]
        assert "alice" in error["message"] and "max_upload_sessions_per_identity" in \
            error["message"]
        assert error["detail"] == {"identity": "alice", "cap": "identity", "limit": 3}
        # A monolithic upload is a session too while its body streams: it counts.
        data = b"monolithic"
        r = alice.post("/v2/a/app/blobs/uploads/", params={"digest": sha256(data)},
                       content=data)
        assert r.status_code == 429
        assert alice.head(f"/v2/a/app/blobs/{sha256(data)}").status_code == 404

        # Bob is not held back by Alice's sessions.
        r = bob.post("/v2/b/app/blobs/uploads/")
        assert r.status_code == 202
        bob_first = r.headers["Location"]
        assert bob.post("/v2/b/app/blobs/uploads/").status_code == 202
        # …until the node as a whole is at its cap (3 + 2 = 5).
        r = bob.post("/v2/b/app/blobs/uploads/")
        assert r.status_code == 429
        assert "max_upload_sessions" in r.json()["errors"][0]["message"]
        assert r.json()["errors"][0]["detail"]["cap"] == "total"

        # Finishing or cancelling a session frees its place.
        assert bob.put(bob_first, params={"digest": sha256(b"")}).status_code == 201
        assert alice.delete(started[0].headers["Location"]).status_code == 204
        r = alice.post("/v2/a/app/blobs/uploads/", params={"digest": sha256(data)},
                       content=data)
        assert r.status_code == 201, r.text
        assert bob.post("/v2/b/app/blobs/uploads/").status_code == 202
        owners = Counter(owner for owner, _, _ in upload_rows(node).values())
        assert owners == {"alice": 2, "bobby": 2}
        alice.close()
        bob.close()
    finally:
        node.stop()


def test_an_idle_session_gives_its_descriptor_back_and_still_completes(tmp_path):
    node = start_node(tmp_path / "node", args=["--no-auth"],
                      env=settings_env(upload_idle_close_seconds=0.5))
    try:
        with httpx.Client(base_url=node.url, timeout=60) as c:
            first, second = os.urandom(2 * MiB + 123), os.urandom(MiB + 7)
            r = c.post("/v2/idle/app/blobs/uploads/", content=first,
                       headers={"Content-Type": "application/octet-stream"})
            assert r.status_code == 202 and r.headers["Range"] == f"0-{len(first) - 1}"
            location, upload_file = r.headers["Location"], session_id(r)
            wait_for(lambda: not open_upload_files(node), timeout=60,
                     message="the idle session's file to be closed")
            assert (node.data_dir / "store" / "uploads" / upload_file).stat().st_size == \
                len(first)
            # The next request reopens it and continues where it was.
            r = c.patch(location, content=second, headers={
                "Content-Range": f"{len(first)}-{len(first) + len(second) - 1}"})
            assert r.status_code == 202, r.text
            wait_for(lambda: not open_upload_files(node), timeout=60,
                     message="the idle session's file to be closed again")
            assert c.get(location).headers["Range"] == f"0-{len(first) + len(second) - 1}"
            r = c.put(location, params={"digest": sha256(first + second)})
            assert r.status_code == 201, r.text
            assert r.headers["Docker-Content-Digest"] == sha256(first + second)
            assert c.get(f"/v2/idle/app/blobs/{sha256(first + second)}").content == \
                first + second
            # A wrong digest after a release is still refused, and the session kept.
            r = c.post("/v2/idle/app/blobs/uploads/", content=b"abc")
            location = r.headers["Location"]
            wait_for(lambda: not open_upload_files(node), timeout=60, message="closed")
            r = c.put(location, params={"digest": sha256(b"abd")})
            assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"]
            assert c.put(location, params={"digest": sha256(b"abc")}).status_code == 201

            # A session whose file is gone loses its row at the next start.
            r = c.post("/v2/idle/app/blobs/uploads/")
            lost = session_id(r)
            (node.data_dir / "store" / "uploads" / lost).unlink()
        assert lost in upload_rows(node)
        node.restart()
        assert lost not in upload_rows(node)
        with httpx.Client(base_url=node.url, timeout=60) as c:
            r = c.get(f"/v2/idle/app/blobs/uploads/{lost}")
            assert r.status_code == 404 and error_codes(r) == ["BLOB_UPLOAD_UNKNOWN"]
    finally:
        node.stop()


def test_expired_sessions_are_purged_while_running(tmp_path):
    """upload_ttl_seconds counts from a session's last request: an idle one loses row and file
    while the node runs, one in use stays; a stray upload file older than the TTL goes too."""
    ttl = 5
    node = start_node(tmp_path / "node", args=["--no-auth"], env=settings_env(
        upload_ttl_seconds=ttl, upload_purge_interval_seconds=0.5))
    uploads = node.data_dir / "store" / "uploads"
    try:
        with httpx.Client(base_url=node.url, timeout=60) as c:
            idle = c.post("/v2/ttl/app/blobs/uploads/", content=b"idle bytes")
            active = c.post("/v2/ttl/app/blobs/uploads/", content=b"a")
            started = time.monotonic()
            idle_id, active_id = session_id(idle), session_id(active)
            stray = uploads / "stray-left-by-a-crash"
            stray.write_bytes(b"x")
            os.utime(stray, (0, 0))
            sent = [b"a"]

            def keep_active() -> None:
                r = c.patch(active.headers["Location"], content=b"b")
                assert r.status_code == 202, r.text
                sent.append(b"b")

            def idle_gone() -> bool:
                keep_active()
                return idle_id not in upload_rows(node)

            def active_outlived_a_ttl() -> bool:
                keep_active()
                return time.monotonic() - started > ttl + 1

            wait_for(idle_gone, timeout=60, interval=0.2, message="the idle session's purge")
            assert not (uploads / idle_id).exists()
            r = c.get(idle.headers["Location"])
            assert r.status_code == 404 and error_codes(r) == ["BLOB_UPLOAD_UNKNOWN"]
            wait_for(lambda: not stray.exists(), timeout=60, message="the stray file's purge")
            # The session that kept being used outlived the TTL and completes.
            wait_for(active_outlived_a_ttl, timeout=60, interval=0.2,
                     message="the active session to outlive a TTL")
            owner, created, touched = upload_rows(node)[active_id]
            assert owner == "address 127.0.0.1" and touched > created
            body = b"".join(sent)
            r = c.put(active.headers["Location"], params={"digest": sha256(body)})
            assert r.status_code == 201, r.text
            assert upload_rows(node) == {}
            assert os.listdir(uploads) == []
        assert "purged 1 upload sessions" in node.log()
    finally:
        node.stop()


def test_an_uploads_table_from_before_the_caps_is_migrated(tmp_path):
    """A data dir from an older version: its sessions get an owner ('') and `touched`
    = `created`, and keep working."""
    data = tmp_path / "node"
    data.mkdir()
    conn = sqlite3.connect(data / "metadata.sqlite")
    conn.execute("CREATE TABLE uploads (id TEXT PRIMARY KEY, repo TEXT NOT NULL,"
                 " created REAL NOT NULL)")
    conn.execute("INSERT INTO uploads VALUES ('old-session', 'legacy/app', 1000.0)")
    conn.commit()
    conn.close()
    (data / "store" / "uploads").mkdir(parents=True)
    (data / "store" / "uploads" / "old-session").write_bytes(b"kept")
    node = start_node(data, args=["--no-auth"], env=settings_env(upload_ttl_seconds=10**10))
    try:
        assert upload_rows(node) == {"old-session": ("", 1000.0, 1000.0)}
        with httpx.Client(base_url=node.url, timeout=60) as c:
            r = c.put("/v2/legacy/app/blobs/uploads/old-session",
                      params={"digest": sha256(b"kept!")}, content=b"!")
            assert r.status_code == 201, r.text
    finally:
        node.stop()


def test_a_monolithic_upload_cut_midway_leaves_no_session(tmp_path):
    """POST ?digest= is a session only while its body streams: a client that goes away midway
    leaves neither a row nor a file behind (nor a place taken under the caps)."""
    node = start_node(tmp_path / "node", args=["--no-auth"])
    try:
        data = os.urandom(4 * MiB)
        with socket.create_connection(("127.0.0.1", node.port), timeout=30) as s:
            s.sendall(f"POST /v2/cut/app/blobs/uploads/?digest={sha256(data)} HTTP/1.1\r\n"
                      f"Host: {node.host}\r\nContent-Length: {len(data)}\r\n"
                      "Content-Type: application/octet-stream\r\n\r\n".encode())
            s.sendall(data[:MiB])
            wait_for(lambda: upload_rows(node), timeout=60, message="the session to start")
        wait_for(lambda: not upload_rows(node), timeout=60, message="the session to end")
        wait_for(lambda: not os.listdir(node.data_dir / "store" / "uploads"), timeout=60,
                 message="the upload file to be removed")
        with httpx.Client(base_url=node.url, timeout=60) as c:
            assert c.head(f"/v2/cut/app/blobs/{sha256(data)}").status_code == 404
    finally:
        node.stop()


def test_sessions_leaked_by_a_child_do_not_lock_its_sync_out(tmp_path):
    """A child's pusher that lost sessions at the parent (cut links) and sits at its cap: the
    parent ends the child's idle sessions to make room (upload_reclaim_idle_seconds), so the
    next push arrives instead of waiting a whole TTL behind 429s."""
    h = Hierarchy(tmp_path, env=settings_env(max_upload_sessions_per_identity=4,
                                             upload_reclaim_idle_seconds=3))
    try:
        root = h.start_root()
        h.create("edge1", "ReadWrite", ["team/*"])
        # The pusher's ordinary upload path (sessions), which the batched upload replaced for
        # small blobs: it stays the path to parents without it and for refused batches.
        edge = h.start_child("edge1", env={"CONNREG_SYNC_UPLOAD_BATCH": "false"})
        sync_token = parse_connection_string(edge.env["CONNREG_CONNECTION_STRING"])
        with httpx.Client(base_url=root.url, timeout=60,
                          auth=(sync_token.token, sync_token.password)) as c:
            leaked = [c.post("/v2/team/app/blobs/uploads/") for _ in range(4)]
            assert [r.status_code for r in leaked] == [202] * 4
            r = c.post("/v2/team/app/blobs/uploads/")
            assert r.status_code == 429, r.text
            assert sync_token.token in r.json()["errors"][0]["message"]
        image = make_image([150_000, 60_000, 9_000])
        with httpx.Client(base_url=edge.url, auth=edge.admin, timeout=60) as c:
            push_image(c, "team/app", image, "v1")
        with httpx.Client(base_url=root.url, auth=root.admin, timeout=60) as c:
            wait_for(lambda: c.head("/v2/team/app/manifests/v1").headers.get(
                "Docker-Content-Digest") == image.digest, timeout=90,
                message="the edge's push to arrive at the root")
        # at least one leaked session was ended to make room
        assert len({session_id(r) for r in leaked} & set(upload_rows(root))) < 4
        assert "to make room for a new one" in root.log()
    finally:
        h.stop_all()
