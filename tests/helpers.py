"""Plain-HTTP helpers for tests: push blobs and manifests the way a client would."""

from __future__ import annotations

import httpx

from connreg.testing.oci import OCI_MANIFEST, Image, sha256


def push_blob(client: httpx.Client, repo: str, data: bytes) -> str:
    digest = sha256(data)
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=data,
                    headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    return digest


def push_image(client: httpx.Client, repo: str, image: Image, ref: str) -> httpx.Response:
    for blob in image.blobs():
        push_blob(client, repo, blob)
    r = client.put(f"/v2/{repo}/manifests/{ref}", content=image.manifest,
                   headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 201, r.text
    return r


def error_codes(r: httpx.Response) -> list[str]:
    return [e["code"] for e in r.json()["errors"]]
