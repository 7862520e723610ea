"""Build real OCI content for tests: random gzip layers, configs, manifests, image layouts."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(media_type: str, data: bytes, **extra) -> dict:
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data), **extra}


def random_layer(size: int, seed: int = 0) -> bytes:
    """A gzip tarball holding one file of `size` random bytes (random, so never deduplicated)."""
    payload = os.urandom(size)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo(f"file-{seed}-{size}.bin")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return gzip.compress(raw.getvalue(), mtime=0)


@dataclass
class Image:
    config: bytes
    layers: list[bytes]
    manifest: bytes

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    def blobs(self) -> list[bytes]:
        return [self.config, *self.layers]


def make_image(layer_sizes: list[int], arch: str = "amd64", subject: dict | None = None,
               artifact_type: str | None = None) -> Image:
    layers = [random_layer(s) for s in layer_sizes]
    config = json.dumps({
        "architecture": arch, "os": "linux",
        "rootfs": {"type": "layers",
                   "diff_ids": [sha256(gzip.decompress(layer)) for layer in layers]},
        "config": {},
    }).encode()
    manifest: dict = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER_GZIP, layer) for layer in layers],
    }
    if subject is not None:
        manifest["subject"] = subject
    if artifact_type is not None:
        manifest["artifactType"] = artifact_type
    return Image(config, layers, json.dumps(manifest).encode())


def make_index(images: list[Image], platforms: list[str]) -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [
            descriptor(OCI_MANIFEST, img.manifest,
                       platform={"architecture": arch, "os": "linux"})
            for img, arch in zip(images, platforms)
        ],
    }).encode()


def write_layout(path: Path, blobs: list[bytes], top: bytes, top_media_type: str,
                 tag: str) -> None:
    """An OCI image layout (what `skopeo copy oci:PATH:TAG` reads)."""
    blob_dir = path / "blobs" / "sha256"
    blob_dir.mkdir(parents=True, exist_ok=True)
    for data in [*blobs, top]:
        (blob_dir / sha256(data).removeprefix("sha256:")).write_bytes(data)
    (path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (path / "index.json").write_text(json.dumps({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [descriptor(top_media_type, top,
                                 annotations={"org.opencontainers.image.ref.name": tag})],
    }))
