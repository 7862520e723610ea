"""A node's memory (docs/operations.md, "Memory"): what a fresh `connreg serve` loads, the
admin-only memory report, and the in-memory caches held to their settings under load."""

from __future__ import annotations

import re
import subprocess
import sys

import httpx
import pytest

from connreg import memory
from connreg.auth import tokens
from connreg.testing import Node, start_node
from connreg.testing.hierarchy import wait_for
from connreg.testing.oci import make_image
from tests.helpers import error_codes, push_image

ADMIN_PASSWORD = "memory-test-admin-password-0123456789"
# Loaded only by the nodes that need them; a fresh root with the embedded defaults must not.
LAZY = {
    "psycopg": "PostgreSQL metadata (metadata_url)",
    "psycopg_pool": "PostgreSQL metadata (metadata_url)",
    "prometheus_client": "the first /metrics scrape",
    "cryptography": "the first token signed or checked, or TLS",
    "jwt": "the first token signed or checked",
    "httpx": "a node with a parent",
    "connreg.sync.remote": "a node with a parent",
    "connreg.sync.puller": "a node with a parent",
    "connreg.control.postgres_store": "PostgreSQL metadata (metadata_url)",
}
IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)\s*$", re.MULTILINE)


def imported(node: Node) -> set[str]:
    """Every module the node imported so far, from its `-X importtime` lines on stderr."""
    return set(IMPORT_LINE.findall(node.log()))


def report(node: Node, **params) -> httpx.Response:
    return httpx.get(f"{node.url}/connreg/v1/debug/memory", params=params, auth=node.admin,
                     timeout=60)


def test_a_fresh_node_loads_only_what_it_uses(tmp_path):
    node = start_node(tmp_path / "fresh", admin_password=ADMIN_PASSWORD,
                      env={"PYTHONPROFILEIMPORTTIME": "1"})  # = python -X importtime
    try:
        # Ordinary work with Basic credentials: a push and a pull.
        with httpx.Client(base_url=node.url, auth=node.admin, timeout=60) as c:
            image = make_image([512])
            push_image(c, "lazy/app", image, "v1")
            assert c.get("/v2/lazy/app/manifests/v1").status_code == 200
        seen = imported(node)
        assert "connreg.app" in seen and "quart" in seen  # the log is what we think it is
        loaded = {m: why for m, why in LAZY.items() if m in seen}
        assert not loaded, f"a fresh node imported what it does not use: {loaded}"

        # Each comes in when first needed, and works: a token, then a scrape.
        r = httpx.get(f"{node.url}/oauth2/token", auth=node.admin,
                      params={"service": "connreg", "scope": "repository:lazy/app:pull"})
        assert r.status_code == 200, r.text
        r = httpx.get(f"{node.url}/v2/lazy/app/manifests/v1",
                      headers={"Authorization": f"Bearer {r.json()['token']}"})
        assert r.status_code == 200
        r = httpx.get(f"{node.url}/metrics", auth=node.admin)
        assert r.status_code == 200 and "connreg_http_requests_total" in r.text
        wait_for(lambda: {"cryptography", "jwt", "prometheus_client"} <= imported(node), 30,
                 message="cryptography, jwt and prometheus_client loaded on first use")
        assert "psycopg" not in imported(node) and "httpx" not in imported(node)
    finally:
        node.stop()


def test_the_memory_report_is_admin_only_and_bounded(tmp_path):
    node = start_node(tmp_path / "report", admin_password=ADMIN_PASSWORD,
                      env={"CONNREG_MEMORY_TRACE_FRAMES": "4"})
    try:
        url = f"{node.url}/connreg/v1/debug/memory"
        r = httpx.get(url)
        assert r.status_code == 401 and error_codes(r) == ["UNAUTHORIZED"]
        r = httpx.get(url, auth=("admin", "wrong-password"))
        assert r.status_code == 401
        admin = httpx.Client(base_url=f"{node.url}/connreg/v1", auth=node.admin, timeout=60)
        r = admin.post("/tokens", json={"name": "reader", "actions": [
            "repositories/lazy/*/content/read", "repositories/lazy/*/metadata/read"]})
        assert r.status_code == 201, r.text
        reader = ("reader", r.json()["passwords"][0]["value"])
        r = httpx.get(url, auth=reader)
        assert r.status_code == 403 and error_codes(r) == ["DENIED"]
        assert "admin" in r.json()["errors"][0]["message"]
        for bad in ("0", "101", "-1", "1e3", "x" * 40):
            r = report(node, top=bad)
            assert r.status_code == 400 and error_codes(r) == ["INVALID"], bad

        doc = report(node, top=3).json()
        assert doc["rss"]["VmRSS"] > 10 * 2**20
        assert doc["rss"]["RssAnon"] + doc["rss"]["RssFile"] == pytest.approx(
            doc["rss"]["VmRSS"], rel=0.05)
        assert doc["sqlite"]["memoryUsed"] > 0  # the metadata and control databases are open
        assert doc["caches"]["manifests"]["setting"] == "manifest_cache_bytes"
        traced = doc["tracemalloc"]
        assert traced["frames"] == 4 and traced["tracedBytes"] > 0
        assert 1 <= len(traced["top"]) <= 3
        assert all(re.fullmatch(r".+:\d+", t["where"]) and t["bytes"] > 0
                   for t in traced["top"])
        assert len(report(node, top=100).content) < 64 * 1024
    finally:
        node.stop()


def test_tracing_is_off_by_default(node):
    # `node` is the open (--no-auth) fixture: the report answers without credentials there.
    doc = httpx.get(f"{node.url}/connreg/v1/debug/memory").json()
    assert doc["tracemalloc"] is None


def test_caches_stay_within_their_settings_under_load(tmp_path):
    node = start_node(tmp_path / "bounded", admin_password=ADMIN_PASSWORD, env={
        "CONNREG_MANIFEST_CACHE_BYTES": "4096",
        "CONNREG_CREDENTIAL_CACHE_ENTRIES": "3",
        "CONNREG_TOKEN_CACHE_ENTRIES": "4",
        "CONNREG_PASSWORD_CHECK_PARALLEL": "4"})
    try:
        admin = httpx.Client(base_url=f"{node.url}/connreg/v1", auth=node.admin, timeout=60)
        actions = ["repositories/load/*/content/read", "repositories/load/*/metadata/read",
                   "repositories/load/*/content/write", "repositories/load/*/metadata/write"]
        users = []
        for i in range(6):
            r = admin.post("/tokens", json={"name": f"pusher-{i}", "actions": actions})
            assert r.status_code == 201, r.text
            users.append((f"pusher-{i}", r.json()["passwords"][0]["value"]))
        images = [make_image([256 + i]) for i in range(12)]  # manifests of ~500 bytes each
        for i, image in enumerate(images):
            with httpx.Client(base_url=node.url, auth=users[i % 6], timeout=60) as c:
                push_image(c, f"load/app{i}", image, "v1")
        bearer_tokens = []
        for i, image in enumerate(images):
            r = httpx.get(f"{node.url}/oauth2/token", auth=users[i % 6], timeout=60,
                          params={"service": "connreg", "scope": f"repository:load/app{i}:pull"})
            assert r.status_code == 200, r.text
            bearer_tokens.append(r.json()["token"])
        for _ in range(2):  # every manifest read by digest twice, each with its own token
            for i, image in enumerate(images):
                r = httpx.get(f"{node.url}/v2/load/app{i}/manifests/{image.digest}",
                              headers={"Authorization": f"Bearer {bearer_tokens[i]}"})
                assert r.status_code == 200 and r.content == image.manifest

        caches = report(node).json()["caches"]
        bounds = {"manifests": 4096, "verified_credentials": 3, "verified_tokens": 4}
        for name, bound in bounds.items():
            cache = caches[name]
            assert cache["max"] == bound, (name, cache)
            # In use (this load filled each past its bound) and never above it.
            assert 0 < cache["size"] <= bound, (name, cache)
        assert caches["manifests"]["size"] > 4096 - 2 * max(len(i.manifest) for i in images)
    finally:
        node.stop()


def test_a_new_signing_key_needs_no_cryptography_and_others_still_load(tmp_path):
    # new_key_pem writes PKCS #8 by hand: cryptography and OpenSSL must read it as Ed25519.
    code = ("import sys\nfrom pathlib import Path\nfrom connreg.auth import tokens\n"
            f"service = tokens.TokenService(Path({str(tmp_path / 'auth')!r}), 'connreg', 300, 3600)\n"
            "print('cryptography' in sys.modules, 'jwt' in sys.modules)\n"
            "token, _ = service.issue_access('bob', {'a/b': {'pull'}}, False)\n"
            "print(service.verify_access(token).access)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out == ["False False", "{'a/b': frozenset({'pull'})}"]
    key_file = tmp_path / "auth" / tokens.KEY_FILE
    assert key_file.stat().st_mode & 0o777 == 0o600
    openssl = subprocess.run(["openssl", "pkey", "-in", str(key_file), "-noout", "-text"],
                             capture_output=True, text=True)
    assert openssl.returncode == 0 and "ED25519 Private-Key" in openssl.stdout

    # A key in another form is checked (and loaded) at start, as before.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    other = tmp_path / "other"
    other.mkdir()
    (other / tokens.KEY_FILE).write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()))
    with pytest.raises(ValueError):
        tokens.TokenService(other, "connreg", 300, 3600)
    (other / tokens.KEY_FILE).write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    with pytest.raises(ValueError, match="not an Ed25519 private key"):
        tokens.TokenService(other, "connreg", 300, 3600)
    (other / tokens.KEY_FILE).write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot base64!\n"
                                          b"-----END PRIVATE KEY-----\n")
    with pytest.raises(ValueError):
        tokens.TokenService(other, "connreg", 300, 3600)


def test_a_trim_follows_memory_freed_after_the_peak():
    # The sustained-load case (bench/RESULTS.md, "Memory (m13)"): the last trim ran at the
    # peak, while a feed batch's blobs were alive; they were freed with RSS flat, and RSS
    # growth alone never called for another trim, so ~50 MB stayed resident for good.
    MB = 1 << 20
    policy = memory.TrimPolicy()
    assert policy.due(60 * MB, 1 * MB)  # first look: trims once
    policy.trimmed(60 * MB, 1 * MB)
    assert not policy.due(60 * MB, 1 * MB)  # idle: nothing to do
    assert policy.due(147 * MB, 3 * MB)  # a burst: RSS grew
    policy.trimmed(147 * MB, 3 * MB)  # ... trimmed at the peak, objects still alive
    assert policy.due(147 * MB, 60 * MB)  # burst over: RSS flat, 57 MB more heap free
    policy.trimmed(100 * MB, 60 * MB)
    assert not policy.due(100 * MB, 60 * MB)  # given back: not again and again
    assert not policy.due(100 * MB, 20 * MB)  # free heap reused (pages already resident)
    assert not policy.due(100 * MB, 20 * MB + memory.TRIM_FREED_BYTES - 1)  # noise
    assert policy.due(100 * MB, 20 * MB + memory.TRIM_FREED_BYTES)  # freed again
    no_mallinfo = memory.TrimPolicy()
    no_mallinfo.trimmed(60 * MB, None)
    assert not no_mallinfo.due(60 * MB, None) and no_mallinfo.due(61 * MB, None)


@pytest.mark.skipif(memory.malloc_info() is None, reason="needs glibc's mallinfo2")
def test_a_burst_made_in_a_worker_thread_is_given_back():
    # 80 MiB of 64 KiB objects made in a worker thread (its own arena), each followed by a
    # small object that stays (so the heap cannot shrink from its top by itself), freed while
    # the trim loop runs as `connreg serve` runs it: RSS comes back near where it started.
    code = """
import trio
from connreg import memory
from connreg.serve import limit_malloc_arenas
limit_malloc_arenas(2)
memory.fix_mmap_threshold(256 * 1024)
MB = 1 << 20

def burst():
    big, keep = [], []
    for i in range(1280):
        big.append(bytes([i % 251]) * 65536)
        keep.append(bytes([i % 251]) * 600)
    return big, keep

async def main():
    async with trio.open_nursery() as nursery:
        nursery.start_soon(memory.trim_loop, 0.2)
        base = memory.rss_bytes()
        big, keep = await trio.to_thread.run_sync(burst)
        peak = memory.rss_bytes()
        await trio.sleep(1.0)  # trims at the peak: nothing to give back yet
        del big
        deadline = trio.current_time() + 30
        while memory.rss_bytes() > base + 20 * MB and trio.current_time() < deadline:
            await trio.sleep(0.1)
        print(base // MB, peak // MB, memory.rss_bytes() // MB, len(keep))
        nursery.cancel_scope.cancel()

trio.run(main)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    base, peak, after = (int(v) for v in out[:3])
    assert peak >= base + 70, out  # the burst was resident
    assert after <= base + 20, out  # and went back (the small objects stay: ~1 MiB)
