"""Registry auth against real nodes with auth on: challenges, the token endpoint, skopeo with
credentials, token status and expiry, rotation, rate limiting, anonymous pull, no secrets in logs.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time

import httpx
import jwt
import pytest

from connreg.testing import Node, start_node
from connreg.testing.oci import OCI_MANIFEST, make_image, write_layout
from helpers import error_codes, push_blob, push_image

ADMIN_PASSWORD = "auth-test-admin-Pa55word-0123456789"
needs_skopeo = pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Node:
    # Many tests here fail logins on purpose; the rate limit has its own test and node.
    n = start_node(tmp_path_factory.mktemp("auth") / "root", admin_password=ADMIN_PASSWORD,
                   env={"CONNREG_AUTH_FAILURE_LIMIT": "1000"})
    yield n
    n.stop()


@pytest.fixture(scope="module")
def admin(root):
    with httpx.Client(base_url=f"{root.url}/connreg/v1", auth=root.admin, timeout=30) as c:
        yield c


# Every secret a test saw; the last test greps the node's log for them.
SEEN_SECRETS: list[str] = [ADMIN_PASSWORD]


def make_token(admin: httpx.Client, name: str, actions: list[str], **extra) -> list[str]:
    r = admin.post("/tokens", json={"name": name, "actions": actions, **extra})
    assert r.status_code == 201, r.text
    passwords = [p["value"] for p in r.json()["passwords"]]
    SEEN_SECRETS.extend(passwords)
    return passwords


def rw(repo: str) -> list[str]:
    return [f"repositories/{repo}/{v}" for v in
            ("content/read", "content/write", "content/delete", "metadata/read", "metadata/write")]


def ro(repo: str) -> list[str]:
    return [f"repositories/{repo}/content/read", f"repositories/{repo}/metadata/read"]


def bearer(root: Node, creds: tuple[str, str], *scopes: str) -> dict:
    r = httpx.get(f"{root.url}/oauth2/token", auth=creds,
                  params={"service": "connreg", "scope": list(scopes)})
    assert r.status_code == 200, r.text
    return r.json()


def test_challenges_and_basic_auth(root):
    r = httpx.get(f"{root.url}/v2/")
    assert r.status_code == 401 and error_codes(r) == ["UNAUTHORIZED"]
    assert r.headers["WWW-Authenticate"] == (
        f'Bearer realm="{root.url}/oauth2/token",service="connreg"')
    r = httpx.get(f"{root.url}/v2/team/app/manifests/v1")
    assert r.status_code == 401
    assert 'scope="repository:team/app:pull"' in r.headers["WWW-Authenticate"]
    r = httpx.put(f"{root.url}/v2/team/app/manifests/v1", content=b"{}")
    assert 'scope="repository:team/app:pull,push"' in r.headers["WWW-Authenticate"]
    r = httpx.get(f"{root.url}/v2/_catalog")
    assert 'scope="registry:catalog:*"' in r.headers["WWW-Authenticate"]
    assert httpx.get(f"{root.url}/v2/", auth=root.admin).status_code == 200
    r = httpx.get(f"{root.url}/v2/", auth=("admin", "wrong-password"))
    assert r.status_code == 401 and error_codes(r) == ["UNAUTHORIZED"]
    r = httpx.get(f"{root.url}/v2/", headers={"Authorization": "Bearer not-a-jwt"})
    assert r.status_code == 401
    # Basic auth works on every registry endpoint: the admin pushes and pulls.
    with httpx.Client(base_url=root.url, auth=root.admin, timeout=30) as c:
        image = make_image([1000])
        push_image(c, "basic/app", image, "v1")
        assert c.get("/v2/basic/app/manifests/v1",
                      headers={"Accept": OCI_MANIFEST}).content == image.manifest


def test_token_endpoint_grants_the_intersection(root, admin):
    [pw, _] = make_token(admin, "team-writer", rw("team/app") + ro("team/*"))
    creds = ("team-writer", pw)
    doc = bearer(root, creds, "repository:team/app:pull,push,delete",
                 "repository:team/other:pull,push", "repository:elsewhere/x:pull")
    assert set(doc) >= {"token", "access_token", "expires_in", "issued_at"}
    assert doc["token"] == doc["access_token"] and 0 < doc["expires_in"] <= 300
    claims = jwt.decode(doc["token"], options={"verify_signature": False})
    assert jwt.get_unverified_header(doc["token"])["alg"] == "EdDSA"
    access = {a["name"]: a["actions"] for a in claims["access"]}
    assert access == {"team/app": ["delete", "pull", "push"], "team/other": ["pull"]}
    # Space-separated scopes in one parameter, and `*`, are understood too.
    doc = bearer(root, creds, "repository:team/app:* repository:team/x:push")
    access = {a["name"]: a["actions"] for a in jwt.decode(
        doc["token"], options={"verify_signature": False})["access"]}
    assert access == {"team/app": ["delete", "pull", "push"]}
    # POST form flow with a refresh token (docker, oras), then the refresh grant.
    r = httpx.post(f"{root.url}/oauth2/token", data={
        "grant_type": "password", "username": "team-writer", "password": pw,
        "service": "connreg", "scope": "repository:team/app:pull", "access_type": "offline",
        "client_id": "test"})
    assert r.status_code == 200, r.text
    refresh = r.json()["refresh_token"]
    r = httpx.post(f"{root.url}/oauth2/token", data={
        "grant_type": "refresh_token", "refresh_token": refresh, "service": "connreg",
        "scope": "repository:team/app:pull,push"})
    assert r.status_code == 200 and "push" in r.json()["scope"]
    r = httpx.post(f"{root.url}/oauth2/token", data={
        "grant_type": "refresh_token", "refresh_token": refresh[:-4] + "AAAA"})
    assert r.status_code == 401
    # Without credentials (and no anonymous pull) there is no token at all.
    assert httpx.get(f"{root.url}/oauth2/token",
                     params={"scope": "repository:team/app:pull"}).status_code == 401
    # A forged token (signed with another key) is refused.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    forged = jwt.encode({**jwt.decode(doc["token"], options={"verify_signature": False})},
                        Ed25519PrivateKey.generate(), algorithm="EdDSA")
    r = httpx.get(f"{root.url}/v2/team/app/tags/list",
                  headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401


def test_bearer_scope_enforced_per_request(root, admin):
    [pw, _] = make_token(admin, "bearer-user", rw("bear/app") + ro("bear/ro"))
    with httpx.Client(base_url=root.url, auth=root.admin, timeout=30) as c:
        push_image(c, "bear/ro", make_image([100]), "v1")
    token = bearer(root, ("bearer-user", pw), "repository:bear/app:pull,push",
                   "repository:bear/ro:pull")["token"]
    with httpx.Client(base_url=root.url, headers={"Authorization": f"Bearer {token}"},
                      timeout=30) as c:
        push_image(c, "bear/app", make_image([2000]), "v1")
        assert c.get("/v2/bear/ro/tags/list").json()["tags"] == ["v1"]
        # Not permitted at all → 403 DENIED.
        r = c.post("/v2/bear/ro/blobs/uploads/")
        assert r.status_code == 403 and error_codes(r) == ["DENIED"]
        r = c.get("/v2/basic/app/tags/list")
        assert r.status_code == 403
        # Permitted to the user but not in this token → 401 insufficient_scope (fetch a wider one).
        r = c.delete(f"/v2/bear/app/manifests/{make_image([2000]).digest}")
        assert r.status_code == 401
        assert 'error="insufficient_scope"' in r.headers["WWW-Authenticate"]
        # The catalog shows only what the caller may pull.
        token_cat = bearer(root, ("bearer-user", pw), "registry:catalog:*")["token"]
        r = httpx.get(f"{root.url}/v2/_catalog", headers={"Authorization": f"Bearer {token_cat}"})
        assert r.json()["repositories"] == ["bear/app", "bear/ro"]
    r = httpx.get(f"{root.url}/v2/_catalog", auth=("bearer-user", pw))
    assert r.json()["repositories"] == ["bear/app", "bear/ro"]
    assert "basic/app" in httpx.get(f"{root.url}/v2/_catalog", auth=root.admin).json()[
        "repositories"]


def test_mount_needs_pull_on_the_source(root, admin):
    [pw, _] = make_token(admin, "mounter", rw("mnt/dst"))
    data = b"secret layer of another team"
    with httpx.Client(base_url=root.url, auth=root.admin, timeout=30) as c:
        digest = push_blob(c, "mnt/secret", data)
    with httpx.Client(base_url=root.url, auth=("mounter", pw), timeout=30) as c:
        for params in ({"mount": digest, "from": "mnt/secret"}, {"mount": digest}):
            r = c.post("/v2/mnt/dst/blobs/uploads/", params=params)
            assert r.status_code == 202, r.text  # a normal upload session, no mount
            assert c.head(f"/v2/mnt/dst/blobs/{digest}").status_code == 404
    # The admin may read the source, so its mount happens.
    r = httpx.post(f"{root.url}/v2/mnt/dst/blobs/uploads/", auth=root.admin,
                   params={"mount": digest, "from": "mnt/secret"})
    assert r.status_code == 201


def skopeo(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["skopeo", "--insecure-policy", *args], capture_output=True, text=True,
                          timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@needs_skopeo
def test_skopeo_with_credentials_and_bearer_flow(root, admin, tmp_path):
    [wpw, _] = make_token(admin, "sko-writer", rw("sko/app"))
    [rpw, _] = make_token(admin, "sko-reader", ro("sko/app"))
    image = make_image([200_000, 30_000])
    src = tmp_path / "src"
    write_layout(src, image.blobs(), image.manifest, OCI_MANIFEST, "v1")
    dest = f"docker://{root.host}/sko/app:v1"
    # Push allowed by scope.
    skopeo("copy", "--dest-tls-verify=false", f"--dest-creds=sko-writer:{wpw}", f"oci:{src}:v1",
           dest)
    # Push outside the scope: refused.
    bad = skopeo("copy", "--dest-tls-verify=false", f"--dest-creds=sko-writer:{wpw}",
                 f"oci:{src}:v1", f"docker://{root.host}/other/app:v1", check=False)
    assert bad.returncode != 0
    # A reader can pull, but not push.
    out = tmp_path / "out"
    skopeo("copy", "--src-tls-verify=false", f"--src-creds=sko-reader:{rpw}", dest, f"oci:{out}:v1")
    assert json.loads((out / "index.json").read_text())["manifests"][0]["digest"] == image.digest
    bad = skopeo("copy", "--dest-tls-verify=false", f"--dest-creds=sko-reader:{rpw}",
                 f"oci:{src}:v1", f"docker://{root.host}/sko/app:v2", check=False)
    assert bad.returncode != 0
    # Pull of another repository: denied; no credentials: denied; wrong password: denied.
    for creds in ([f"--creds=sko-reader:{rpw}"], [], ["--creds=sko-reader:wrong"]):
        bad = skopeo("inspect", "--tls-verify=false", *creds,
                     f"docker://{root.host}/basic/app:v1", check=False)
        assert bad.returncode != 0
    tags = json.loads(skopeo("list-tags", "--tls-verify=false", f"--creds=sko-reader:{rpw}",
                             f"docker://{root.host}/sko/app").stdout)
    assert tags["Tags"] == ["v1"]


def test_disabled_token_and_stale_bearer_are_refused(root, admin):
    [pw, _] = make_token(admin, "to-disable", ro("dis/app"))
    token = bearer(root, ("to-disable", pw), "repository:dis/app:pull")["token"]
    auth = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{root.url}/v2/", headers=auth).status_code == 200
    assert admin.patch("/tokens/to-disable", json={"status": "disabled"}).status_code == 200
    assert httpx.get(f"{root.url}/v2/", auth=("to-disable", pw)).status_code == 401
    assert httpx.get(f"{root.url}/oauth2/token", auth=("to-disable", pw)).status_code == 401
    # A token issued before the change stops working at once.
    assert httpx.get(f"{root.url}/v2/", headers=auth).status_code == 401
    assert admin.patch("/tokens/to-disable", json={"status": "enabled"}).status_code == 200
    assert httpx.get(f"{root.url}/v2/", auth=("to-disable", pw)).status_code == 200
    # A disabled token created as such never signs in.
    [pw2, _] = make_token(admin, "born-disabled", ro("dis/app"), status="disabled")
    assert httpx.get(f"{root.url}/v2/", auth=("born-disabled", pw2)).status_code == 401


def test_expired_passwords_and_rotation(root, admin):
    [pw1, pw2] = make_token(admin, "rotating", ro("rot/app"))
    for pw in (pw1, pw2):
        assert httpx.get(f"{root.url}/v2/", auth=("rotating", pw)).status_code == 200
    # Rotate password1: the old one stops, password2 keeps working, the new one works.
    r = admin.post("/tokens/rotating/credentials", json={"passwordName": "password1"})
    assert r.status_code == 200
    [new1] = [p["value"] for p in r.json()["passwords"]]
    SEEN_SECRETS.append(new1)
    assert [p["name"] for p in r.json()["passwords"]] == ["password1"]
    assert httpx.get(f"{root.url}/v2/", auth=("rotating", pw1)).status_code == 401
    assert httpx.get(f"{root.url}/v2/", auth=("rotating", pw2)).status_code == 200
    assert httpx.get(f"{root.url}/v2/", auth=("rotating", new1)).status_code == 200
    # Passwords are never shown again.
    shown = admin.get("/tokens/rotating").json()
    assert "passwords" not in shown and new1 not in json.dumps(shown)
    assert all("hash" not in c for c in shown["credentials"])
    # An expiring password: valid until its expiry, refused afterwards.
    r = admin.post("/tokens/rotating/credentials", json={"passwordName": "password2",
                                                         "expiry": "PT2S"})
    [short] = [p["value"] for p in r.json()["passwords"]]
    SEEN_SECRETS.append(short)
    assert httpx.get(f"{root.url}/v2/", auth=("rotating", short)).status_code == 200
    time.sleep(3.5)
    assert httpx.get(f"{root.url}/v2/", auth=("rotating", short)).status_code == 401
    # A token whose every password has expired cannot get registry tokens either.
    [exp1, exp2] = make_token(admin, "short-lived", ro("rot/app"), expiry="PT2S")
    SEEN_SECRETS.extend([exp1, exp2])
    time.sleep(2.5)
    assert httpx.get(f"{root.url}/oauth2/token", auth=("short-lived", exp1)).status_code == 401
    r = admin.post("/tokens", json={"name": "past-expiry", "actions": ro("x"),
                                    "expiry": "2001-01-01T00:00:00Z"})
    assert r.status_code == 400 and error_codes(r) == ["INVALID"]


def test_failed_logins_are_rate_limited(tmp_path):
    node = start_node(tmp_path / "limited", admin_password="limit-admin-pw-123456")
    try:
        for _ in range(10):
            r = httpx.get(f"{node.url}/v2/", auth=("admin", "nope"))
            assert r.status_code == 401
        r = httpx.get(f"{node.url}/v2/", auth=("admin", "nope"))
        assert r.status_code == 429 and error_codes(r) == ["TOOMANYREQUESTS"]
        assert int(r.headers["Retry-After"]) > 0
        # While limited, even the right password waits (guessing must not continue).
        r = httpx.get(f"{node.url}/oauth2/token", auth=node.admin)
        assert r.status_code == 429
    finally:
        node.stop()


def test_anonymous_pull_is_opt_in(tmp_path):
    node = start_node(tmp_path / "anon", args=["--anonymous-pull"],
                      admin_password="anon-admin-pw-123456")
    try:
        with httpx.Client(base_url=node.url, auth=node.admin, timeout=30) as c:
            image = make_image([500])
            push_image(c, "pub/app", image, "v1")
        assert httpx.get(f"{node.url}/v2/pub/app/manifests/v1").status_code == 200
        assert httpx.get(f"{node.url}/v2/_catalog").json()["repositories"] == ["pub/app"]
        # /v2/ still challenges, so clients fetch a token; the anonymous token can pull only.
        assert httpx.get(f"{node.url}/v2/").status_code == 401
        doc = httpx.get(f"{node.url}/oauth2/token",
                        params={"scope": "repository:pub/app:pull,push"}).json()
        assert doc["scope"] == "repository:pub/app:pull"
        r = httpx.post(f"{node.url}/v2/pub/app/blobs/uploads/")
        assert r.status_code == 401
        r = httpx.delete(f"{node.url}/v2/pub/app/manifests/{image.digest}")
        assert r.status_code == 401
    finally:
        node.stop()


def test_admin_password_generated_once(tmp_path):
    node = start_node(tmp_path / "gen")
    try:
        path = node.data_dir / "admin-password"
        assert path.stat().st_mode & 0o777 == 0o600
        first = node.admin_password
        assert len(first) >= 32
        assert httpx.get(f"{node.url}/v2/", auth=node.admin).status_code == 200
        node.restart()
        assert node.admin_password == first
        assert httpx.get(f"{node.url}/v2/", auth=("admin", first)).status_code == 200
        assert first not in node.log()
        key = node.data_dir / "auth" / "token-signing-key.pem"
        assert key.stat().st_mode & 0o777 == 0o600
    finally:
        node.stop()


def test_no_secret_in_logs(root, admin):
    # Failed logins are logged by name, never with the password tried.
    httpx.get(f"{root.url}/v2/", auth=("team-writer", "tried-password-XYZ"))
    r = admin.post("/connected-registries", json={"name": "logcheck", "repositories": ["a/b"]})
    assert r.status_code == 201
    r = admin.post("/connected-registries/logcheck/settings", json={"parentProtocol": "http"})
    SEEN_SECRETS.append(r.json()["syncTokenPassword"])
    log = root.log()
    assert "failed login for 'team-writer'" in log
    for secret in SEEN_SECRETS + ["tried-password-XYZ"]:
        assert secret not in log
        assert base64.b64encode(secret.encode()).decode() not in log
    # Stored hashes only: no password appears in the data dir's databases either.
    raw = b"".join(p.read_bytes() for p in root.data_dir.glob("control.sqlite*"))
    for secret in SEEN_SECRETS:
        assert secret.encode() not in raw
    assert b"scrypt$" in raw


def test_generated_passwords_are_safe_to_pass_as_arguments():
    # CI once generated a token password starting with '-', which `connreg login -p <pw>`
    # (like any argparse CLI) reads as an option. Generated passwords use letters and digits.
    from connreg.auth.passwords import generate_password, hash_password, verify_password
    passwords = [generate_password() for _ in range(2000)]
    assert len(set(passwords)) == len(passwords)
    for password in passwords:
        assert len(password) == 43 and password.isascii() and password.isalnum()
    assert verify_password(passwords[0], hash_password(passwords[0]))


def test_manifest_reads_agree_on_both_paths(root, admin):
    """Plain manifest reads with a Bearer token are answered before Quart (api/fast_reads.py);
    Basic, missing or insufficient credentials go through the app. Same answers either way."""
    image = make_image([321])
    with httpx.Client(base_url=root.url, auth=root.admin, timeout=30) as c:
        push_image(c, "fast/app", image, "v1")
        push_image(c, "fast/other", make_image([322]), "v1")
    [pw, _] = make_token(admin, "fast-reader", ro("fast/app"))
    token = bearer(root, ("fast-reader", pw), "repository:fast/app:pull",
                   "repository:fast/other:pull")["token"]
    by_bearer = {"Authorization": f"Bearer {token}"}

    def answer(r: httpx.Response):
        headers = {k: v for k, v in r.headers.items() if k != "date"}
        return r.status_code, headers, r.content

    for method in ("GET", "HEAD"):
        for ref in ("v1", image.digest):
            url = f"{root.url}/v2/fast/app/manifests/{ref}"
            fast = httpx.request(method, url, headers=by_bearer)
            via_app = httpx.request(method, url, auth=("fast-reader", pw))
            assert fast.status_code == 200 and answer(fast) == answer(via_app)
            assert fast.headers["Docker-Content-Digest"] == image.digest
            assert fast.content == (image.manifest if method == "GET" else b"")
    # what the fast layer declines, the app answers as before
    r = httpx.get(f"{root.url}/v2/fast/other/manifests/v1", headers=by_bearer)
    assert r.status_code == 403 and error_codes(r) == ["DENIED"]  # token narrowed by the map
    r = httpx.get(f"{root.url}/v2/fast/app/manifests/v1")
    assert r.status_code == 401 and "WWW-Authenticate" in r.headers
    r = httpx.get(f"{root.url}/v2/fast/app/manifests/v1", headers={"Authorization": "Bearer x.y.z"})
    assert r.status_code == 401 and error_codes(r) == ["UNAUTHORIZED"]
    r = httpx.get(f"{root.url}/v2/fast/app/manifests/v9", headers=by_bearer)
    assert r.status_code == 404 and error_codes(r) == ["MANIFEST_UNKNOWN"]
    r = httpx.get(f"{root.url}/v2/fast/app/manifests/sha256:abc", headers=by_bearer)
    assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"]
