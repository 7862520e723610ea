"""The container image, built by image/build.sh (`make image`) and run with podman.

The image is built once per set of inputs (Dockerfile, image/, the Rust and Python sources) into a
podman store under build/image-test/ and kept there: a second run with the same sources reuses
it. A cold build (clean clone, after `make build`) took 53-139 s here, following the machine's load
(bench/RESULTS.md, "Container image").
The Debian image pushed through the registry is the image's own base: Debian bookworm packages
unpacked by image/rootfs.sh, a real multi-megabyte image that needs no container registry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path

import httpx
import pytest

from connreg.testing import free_port
from connreg.testing.hierarchy import wait_for
from connreg.testing.tls import CertificateAuthority

ROOT = Path(__file__).resolve().parent.parent
STORE = ROOT / "build" / "image-test" / "storage"
# podman refuses a runroot path longer than 50 characters; one per checkout.
RUNROOT = f"/run/connreg-img-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:8]}"
PODMAN = ["podman", "--storage-driver", "vfs", "--root", str(STORE), "--runroot", RUNROOT]
# What `podman run` needs in this sandbox: limits within the sandbox's own (else setrlimit
# fails), and runc (crun cannot start containers here).
RUN_FLAGS = ["--runtime", "runc", "--network", "host",
             "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
INPUTS = ["Dockerfile", ".dockerignore", "image", "pyproject.toml", "Cargo.toml", "Cargo.lock",
          "rust", "python/connreg"]
TEST_REPO, BASE_REPO = "localhost/connreg-test", "localhost/connreg-base"
ADMIN_PASSWORD = "container-test-password"
UID = "10001"

pytestmark = [
    pytest.mark.skipif(shutil.which("podman") is None, reason="podman not installed"),
    pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the image is built and run with rootful podman"),
]


def run(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{' '.join(args)}: {proc.stderr[-3000:]}"
    return proc


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    return run(*PODMAN, *args, timeout=timeout, check=check)


def inputs_key() -> str:
    """A hash of every file the image is built from (what a rebuild would change)."""
    digest = hashlib.sha256()
    for name in INPUTS:
        path = ROOT / name
        files = [path] if path.is_file() else sorted(
            p for p in path.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".so", ".pyc"))
        for f in files:
            digest.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@pytest.fixture(scope="module")
def image() -> dict[str, str]:
    """The image for the current sources (built now, or kept from an earlier run) and its base."""
    STORE.mkdir(parents=True, exist_ok=True)
    tag = f"{TEST_REPO}:{inputs_key()}"
    # image/build.sh's name for the base: it is rebuilt when rootfs.sh changes.
    rootfs_key = hashlib.sha256((ROOT / "image" / "rootfs.sh").read_bytes()).hexdigest()[:12]
    base = f"{BASE_REPO}:bookworm-amd64-{rootfs_key}"
    if podman("image", "exists", tag, check=False).returncode != 0:
        started = time.monotonic()
        env = dict(os.environ, TAG=tag, PYTHON=sys.executable, PODMAN=" ".join(PODMAN))
        proc = subprocess.run([str(ROOT / "image" / "build.sh")], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        print(f"image built in {time.monotonic() - started:.0f} s: {proc.stdout.strip()}")
        # Only the current image is kept: older test images would fill the disk (vfs stores
        # every layer whole).
        listed = podman("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
        for old in listed:
            if old.split(":")[0] in (TEST_REPO, BASE_REPO) and old not in (tag, base):
                podman("rmi", "--force", old, check=False)
        podman("image", "prune", "--force", check=False)
    return {"tag": tag, "base": base}


class Container:
    """One `podman run -d` of the image with a name, a data volume and settings."""

    def __init__(self, image: str, volume: str, env: dict[str, str], mounts: list[str] = ()):
        self.name = f"connreg-test-{uuid.uuid4().hex[:10]}"
        args = [*RUN_FLAGS, "--detach", "--name", self.name, "--volume", f"{volume}:/var/lib/connreg"]
        for key, value in env.items():
            args += ["--env", f"{key}={value}"]
        for mount in mounts:
            args += ["--volume", mount]
        podman("run", *args, image)

    def exec(self, *command: str) -> str:
        return podman("exec", self.name, *command).stdout

    def state(self) -> dict:
        return json.loads(podman("inspect", self.name).stdout)[0]["State"]

    def logs(self) -> str:
        proc = podman("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def remove(self) -> None:
        podman("rm", "--force", "--time", "0", self.name, check=False)


@pytest.fixture
def volume():
    name = f"connreg-test-{uuid.uuid4().hex[:10]}"
    podman("volume", "create", name)
    yield name
    podman("volume", "rm", "--force", name, check=False)


@pytest.fixture
def containers():
    started: list[Container] = []
    yield started
    for c in started:
        c.remove()


def wait_healthy(url: str, container: Container, verify=True) -> None:
    def answers() -> bool:
        assert container.state()["Running"], f"the container stopped:\n{container.logs()}"
        try:
            return httpx.get(f"{url}/healthz", timeout=2, verify=verify).status_code == 200
        except httpx.HTTPError:
            return False
    wait_for(answers, timeout=60, message=f"{url}/healthz")


def skopeo(*args: str) -> str:
    return run("skopeo", "--insecure-policy", *args, timeout=300).stdout


def test_image_metadata(image):
    config = json.loads(podman("inspect", image["tag"]).stdout)[0]
    cfg = config["Config"]
    assert cfg["User"] == f"{UID}:{UID}"
    assert cfg["Entrypoint"] == ["connreg"] and cfg["Cmd"] == ["serve"]
    assert "5000/tcp" in cfg["ExposedPorts"] and "/var/lib/connreg" in cfg["Volumes"]
    assert "CONNREG_DATA_DIR=/var/lib/connreg" in cfg["Env"]
    assert config["Healthcheck"]["Test"] == ["CMD", "python3", "-m", "connreg.healthcheck"]
    labels = cfg["Labels"]
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert labels["org.opencontainers.image.version"] == version
    revision = labels["org.opencontainers.image.revision"]
    if (ROOT / ".git").exists():
        head = run("git", "-C", str(ROOT), "rev-parse", "HEAD").stdout.strip()
        assert revision.startswith(head), (revision, head)
    assert labels["org.opencontainers.image.source"]
    assert config["Architecture"] == "amd64" and config["Os"] == "linux"


def test_push_pull_restart_keeps_data_runs_unprivileged_stops_on_sigterm(
        image, volume, containers, tmp_path):
    port = free_port()
    env = {"CONNREG_LISTEN": f"127.0.0.1:{port}", "CONNREG_ADMIN_PASSWORD": ADMIN_PASSWORD}
    first = Container(image["tag"], volume, env)
    containers.append(first)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, first)
    podman("healthcheck", "run", first.name)  # the image's HEALTHCHECK command answers 0

    # Runs as the image's user, not root: PID 1 (connreg itself) and anything exec'd.
    status = first.exec("python3", "-c", "print(open('/proc/1/status').read())")
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1:] == [UID] * 4, uid_line
    assert "connreg" in first.exec("python3", "-c", "print(open('/proc/1/cmdline').read())")

    # A real Debian image (the image's own base) goes in with skopeo and comes back the same.
    creds = f"admin:{ADMIN_PASSWORD}"
    source = f"containers-storage:[vfs@{STORE}+{RUNROOT}]{image['base']}"
    ref = f"127.0.0.1:{port}/debian/bookworm:base"
    digest_file = tmp_path / "digest"
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", creds,
           "--digestfile", str(digest_file), source, f"docker://{ref}")
    pushed = digest_file.read_text().strip()
    out = tmp_path / "pulled"
    skopeo("copy", "--src-tls-verify=false", "--src-creds", creds, f"docker://{ref}",
           f"oci:{out}:base")
    index = json.loads((out / "index.json").read_text())
    assert index["manifests"][0]["digest"] == pushed
    manifest = json.loads((out / "blobs" / "sha256" / pushed.split(":")[1]).read_bytes())
    layer = manifest["layers"][0]
    blob = (out / "blobs" / "sha256" / layer["digest"].split(":")[1]).read_bytes()
    assert len(blob) == layer["size"] > 5_000_000
    assert "sha256:" + hashlib.sha256(blob).hexdigest() == layer["digest"]

    # SIGTERM (what `podman stop` and `docker stop` send): a clean exit, well within 10 s.
    started = time.monotonic()
    podman("kill", "--signal", "TERM", first.name)
    exit_code = podman("wait", first.name, timeout=60).stdout.strip()
    stopped_after = time.monotonic() - started
    assert exit_code == "0", first.logs()
    assert stopped_after < 10, f"stopped after {stopped_after:.1f} s"
    first.remove()

    # A new container on the same volume, now serving HTTPS with mounted certificate files,
    # finds the image there.
    ca = CertificateAuthority(tmp_path / "tls")
    server = ca.issue(hosts=("127.0.0.1",))
    os.chown(server.key_file, int(UID), int(UID))  # the key stays 0600, readable by the node
    env = dict(env, CONNREG_TLS_CERT="/etc/connreg/tls/server.crt",
               CONNREG_TLS_KEY="/etc/connreg/tls/server.key")
    second = Container(image["tag"], volume, env, mounts=[f"{tmp_path / 'tls'}:/etc/connreg/tls:ro"])
    containers.append(second)
    wait_healthy(f"https://127.0.0.1:{port}", second,
                 verify=ssl.create_default_context(cafile=str(ca.ca_file)))
    podman("healthcheck", "run", second.name)  # https now: the check follows the settings
    cert_dir = tmp_path / "certs.d"
    cert_dir.mkdir()
    shutil.copy(ca.ca_file, cert_dir / "ca.crt")
    inspect = json.loads(skopeo("inspect", "--cert-dir", str(cert_dir), "--creds", creds,
                                f"docker://{ref}"))
    assert inspect["Digest"] == pushed
    again = tmp_path / "again"
    skopeo("copy", "--src-cert-dir", str(cert_dir), "--src-creds", creds, f"docker://{ref}",
           f"oci:{again}:base")
    assert (again / "blobs" / "sha256" / layer["digest"].split(":")[1]).read_bytes() == blob

    started = time.monotonic()
    podman("stop", "--time", "10", second.name, timeout=60)
    assert time.monotonic() - started < 10
    assert second.state()["ExitCode"] == 0, second.logs()
