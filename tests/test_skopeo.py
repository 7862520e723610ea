"""Real skopeo copies images into the registry and back out; digests must survive both hops."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from connreg.testing.oci import OCI_INDEX, OCI_MANIFEST, make_image, make_index, sha256, write_layout

pytestmark = pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")


def skopeo(*args: str) -> str:
    proc = subprocess.run(["skopeo", "--insecure-policy", *args], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def layout_top_digest(path: Path) -> str:
    return json.loads((path / "index.json").read_text())["manifests"][0]["digest"]


def test_image_round_trip(node, tmp_path):
    image = make_image([300_000, 2_000_000, 50_000])
    src = tmp_path / "src"
    write_layout(src, image.blobs(), image.manifest, OCI_MANIFEST, "v1")

    skopeo("copy", "--dest-tls-verify=false", f"oci:{src}:v1", f"docker://{node.host}/team/app:v1")
    out = tmp_path / "out"
    skopeo("copy", "--src-tls-verify=false", f"docker://{node.host}/team/app:v1", f"oci:{out}:v1")

    assert layout_top_digest(out) == image.digest
    for blob in image.blobs():
        assert (out / "blobs" / "sha256" / sha256(blob).split(":")[1]).read_bytes() == blob
    inspect = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{node.host}/team/app:v1"))
    assert inspect["Digest"] == image.digest
    tags = json.loads(skopeo("list-tags", "--tls-verify=false", f"docker://{node.host}/team/app"))
    assert tags["Tags"] == ["v1"]


def test_multi_platform_index_round_trip(node, tmp_path):
    images = [make_image([100_000, 20_000], arch=a) for a in ("amd64", "arm64")]
    index = make_index(images, ["amd64", "arm64"])
    src = tmp_path / "src"
    blobs = [b for img in images for b in img.blobs()] + [img.manifest for img in images]
    write_layout(src, blobs, index, OCI_INDEX, "multi")

    skopeo("copy", "--all", "--dest-tls-verify=false", f"oci:{src}:multi",
           f"docker://{node.host}/team/multi:latest")
    out = tmp_path / "out"
    skopeo("copy", "--all", "--src-tls-verify=false", f"docker://{node.host}/team/multi:latest",
           f"oci:{out}:multi")

    assert layout_top_digest(out) == sha256(index)
    for img in images:
        assert (out / "blobs" / "sha256" / img.digest.split(":")[1]).read_bytes() == img.manifest
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{node.host}/team/multi:latest")
    assert sha256(raw.encode()) == sha256(index)


def test_copy_between_repositories_mounts_blobs(node, tmp_path):
    image = make_image([400_000])
    src = tmp_path / "src"
    write_layout(src, image.blobs(), image.manifest, OCI_MANIFEST, "v1")
    skopeo("copy", "--dest-tls-verify=false", f"oci:{src}:v1", f"docker://{node.host}/a/one:v1")
    skopeo("copy", "--src-tls-verify=false", "--dest-tls-verify=false",
           f"docker://{node.host}/a/one:v1", f"docker://{node.host}/b/two:v1")
    inspect = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{node.host}/b/two:v1"))
    assert inspect["Digest"] == image.digest
