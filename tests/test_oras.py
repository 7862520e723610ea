"""oras-py (a real OCI artifact client from PyPI) pushes and pulls artifacts, also with auth.

oras-py's token backend keeps its first (pull-only) token when a push answers 401
`insufficient_scope` (it asks for a new token only after a 403), so with auth on it is used
with its Basic backend, which connreg accepts on every request.
"""

from __future__ import annotations

import hashlib
import os

import httpx
import oras.client
import pytest

from connreg.testing import start_node

ADMIN_PASSWORD = "oras-test-admin-password-0123456789"


@pytest.fixture
def secured(tmp_path):
    n = start_node(tmp_path / "node", admin_password=ADMIN_PASSWORD)
    yield n
    n.stop()


def roundtrip(client: oras.client.OrasClient, host: str, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # oras-py wants artifact paths relative to the working directory
    files = {"model.bin": os.urandom(300_000), "README.txt": b"an artifact\n"}
    for name, data in files.items():
        (work / name).write_bytes(data)
    client.push(target=f"{host}/ml/model:v1", files=list(files),
                manifest_annotations={"org.example.kind": "model"})
    out = tmp_path / "out"
    pulled = client.pull(target=f"{host}/ml/model:v1", outdir=str(out))
    assert sorted(os.path.basename(p) for p in pulled) == sorted(files)
    for name, data in files.items():
        assert hashlib.sha256((out / name).read_bytes()).digest() == hashlib.sha256(data).digest()


def test_oras_push_and_pull_open_registry(node, tmp_path, monkeypatch):
    client = oras.client.OrasClient(hostname=node.host, insecure=True)
    roundtrip(client, node.host, tmp_path, monkeypatch)
    tags = httpx.get(f"{node.url}/v2/ml/model/tags/list").json()["tags"]
    assert tags == ["v1"]


def test_oras_push_and_pull_with_credentials(secured, tmp_path, monkeypatch):
    client = oras.client.OrasClient(hostname=secured.host, insecure=True, auth_backend="basic")
    # set_basic_auth, not login(): login() writes ~/.docker/config.json on the test machine.
    client.auth.set_basic_auth("admin", ADMIN_PASSWORD)
    roundtrip(client, secured.host, tmp_path, monkeypatch)
    r = httpx.get(f"{secured.url}/v2/ml/model/manifests/v1")
    assert r.status_code == 401 and "Bearer realm=" in r.headers["WWW-Authenticate"]
