"""OCI Distribution Spec v1.1 conformance, re-expressed as pytest.

Every test below corresponds to one spec of the official Go/Ginkgo conformance suite
(opencontainers/distribution-spec, ``conformance/``, tag v1.1.1), in the same order, with the same
status-code / header / body expectations and the same tolerated alternatives.  The Go suite runs
its specs in declaration order against ONE registry and ONE repository and passes state from spec
to spec (upload locations, tag lists, ...); this module does the same: all tests share the
module-scoped ``reg`` client (one node) and the module-level ``S`` state object, so run the module
as a whole and in file order (pytest's default).  See tests/CONFORMANCE.md for the spec -> test
mapping and the configuration knobs.

The whole suite runs three times (``reg`` is parametrized): ``no-auth`` against an open node;
``token-auth`` against a node with auth on, where the client follows the Bearer challenge of
every request the way the suite's client (reggie) does, with the admin's credentials; and
``scoped-token-auth``, the same with a token limited to ``myorg/*`` (automatic cross-mount off).

Configuration (environment, same names and meaning as the Go suite; defaults in brackets):
  OCI_NAMESPACE                    repository under test            [myorg/myrepo]
  OCI_CROSSMOUNT_NAMESPACE         destination repo for mounts      [myorg/other]
  OCI_AUTOMATIC_CROSSMOUNT         set => run the "mount without from" spec; its truth value
                                   picks the 201 (enabled) or 202 (disabled) variant;
                                   "unset" = behave as if the variable were absent      [1]
  OCI_DELETE_MANIFEST_BEFORE_BLOBS teardown deletes manifests before blobs             [1]
  OCI_TEST_PULL / OCI_TEST_PUSH / OCI_TEST_CONTENT_DISCOVERY / OCI_TEST_CONTENT_MANAGEMENT
                                   enable a workflow                                    [1 each]
  OCI_AUTH_SCOPE                   token-auth: scope asked for instead of the challenged one
  OCI_DEBUG                        print every request/response (run pytest with -s)   [0]
  CONFORMANCE_SEED                 seed for the pseudo-random test blobs  [random per run]
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import secrets
import warnings
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import pytest

from connreg.testing import start_node

# --------------------------------------------------------------------------------------------
# configuration (mirrors the suite's environment variables)
# --------------------------------------------------------------------------------------------


def _parse_bool(value: str | None) -> bool:
    """Go's strconv.ParseBool; anything unparsable counts as false (the suite ignores the error)."""
    return (value or "") in ("1", "t", "T", "TRUE", "true", "True")


def _env_bool(name: str, default: str) -> bool:
    return _parse_bool(os.environ.get(name, default))


NAMESPACE = os.environ.get("OCI_NAMESPACE", "myorg/myrepo")
CROSSMOUNT_NAMESPACE = os.environ.get("OCI_CROSSMOUNT_NAMESPACE") or "myorg/other"

PULL, PUSH, CONTENT_DISCOVERY, CONTENT_MANAGEMENT = "pull", "push", "discovery", "management"
ENABLED = {
    PULL: _env_bool("OCI_TEST_PULL", "1"),
    PUSH: _env_bool("OCI_TEST_PUSH", "1"),
    CONTENT_DISCOVERY: _env_bool("OCI_TEST_CONTENT_DISCOVERY", "1"),
    CONTENT_MANAGEMENT: _env_bool("OCI_TEST_CONTENT_MANAGEMENT", "1"),
}

# The suite only skips its own setup when the operator points it at pre-existing content
# (OCI_TAG_NAME + OCI_MANIFEST_DIGEST + OCI_BLOB_DIGEST, resp. OCI_TAG_LIST).  We always run
# against a fresh node, so every setup runs.
RUN_PULL_SETUP = True
RUN_PUSH_SETUP = True
RUN_CONTENT_DISCOVERY_SETUP = True
RUN_CONTENT_MANAGEMENT_SETUP = True

DELETE_MANIFEST_BEFORE_BLOBS = _env_bool("OCI_DELETE_MANIFEST_BEFORE_BLOBS", "1")
# The suite runs its "mount without from" spec only when the variable is SET (any value), and
# picks the 201/202 variant by its truth value.  Here it defaults to "1"; the value "unset"
# stands for an absent variable.
_AUTO_MOUNT_RAW = os.environ.get("OCI_AUTOMATIC_CROSSMOUNT", "1")
RUN_AUTOMATIC_CROSSMOUNT_TEST = _AUTO_MOUNT_RAW != "unset"
AUTOMATIC_CROSSMOUNT_ENABLED = _parse_bool(_AUTO_MOUNT_RAW)

DEBUG = _parse_bool(os.environ.get("OCI_DEBUG", "0"))  # print every exchange (use with -s)
AUTH_SCOPE = os.environ.get("OCI_AUTH_SCOPE", "")  # token-auth: overrides the challenged scope
SEED = int(os.environ.get("CONFORMANCE_SEED", str(random.randrange(1, 2**31))))

# --------------------------------------------------------------------------------------------
# media types and the error-code vocabulary of the spec
# --------------------------------------------------------------------------------------------

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_TGZ = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_EMPTY = "application/vnd.oci.empty.v1+json"
OCTET = "application/octet-stream"

ERROR_CODES = {
    "BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN", "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "MANIFEST_UNVERIFIED",
    "NAME_INVALID", "NAME_UNKNOWN", "SIZE_INVALID", "TAG_INVALID", "UNAUTHORIZED", "DENIED",
    "UNSUPPORTED",
}

# --------------------------------------------------------------------------------------------
# test data (same shapes as the suite's generator; serialised like Go's json.MarshalIndent
# with a tab indent, so field order, `null`s and base64 `[]byte`s match what the suite sends)
# --------------------------------------------------------------------------------------------


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def go_json(obj) -> bytes:
    return json.dumps(obj, indent="\t").encode("utf-8")


@dataclass
class Blob:
    content: bytes
    digest: str = ""

    def __post_init__(self):
        if not self.digest:
            self.digest = sha256_digest(self.content)

    @property
    def length(self) -> str:
        return str(len(self.content))


def descriptor(media_type: str, digest: str, size: int, *, annotations: dict | None = None,
               data: bytes | None = None, artifact_type: str | None = None,
               unspecified: bytes | None = None) -> dict:
    """A descriptor with the suite's extra, not-in-the-image-spec field `newUnspecifiedField`.

    That field has no `omitempty` in the suite, so it is `null` whenever unset: registries must
    store and serve manifests carrying unknown fields unchanged.
    """
    d: dict = {"mediaType": media_type, "digest": digest, "size": size}
    if annotations:
        d["annotations"] = annotations
    if data:
        d["data"] = _b64(data)
    if artifact_type:
        d["artifactType"] = artifact_type
    d["newUnspecifiedField"] = _b64(unspecified) if unspecified is not None else None
    return d


def image_manifest(config: dict, layers: list, *, media_type: str | None = MT_MANIFEST,
                   artifact_type: str | None = None, subject: dict | None = None,
                   annotations: dict | None = None) -> dict:
    m: dict = {"schemaVersion": 2}
    if media_type:
        m["mediaType"] = media_type
    if artifact_type:
        m["artifactType"] = artifact_type
    m["config"] = config
    m["layers"] = layers
    if subject:
        m["subject"] = subject
    if annotations:
        m["annotations"] = annotations
    return m


def image_index(manifests: list, *, artifact_type: str | None = None, subject: dict | None = None,
                annotations: dict | None = None) -> dict:
    m: dict = {"schemaVersion": 2, "mediaType": MT_INDEX}
    if artifact_type:
        m["artifactType"] = artifact_type
    m["manifests"] = manifests
    if subject:
        m["subject"] = subject
    if annotations:
        m["annotations"] = annotations
    return m


def _random_author(n: int = 16) -> str:
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-"
    return "".join(secrets.choice(alphabet) for _ in range(n))


def _seeded_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


class Data:
    """Everything the suite generates once at start-up."""

    # the suite keeps one config + one image manifest per workflow bit (1<<4 of them); only
    # indexes 0..4 are used: 0,1 pull; 1 push; 2 discovery; 3 management (and the dangling
    # subject of the referrers test); 4 the referrers subject.
    N_WORKFLOW_SLOTS = 16

    def __init__(self):
        self.configs: list[Blob] = []
        for _ in range(self.N_WORKFLOW_SLOTS):
            cfg = {
                "author": _random_author(),  # unique digest per run
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": []},
            }
            self.configs.append(Blob(go_json(cfg)))

        # a tiny gzipped tarball holding one text file
        self.layer = Blob(base64.b64decode(
            "H4sIAAAAAAAAA+3OQQrCMBCF4a49xXgBSUnaHMCTRBptQRNpp6i3t0UEV7oqIv7fYgbmzeJpHHSjVy0"
            "WZCa1c/MufWVe94N3RWlrZ72x3k/30nhbFWKWLPU0Dhp6keJ8im//PuU/6pZH2WVtYx8b0Sz7LjWSR5VLG6YRBumSzOlGtjkd+qD"
            "jMWiX07Befbs7AAAAAAAAAAAAAAAAAPyzO34MnqoAKAAA"))
        layers = [descriptor(MT_LAYER_TGZ, self.layer.digest, len(self.layer.content))]

        self.manifests: list[Blob] = []
        for cfg in self.configs:
            config_desc = descriptor(MT_CONFIG, cfg.digest, len(cfg.content), data=cfg.content,
                                     unspecified=b"hello world")
            self.manifests.append(Blob(go_json(image_manifest(config_desc, layers))))

        # an image manifest with zero layers (and, like the suite's, no top-level mediaType)
        cfg1 = self.configs[1]
        self.empty_layer_manifest = Blob(go_json(image_manifest(
            descriptor(MT_CONFIG, cfg1.digest, len(cfg1.content), data=cfg1.content,
                       unspecified=b"hello world"),
            [], media_type=None)))

        self.nonexistent_manifest = ".INVALID_MANIFEST_NAME"
        self.invalid_manifest_content = b"blablabla"
        self.dummy_digest = sha256_digest(b"hello world")

        # streamed upload blob, and the chunked-upload blob (rebuilt if the registry announces
        # a larger OCI-Chunk-Min-Length)
        self.blob_a = Blob(_seeded_bytes(42, SEED + 1))
        self.setup_chunked_blob(42)

        # ---- referrers (subject / artifactType) fixtures ----
        self.empty_json = Blob(b"{}")
        empty_desc = descriptor(MT_EMPTY, self.empty_json.digest, 2)
        self.ref_blob_a = Blob(b"NHL Peanut Butter on my NHL bagel")
        self.ref_blob_b = Blob(b"NBA Strawberry Jam on my NBA croissant")
        self.artifact_type_a = "application/vnd.nhl.peanut.butter.bagel"
        self.artifact_type_b = "application/vnd.nba.strawberry.jam.croissant"
        self.artifact_type_index = "application/vnd.food.stand"
        self.annotation_key = "org.opencontainers.conformance.test"
        self.annotation_values: dict[str, str] = {}

        m4, m3 = self.manifests[4], self.manifests[3]
        subject4 = descriptor(MT_MANIFEST, m4.digest, len(m4.content))
        subject3 = descriptor(MT_MANIFEST, m3.digest, len(m3.content))

        def ref_manifest(label, **kw):
            ann = {self.annotation_key: label} if label else None
            blob = Blob(go_json(image_manifest(annotations=ann, **kw)))
            if label:
                self.annotation_values[blob.digest] = label
            return blob

        ra, rb = self.ref_blob_a, self.ref_blob_b
        # artifact type carried by config.mediaType
        self.refs_a_config = ref_manifest(
            "test config a",
            config=descriptor(self.artifact_type_a, ra.digest, len(ra.content)),
            layers=[empty_desc], subject=subject4)
        self.refs_b_config = ref_manifest(
            "test config b",
            config=descriptor(self.artifact_type_b, rb.digest, len(rb.content)),
            layers=[empty_desc], subject=subject4)
        # artifact type carried by artifactType, config is the empty JSON descriptor
        self.refs_a_layer = ref_manifest(
            "test layer a", artifact_type=self.artifact_type_a, config=empty_desc,
            layers=[descriptor(self.artifact_type_a, ra.digest, len(ra.content))],
            subject=subject4)
        self.refs_b_layer = ref_manifest(
            "test layer b", artifact_type=self.artifact_type_b, config=empty_desc,
            layers=[descriptor(self.artifact_type_b, rb.digest, len(rb.content))],
            subject=subject4)
        # like B-layer but pointing at a subject that is never pushed before it (manifests[3])
        self.refs_c_layer = ref_manifest(
            None, artifact_type=self.artifact_type_b, config=empty_desc,
            layers=[descriptor(self.artifact_type_b, rb.digest, len(rb.content))],
            subject=subject3)
        # an index with a subject
        ann = {self.annotation_key: "test index"}
        self.refs_index = Blob(go_json(image_index(
            [descriptor(MT_MANIFEST, self.refs_a_config.digest, len(self.refs_a_config.content)),
             descriptor(MT_MANIFEST, self.refs_a_layer.digest, len(self.refs_a_layer.content))],
            artifact_type=self.artifact_type_index, subject=subject4, annotations=ann)))
        self.annotation_values[self.refs_index.digest] = "test index"

    def setup_chunked_blob(self, size: int) -> None:
        self.blob_b = Blob(_seeded_bytes(size, SEED + 2))
        cut = size // 2 + 1
        self.chunk1 = self.blob_b.content[:cut]
        self.chunk2 = self.blob_b.content[cut:]
        self.chunk1_range = f"0-{len(self.chunk1) - 1}"
        self.chunk2_range = f"{len(self.chunk1)}-{len(self.blob_b.content) - 1}"


D = Data()

TEST_TAG_NAME = "tagtest0"
EMPTY_LAYER_TEST_TAG = "emptylayer"


@dataclass
class State:
    """What the suite keeps in closure variables between ordered specs."""

    # pull
    pull_tag: str = ""
    # push
    last: httpx.Response | None = None
    prev: httpx.Response | None = None
    empty_layer_manifest_ref: str = ""
    # discovery
    num_tags: int = 4
    tag_list: list = field(default_factory=list)
    # management
    tag_to_delete: str = ""
    mgmt_num_tags: int = 0
    blob_delete_allowed: bool = True
    # not the suite's: what the `from=` mount answered (checked by a connreg test at the end)
    mount_from: httpx.Response | None = None


S = State()

# --------------------------------------------------------------------------------------------
# client and helpers
# --------------------------------------------------------------------------------------------


def _log_exchange(resp: httpx.Response) -> None:
    req = resp.request
    print(f"[conformance] {req.method} {req.url} -> {resp.status_code} "
          f"{ {k: v for k, v in resp.headers.items() if k.lower() not in ('date', 'server')} }")


_CHALLENGE_PARAM = re.compile(r'([a-zA-Z]+)="(.+?)"')


@dataclass
class TokenFetch:
    """One answered challenge: the request challenged and the scope the token was asked for."""

    request: str
    scope: str


class Registry:
    """The suite's client: with `credentials`, a 401 is answered the way reggie does it."""

    def __init__(self, base_url: str, credentials: tuple[str, str] | None = None):
        # the Go client follows redirects (e.g. blob GETs redirected to storage)
        hooks = {"response": [_log_exchange]} if DEBUG else {}
        self.http = httpx.Client(base_url=base_url, follow_redirects=True, timeout=20.0,
                                 headers={"User-Agent": "connreg-conformance-pytest"},
                                 event_hooks=hooks)
        # the Go client sends no Accept header unless a spec sets one
        self.http.headers.pop("Accept", None)
        self.credentials = credentials
        self.token_fetches: list[TokenFetch] = []

    def do(self, method: str, path: str, *, params: dict | None = None,
           headers: dict | None = None, content=None) -> httpx.Response:
        if content is not None and not isinstance(content, bytes):
            content = list(content)  # a streamed body is sent again after a challenge
        resp = self.http.request(method, path, params=params, headers=headers, content=content)
        if resp.status_code == 401 and self.credentials:
            authorization = self._answer_challenge(resp)
            if authorization:
                headers = {**(headers or {}), "Authorization": authorization}
                resp = self.http.request(method, path, params=params, headers=headers,
                                         content=content)
        return resp

    def _answer_challenge(self, resp: httpx.Response) -> str | None:
        """The Authorization header for the retry (reggie's `retryRequestWithAuth`): every
        request goes out without credentials first; on 401 a Bearer challenge is answered by
        a GET of its realm with its service and scope (or OCI_AUTH_SCOPE) and Basic
        credentials, a Basic challenge by Basic credentials."""
        challenge = resp.headers.get("WWW-Authenticate", "")
        scheme = challenge.split(" ", 1)[0].lower()
        if scheme == "basic":
            return "Basic " + _b64(":".join(self.credentials).encode())
        if scheme != "bearer":
            return None
        attrs = dict(_CHALLENGE_PARAM.findall(challenge))
        query = {"service": attrs.get("service", "")}
        if scope := AUTH_SCOPE or attrs.get("scope", ""):
            query["scope"] = scope  # one parameter, space-separated scopes and all
        answer = self.http.get(attrs.get("realm", ""), params=query, auth=self.credentials,
                               headers={"Accept": "application/json"})
        assert answer.status_code == 200, f"token request refused\n{describe(answer)}"
        info = answer.json()
        token = info.get("token") or info.get("access_token")
        assert token, f"token answer without a token\n{describe(answer)}"
        self.token_fetches.append(TokenFetch(f"{resp.request.method} {resp.request.url}", scope))
        return f"Bearer {token}"

    def close(self):
        self.http.close()


NO_AUTH, TOKEN_AUTH, SCOPED_TOKEN_AUTH = "no-auth", "token-auth", "scoped-token-auth"
SCOPED_TOKEN_ACTIONS = [f"repositories/{NAMESPACE.split('/')[0]}/*/{verb}" for verb in (
    "content/read", "content/write", "content/delete", "metadata/read", "metadata/write")]


def _scoped_token(node) -> tuple[str, str]:
    """A token that may pull, push and delete under the namespace's first path component."""
    r = httpx.post(f"{node.url}/connreg/v1/tokens", auth=node.admin, timeout=20.0,
                   json={"name": "conformance", "actions": SCOPED_TOKEN_ACTIONS})
    assert r.status_code == 201, r.text
    return "conformance", r.json()["passwords"][0]["value"]


@pytest.fixture(scope="module", params=[NO_AUTH, TOKEN_AUTH, SCOPED_TOKEN_AUTH])
def reg(request, tmp_path_factory):
    """A fresh node per run of the suite: open; auth on with the admin's credentials; auth on
    with a token limited to the namespace's prefix (as if run with OCI_AUTOMATIC_CROSSMOUNT=0:
    connreg keeps automatic mounts for callers who may read everything)."""
    data_dir = tmp_path_factory.mktemp(f"conformance-{request.param}") / "node"
    if request.param == NO_AUTH:
        node, credentials = start_node(data_dir, args=["--no-auth"]), None
    else:
        node = start_node(data_dir, admin_password=secrets.token_urlsafe(18))
        credentials = node.admin if request.param == TOKEN_AUTH else _scoped_token(node)
    # each run starts like a fresh suite process: new test data, empty state
    D.__init__()
    S.__init__()
    r = Registry(node.url, credentials)
    r.mode = request.param
    r.automatic_crossmount = (AUTOMATIC_CROSSMOUNT_ENABLED
                              and request.param != SCOPED_TOKEN_AUTH)
    yield r
    r.close()
    node.stop()


def relative_location(resp: httpx.Response) -> str:
    """Path and query of the Location header (the Go client re-targets it at the registry)."""
    loc = resp.headers.get("Location", "")
    u = urlsplit(loc)
    return u.path + (f"?{u.query}" if u.query else "")


def describe(resp: httpx.Response) -> str:
    req = resp.request
    body = resp.content[:500] if req.method != "HEAD" else b""
    return (f"{req.method} {req.url} -> {resp.status_code}\n"
            f"response headers: {dict(resp.headers)}\nresponse body: {body!r}")


def is_2xx(code: int) -> bool:
    return 200 <= code < 300


def expect_status(resp: httpx.Response, *allowed: int, any_2xx: bool = False) -> None:
    ok = resp.status_code in allowed or (any_2xx and is_2xx(resp.status_code))
    wanted = ("2xx " if any_2xx else "") + " ".join(map(str, allowed))
    assert ok, f"expected status {wanted.strip()}\n{describe(resp)}"


def skip_if_disabled(workflow: str) -> None:
    if not ENABLED[workflow]:
        pytest.skip(f"workflow {workflow} disabled by environment")


_MANIFESTS_FIRST_ONLY = "registered only with OCI_DELETE_MANIFEST_BEFORE_BLOBS=true"
_BLOBS_FIRST_ONLY = "registered only with OCI_DELETE_MANIFEST_BEFORE_BLOBS=false"


def run_only_if(cond: bool, why: str = "precondition not met") -> None:
    if not cond:
        pytest.skip(f"{why} (the suite skips this spec too)")


def run_only_if_not(cond: bool, why: str = "precondition not met") -> None:
    run_only_if(not cond, why)


def warn(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=2)


def ns_path(suffix: str, name: str = NAMESPACE) -> str:
    return f"/v2/{name}/{suffix}"


def start_upload(reg: Registry, name: str = NAMESPACE, **kw) -> httpx.Response:
    return reg.do("POST", ns_path("blobs/uploads/", name), **kw)


def push_blob_2step(reg: Registry, blob: Blob) -> httpx.Response:
    """POST a session, then PUT the whole blob to it (the suite's "populate" pattern)."""
    resp = start_upload(reg)
    return reg.do("PUT", relative_location(resp), params={"digest": blob.digest},
                  headers={"Content-Type": OCTET, "Content-Length": blob.length},
                  content=blob.content)


def put_manifest(reg: Registry, reference: str, blob: Blob, media_type: str = MT_MANIFEST):
    return reg.do("PUT", ns_path(f"manifests/{reference}"),
                  headers={"Content-Type": media_type}, content=blob.content)


def delete_manifest(reg: Registry, reference: str) -> httpx.Response:
    return reg.do("DELETE", ns_path(f"manifests/{reference}"))


def delete_blob(reg: Registry, digest: str) -> httpx.Response:
    return reg.do("DELETE", ns_path(f"blobs/{digest}"))


def error_codes(resp: httpx.Response) -> list[str]:
    body = json.loads(resp.content)
    errors = body.get("errors") if isinstance(body, dict) else None
    assert errors, f"error body has no `errors` list\n{describe(resp)}"
    return [e.get("code") for e in errors]


def tag_list_of(resp: httpx.Response) -> list[str]:
    """Like the suite: an unparsable body is an empty list."""
    try:
        tags = json.loads(resp.content).get("tags")
    except (ValueError, AttributeError):
        return []
    return list(tags or [])


def _streamed(data: bytes, piece: int = 16):
    for i in range(0, len(data), piece):
        yield data[i:i + piece]


# ============================================================================================
# 01 Pull
# ============================================================================================

# ---- Pull / Setup ----------------------------------------------------------------------------


def test_pull_setup_populate_registry_with_test_blob_config0(reg):
    """Pull / Setup / Populate registry with test blob (config[0])"""
    skip_if_disabled(PULL)
    run_only_if(RUN_PULL_SETUP)
    expect_status(push_blob_2step(reg, D.configs[0]), any_2xx=True)


def test_pull_setup_populate_registry_with_test_blob_config1(reg):
    """Pull / Setup / Populate registry with test blob (config[1])"""
    skip_if_disabled(PULL)
    run_only_if(RUN_PULL_SETUP)
    expect_status(push_blob_2step(reg, D.configs[1]), any_2xx=True)


def test_pull_setup_populate_registry_with_test_layer(reg):
    """Pull / Setup / Populate registry with test layer"""
    skip_if_disabled(PULL)
    run_only_if(RUN_PULL_SETUP)
    expect_status(push_blob_2step(reg, D.layer), any_2xx=True)


def test_pull_setup_populate_registry_with_test_manifest_by_tag(reg):
    """Pull / Setup / Populate registry with test manifest (manifest[0] as tag tagtest0)"""
    skip_if_disabled(PULL)
    run_only_if(RUN_PULL_SETUP)
    S.pull_tag = TEST_TAG_NAME
    expect_status(put_manifest(reg, S.pull_tag, D.manifests[0]), any_2xx=True)


def test_pull_setup_populate_registry_with_test_manifest_by_digest(reg):
    """Pull / Setup / Populate registry with test manifest (manifest[1] by digest)"""
    skip_if_disabled(PULL)
    run_only_if(RUN_PULL_SETUP)
    expect_status(put_manifest(reg, D.manifests[1].digest, D.manifests[1]), any_2xx=True)


def test_pull_setup_get_tag_name_from_environment(reg):
    """Pull / Setup / Get tag name from environment"""
    skip_if_disabled(PULL)
    run_only_if_not(RUN_PULL_SETUP, "pull setup ran")
    if os.environ.get("OCI_TAG_NAME"):
        S.pull_tag = os.environ["OCI_TAG_NAME"]


# ---- Pull / Pull blobs -----------------------------------------------------------------------


def test_pull_blobs_head_nonexistent_blob_404(reg):
    """Pull / Pull blobs / HEAD request to nonexistent blob should result in 404 response"""
    skip_if_disabled(PULL)
    expect_status(reg.do("HEAD", ns_path(f"blobs/{D.dummy_digest}")), 404)


def test_pull_blobs_head_existing_blob_200(reg):
    """Pull / Pull blobs / HEAD request to existing blob should yield 200"""
    skip_if_disabled(PULL)
    resp = reg.do("HEAD", ns_path(f"blobs/{D.configs[0].digest}"))
    expect_status(resp, 200)
    if h := resp.headers.get("Docker-Content-Digest"):
        assert h == D.configs[0].digest, describe(resp)


def test_pull_blobs_get_nonexistent_blob_404(reg):
    """Pull / Pull blobs / GET nonexistent blob should result in 404 response"""
    skip_if_disabled(PULL)
    expect_status(reg.do("GET", ns_path(f"blobs/{D.dummy_digest}")), 404)


def test_pull_blobs_get_existing_blob_200(reg):
    """Pull / Pull blobs / GET request to existing blob URL should yield 200"""
    skip_if_disabled(PULL)
    expect_status(reg.do("GET", ns_path(f"blobs/{D.configs[0].digest}")), 200)


# ---- Pull / Pull manifests -------------------------------------------------------------------


def test_pull_manifests_head_nonexistent_manifest_404(reg):
    """Pull / Pull manifests / HEAD request to nonexistent manifest should return 404"""
    skip_if_disabled(PULL)
    expect_status(reg.do("HEAD", ns_path(f"manifests/{D.nonexistent_manifest}")), 404)


def _head_or_get_manifest(reg, method, ref):
    return reg.do(method, ns_path(f"manifests/{ref}"), headers={"Accept": MT_MANIFEST})


def test_pull_manifests_head_manifest0_by_digest_200(reg):
    """Pull / Pull manifests / HEAD request to manifest[0] path (digest) should yield 200 response"""
    skip_if_disabled(PULL)
    resp = _head_or_get_manifest(reg, "HEAD", D.manifests[0].digest)
    expect_status(resp, 200)
    if h := resp.headers.get("Docker-Content-Digest"):
        assert h == D.manifests[0].digest, describe(resp)


def test_pull_manifests_head_manifest1_by_digest_200(reg):
    """Pull / Pull manifests / HEAD request to manifest[1] path (digest) should yield 200 response"""
    skip_if_disabled(PULL)
    resp = _head_or_get_manifest(reg, "HEAD", D.manifests[1].digest)
    expect_status(resp, 200)
    if h := resp.headers.get("Docker-Content-Digest"):
        assert h == D.manifests[1].digest, describe(resp)


def test_pull_manifests_head_manifest_by_tag_200(reg):
    """Pull / Pull manifests / HEAD request to manifest path (tag) should yield 200 response"""
    skip_if_disabled(PULL)
    assert S.pull_tag
    resp = _head_or_get_manifest(reg, "HEAD", S.pull_tag)
    expect_status(resp, 200)
    if h := resp.headers.get("Docker-Content-Digest"):
        assert h == D.manifests[0].digest, describe(resp)


def test_pull_manifests_get_nonexistent_manifest_404(reg):
    """Pull / Pull manifests / GET nonexistent manifest should return 404"""
    skip_if_disabled(PULL)
    expect_status(reg.do("GET", ns_path(f"manifests/{D.nonexistent_manifest}")), 404)


def test_pull_manifests_get_manifest0_by_digest_200(reg):
    """Pull / Pull manifests / GET request to manifest[0] path (digest) should yield 200 response"""
    skip_if_disabled(PULL)
    expect_status(_head_or_get_manifest(reg, "GET", D.manifests[0].digest), 200)


def test_pull_manifests_get_manifest1_by_digest_200(reg):
    """Pull / Pull manifests / GET request to manifest[1] path (digest) should yield 200 response"""
    skip_if_disabled(PULL)
    expect_status(_head_or_get_manifest(reg, "GET", D.manifests[1].digest), 200)


def test_pull_manifests_get_manifest_by_tag_200(reg):
    """Pull / Pull manifests / GET request to manifest path (tag) should yield 200 response"""
    skip_if_disabled(PULL)
    assert S.pull_tag
    expect_status(_head_or_get_manifest(reg, "GET", S.pull_tag), 200)


# ---- Pull / Error codes ----------------------------------------------------------------------


def test_pull_error_codes_400_body_is_oci_error_json(reg):
    """Pull / Error codes / 400 response body should contain OCI-conforming JSON message"""
    skip_if_disabled(PULL)
    resp = reg.do("GET", ns_path("manifests/sha256:totallywrong"),
                  headers={"Content-Type": MT_MANIFEST}, content=D.invalid_manifest_content)
    expect_status(resp, 400, 404)
    if resp.status_code == 400:
        codes = error_codes(resp)
        assert codes[0] in ERROR_CODES, describe(resp)


# ---- Pull / Teardown -------------------------------------------------------------------------


def _pull_delete_manifest(reg, blob):
    expect_status(delete_manifest(reg, blob.digest), 405, any_2xx=True)


def _pull_delete_blob(reg, digest):
    expect_status(delete_blob(reg, digest), 404, 405, any_2xx=True)


def test_pull_teardown_delete_manifest0_created_in_setup(reg):
    """Pull / Teardown / Delete manifest[0] created in setup  (manifests-first order)"""
    run_only_if(DELETE_MANIFEST_BEFORE_BLOBS, _MANIFESTS_FIRST_ONLY)
    skip_if_disabled(PULL)
    run_only_if(RUN_PULL_SETUP)
    _pull_delete_manifest(reg, D.manifests[0])


def test_pull_teardown_delete_manifest1_created_in_setup(reg):
    """Pull / Teardown / Delete manifest[1] created in setup  (manifests-first order)"""
    run_only_if(DELETE_MANIFEST_BEFORE_BLOBS, _MANIFESTS_FIRST_ONLY)
    skip_if_disabled(PULL)
    run_only_if(RUN_PULL_SETUP)
    _pull_delete_manifest(reg, D.manifests[1])


def test_pull_teardown_delete_config0_blob_created_in_setup(reg):
    """Pull / Teardown / Delete config[0] blob created in setup"""
    skip_if_disabled(PULL)
    run_only_if(RUN_PULL_SETUP)
    _pull_delete_blob(reg, D.configs[0].digest)


def test_pull_teardown_delete_config1_blob_created_in_setup(reg):
    """Pull / Teardown / Delete config[1] blob created in setup"""
    skip_if_disabled(PULL)
    run_only_if(RUN_PULL_SETUP)
    _pull_delete_blob(reg, D.configs[1].digest)


def test_pull_teardown_delete_layer_blob_created_in_setup(reg):
    """Pull / Teardown / Delete layer blob created in setup"""
    skip_if_disabled(PULL)
    run_only_if(RUN_PULL_SETUP)
    _pull_delete_blob(reg, D.layer.digest)


def test_pull_teardown_delete_manifest0_created_in_setup_after_blobs(reg):
    """Pull / Teardown / Delete manifest[0] created in setup  (blobs-first order)"""
    run_only_if_not(DELETE_MANIFEST_BEFORE_BLOBS, _BLOBS_FIRST_ONLY)
    skip_if_disabled(PULL)
    run_only_if(RUN_PULL_SETUP)
    _pull_delete_manifest(reg, D.manifests[0])


def test_pull_teardown_delete_manifest1_created_in_setup_after_blobs(reg):
    """Pull / Teardown / Delete manifest[1] created in setup  (blobs-first order)"""
    run_only_if_not(DELETE_MANIFEST_BEFORE_BLOBS, _BLOBS_FIRST_ONLY)
    skip_if_disabled(PULL)
    run_only_if(RUN_PULL_SETUP)
    _pull_delete_manifest(reg, D.manifests[1])


# ============================================================================================
# 02 Push
# ============================================================================================

# ---- Push / Blob Upload Streamed -------------------------------------------------------------


def test_push_streamed_patch_with_blob_in_body_202(reg):
    """Push / Blob Upload Streamed / PATCH request with blob in body should yield 202 response"""
    skip_if_disabled(PUSH)
    resp = start_upload(reg)
    assert resp.headers.get("Location"), describe(resp)
    # a streamed PATCH: no Content-Length, no Content-Range; sent with chunked transfer coding
    resp = reg.do("PATCH", relative_location(resp), headers={"Content-Type": OCTET},
                  content=_streamed(D.blob_a.content))
    expect_status(resp, 202)
    S.last = resp


def test_push_streamed_put_session_with_digest_201(reg):
    """Push / Blob Upload Streamed / PUT request to session URL with digest should yield 201 response"""
    skip_if_disabled(PUSH)
    assert S.last is not None
    # closes the session with no further body (the suite's Content-Length header is not what
    # goes on the wire: there is no body, so the request carries Content-Length: 0)
    resp = reg.do("PUT", relative_location(S.last), params={"digest": D.blob_a.digest},
                  headers={"Content-Type": OCTET}, content=b"")
    expect_status(resp, 201)
    assert resp.headers.get("Location"), describe(resp)


# ---- Push / Blob Upload Monolithic -----------------------------------------------------------


def test_push_monolithic_get_nonexistent_blob_404(reg):
    """Push / Blob Upload Monolithic / GET nonexistent blob should result in 404 response"""
    skip_if_disabled(PUSH)
    expect_status(reg.do("GET", ns_path(f"blobs/{D.dummy_digest}")), 404)


def test_push_monolithic_post_with_digest_and_blob_201_or_202(reg):
    """Push / Blob Upload Monolithic / POST request with digest and blob should yield a 201 or 202"""
    skip_if_disabled(PUSH)
    cfg = D.configs[1]
    resp = start_upload(reg, params={"digest": cfg.digest},
                        headers={"Content-Length": cfg.length, "Content-Type": OCTET},
                        content=cfg.content)
    assert resp.headers.get("Location"), describe(resp)
    expect_status(resp, 201, 202)
    S.last = resp


def test_push_monolithic_get_blob_from_prior_request_200_or_404(reg):
    """Push / Blob Upload Monolithic / GET request to blob URL from prior request should yield 200
    or 404 based on response code"""
    skip_if_disabled(PUSH)
    assert S.last is not None
    resp = reg.do("GET", ns_path(f"blobs/{D.configs[1].digest}"))
    if S.last.status_code == 202:
        expect_status(resp, 404)
    else:
        expect_status(resp, 200)


def test_push_monolithic_post_yields_session_id(reg):
    """Push / Blob Upload Monolithic / POST request should yield a session ID"""
    skip_if_disabled(PUSH)
    resp = start_upload(reg)
    expect_status(resp, 202)
    S.last = resp


def test_push_monolithic_put_upload_of_blob_201(reg):
    """Push / Blob Upload Monolithic / PUT upload of a blob should yield a 201 Response"""
    skip_if_disabled(PUSH)
    cfg = D.configs[1]
    resp = reg.do("PUT", relative_location(S.last), params={"digest": cfg.digest},
                  headers={"Content-Length": cfg.length, "Content-Type": OCTET},
                  content=cfg.content)
    assert resp.headers.get("Location"), describe(resp)
    expect_status(resp, 201)


def test_push_monolithic_get_existing_blob_200(reg):
    """Push / Blob Upload Monolithic / GET request to existing blob should yield 200 response"""
    skip_if_disabled(PUSH)
    expect_status(reg.do("GET", ns_path(f"blobs/{D.configs[1].digest}")), 200)


def test_push_monolithic_put_upload_of_layer_blob_201(reg):
    """Push / Blob Upload Monolithic / PUT upload of a layer blob should yield a 201 Response"""
    skip_if_disabled(PUSH)
    resp = push_blob_2step(reg, D.layer)
    assert resp.headers.get("Location"), describe(resp)
    expect_status(resp, 201)


def test_push_monolithic_get_existing_layer_200(reg):
    """Push / Blob Upload Monolithic / GET request to existing layer should yield 200 response"""
    skip_if_disabled(PUSH)
    expect_status(reg.do("GET", ns_path(f"blobs/{D.layer.digest}")), 200)


# ---- Push / Blob Upload Chunked --------------------------------------------------------------


def _patch_chunk(reg, location, chunk, content_range):
    return reg.do("PATCH", location,
                  headers={"Content-Type": OCTET, "Content-Length": str(len(chunk)),
                           "Content-Range": content_range},
                  content=chunk)


def test_push_chunked_out_of_order_upload_416(reg):
    """Push / Blob Upload Chunked / Out-of-order blob upload should return 416"""
    skip_if_disabled(PUSH)
    resp = start_upload(reg, headers={"Content-Length": "0"}, content=b"")
    assert resp.headers.get("Location"), describe(resp)
    # a registry may demand bigger chunks; the suite then regenerates the chunked blob
    if min_len := resp.headers.get("OCI-Chunk-Min-Length"):
        min_size = int(min_len)
        if min_size > len(D.chunk1):
            D.setup_chunked_blob(min_size * 2 - 2)
    resp = _patch_chunk(reg, relative_location(resp), D.chunk2, D.chunk2_range)
    expect_status(resp, 416)


def test_push_chunked_patch_first_chunk_202(reg):
    """Push / Blob Upload Chunked / PATCH request with first chunk should return 202"""
    skip_if_disabled(PUSH)
    resp = start_upload(reg, headers={"Content-Length": "0"}, content=b"")
    assert resp.headers.get("Location"), describe(resp)
    S.prev = resp
    resp = _patch_chunk(reg, relative_location(resp), D.chunk1, D.chunk1_range)
    expect_status(resp, 202)
    assert resp.headers.get("Range") == D.chunk1_range, describe(resp)
    S.last = resp


def test_push_chunked_retry_previous_chunk_416(reg):
    """Push / Blob Upload Chunked / Retry previous blob chunk should return 416"""
    skip_if_disabled(PUSH)
    assert S.prev is not None
    resp = _patch_chunk(reg, relative_location(S.prev), D.chunk1, D.chunk1_range)
    expect_status(resp, 416)


def test_push_chunked_get_stale_upload_204_with_range_and_location(reg):
    """Push / Blob Upload Chunked / Get on stale blob upload should return 204 with a range and
    location"""
    skip_if_disabled(PUSH)
    assert S.prev is not None
    resp = reg.do("GET", relative_location(S.prev))
    expect_status(resp, 204)
    assert resp.headers.get("Location"), describe(resp)
    assert resp.headers.get("Range") == D.chunk1_range, describe(resp)
    S.last = resp


def test_push_chunked_patch_second_chunk_202(reg):
    """Push / Blob Upload Chunked / PATCH request with second chunk should return 202"""
    skip_if_disabled(PUSH)
    assert S.last is not None
    resp = _patch_chunk(reg, relative_location(S.last), D.chunk2, D.chunk2_range)
    expect_status(resp, 202)
    assert resp.headers.get("Location"), describe(resp)
    S.last = resp


def test_push_chunked_put_with_digest_201(reg):
    """Push / Blob Upload Chunked / PUT request with digest should return 201"""
    skip_if_disabled(PUSH)
    assert S.last is not None
    resp = reg.do("PUT", relative_location(S.last), params={"digest": D.blob_b.digest},
                  headers={"Content-Length": "0", "Content-Type": OCTET}, content=b"")
    expect_status(resp, 201)
    assert resp.headers.get("Location"), describe(resp)


# ---- Push / Cross-Repository Blob Mount ------------------------------------------------------


def test_push_crossmount_without_from_yields_session_id(reg):
    """Push / Cross-Repository Blob Mount / Cross-mounting of a blob without the from argument
    should yield session id"""
    skip_if_disabled(PUSH)
    resp = start_upload(reg, CROSSMOUNT_NAMESPACE, params={"mount": D.dummy_digest})
    expect_status(resp, 202)
    assert resp.headers.get("Location"), describe(resp)


def test_push_crossmount_mount_from_other_repo_201_or_202(reg):
    """Push / Cross-Repository Blob Mount / POST request to mount another repository's blob should
    return 201 or 202"""
    skip_if_disabled(PUSH)
    resp = start_upload(reg, CROSSMOUNT_NAMESPACE,
                        params={"mount": D.blob_a.digest, "from": NAMESPACE})
    expect_status(resp, 201, 202)
    S.last = S.mount_from = resp


def test_push_crossmount_get_digest_in_crossmount_namespace_200(reg):
    """Push / Cross-Repository Blob Mount / GET request to test digest within cross-mount namespace
    should return 200"""
    skip_if_disabled(PUSH)
    assert S.last is not None
    run_only_if(S.last.status_code == 201, "the mount did not answer 201")
    loc = relative_location(S.last)
    assert loc == f"/v2/{CROSSMOUNT_NAMESPACE}/blobs/{D.blob_a.digest}", describe(S.last)
    expect_status(reg.do("GET", loc), 200)


def test_push_crossmount_nonexistent_blob_yields_session_id(reg):
    """Push / Cross-Repository Blob Mount / Cross-mounting of nonexistent blob should yield
    session id"""
    skip_if_disabled(PUSH)
    assert S.last is not None
    run_only_if(S.last.status_code == 202, "the mount did not answer 202")
    assert relative_location(S.last).startswith(f"/v2/{CROSSMOUNT_NAMESPACE}/blobs/uploads/"), \
        describe(S.last)


def test_push_crossmount_without_from_automatic_enabled_201(reg):
    """Push / Cross-Repository Blob Mount / Cross-mounting without from, and automatic content
    discovery enabled should return a 201"""
    skip_if_disabled(PUSH)
    run_only_if(RUN_AUTOMATIC_CROSSMOUNT_TEST, "OCI_AUTOMATIC_CROSSMOUNT not set")
    assert S.last is not None
    run_only_if(S.last.status_code == 201, "the mount did not answer 201")
    run_only_if(reg.automatic_crossmount, "OCI_AUTOMATIC_CROSSMOUNT is false")
    resp = start_upload(reg, CROSSMOUNT_NAMESPACE, params={"mount": D.blob_a.digest})
    expect_status(resp, 201)


def test_push_crossmount_without_from_automatic_disabled_202(reg):
    """Push / Cross-Repository Blob Mount / Cross-mounting without from, and automatic content
    discovery disabled should return a 202"""
    skip_if_disabled(PUSH)
    run_only_if(RUN_AUTOMATIC_CROSSMOUNT_TEST, "OCI_AUTOMATIC_CROSSMOUNT not set")
    assert S.last is not None
    run_only_if(S.last.status_code == 201, "the mount did not answer 201")
    run_only_if_not(reg.automatic_crossmount, "OCI_AUTOMATIC_CROSSMOUNT is true")
    resp = start_upload(reg, CROSSMOUNT_NAMESPACE, params={"mount": D.blob_a.digest})
    expect_status(resp, 202)


# ---- Push / Manifest Upload ------------------------------------------------------------------


def test_push_manifest_get_nonexistent_manifest_404(reg):
    """Push / Manifest Upload / GET nonexistent manifest should return 404"""
    skip_if_disabled(PUSH)
    expect_status(reg.do("GET", ns_path(f"manifests/{D.nonexistent_manifest}")), 404)


def test_push_manifest_put_accepts_manifest_upload(reg):
    """Push / Manifest Upload / PUT should accept a manifest upload"""
    skip_if_disabled(PUSH)
    for i in range(4):
        resp = put_manifest(reg, f"test{i}", D.manifests[1])
        assert resp.headers.get("Location"), describe(resp)
        expect_status(resp, 201)


def test_push_manifest_accepts_manifest_with_no_layers(reg):
    """Push / Manifest Upload / Registry should accept a manifest upload with no layers"""
    skip_if_disabled(PUSH)
    resp = put_manifest(reg, EMPTY_LAYER_TEST_TAG, D.empty_layer_manifest)
    if resp.status_code == 201:
        S.empty_layer_manifest_ref = resp.headers.get("Location", "")
        assert S.empty_layer_manifest_ref, describe(resp)
    else:
        warn(f"image manifest with no layers is not supported\n{describe(resp)}")


def test_push_manifest_get_manifest_by_digest_200(reg):
    """Push / Manifest Upload / GET request to manifest URL (digest) should yield 200 response"""
    skip_if_disabled(PUSH)
    expect_status(_head_or_get_manifest(reg, "GET", D.manifests[1].digest), 200)


# ---- Push / Teardown -------------------------------------------------------------------------


def _push_delete_manifests(reg):
    expect_status(delete_manifest(reg, D.manifests[1].digest), 405, any_2xx=True)
    if S.empty_layer_manifest_ref:
        expect_status(delete_manifest(reg, D.empty_layer_manifest.digest), 405, any_2xx=True)


def test_push_teardown_delete_manifest_created_in_tests(reg):
    """Push / Teardown / Delete manifest created in tests  (manifests-first order)"""
    run_only_if(DELETE_MANIFEST_BEFORE_BLOBS, _MANIFESTS_FIRST_ONLY)
    skip_if_disabled(PUSH)
    run_only_if(RUN_PUSH_SETUP)
    _push_delete_manifests(reg)


def test_push_teardown_delete_config_blob_created_in_tests(reg):
    """Push / Teardown / Delete config blob created in tests"""
    skip_if_disabled(PUSH)
    run_only_if(RUN_PUSH_SETUP)
    expect_status(delete_blob(reg, D.configs[1].digest), 404, 405, any_2xx=True)


def test_push_teardown_delete_layer_blob_created_in_setup(reg):
    """Push / Teardown / Delete layer blob created in setup"""
    skip_if_disabled(PUSH)
    run_only_if(RUN_PUSH_SETUP)
    expect_status(delete_blob(reg, D.layer.digest), 404, 405, any_2xx=True)


def test_push_teardown_delete_manifest_created_in_tests_after_blobs(reg):
    """Push / Teardown / Delete manifest created in tests  (blobs-first order)"""
    run_only_if_not(DELETE_MANIFEST_BEFORE_BLOBS, _BLOBS_FIRST_ONLY)
    skip_if_disabled(PUSH)
    run_only_if(RUN_PUSH_SETUP)
    _push_delete_manifests(reg)


# ============================================================================================
# 03 Content Discovery
# ============================================================================================

# ---- Content Discovery / Setup ---------------------------------------------------------------


def test_discovery_setup_populate_registry_with_test_blob(reg):
    """Content Discovery / Setup / Populate registry with test blob"""
    skip_if_disabled(CONTENT_DISCOVERY)
    run_only_if(RUN_CONTENT_DISCOVERY_SETUP)
    expect_status(push_blob_2step(reg, D.configs[2]), any_2xx=True)


def test_discovery_setup_populate_registry_with_test_layer(reg):
    """Content Discovery / Setup / Populate registry with test layer"""
    skip_if_disabled(CONTENT_DISCOVERY)
    run_only_if(RUN_CONTENT_DISCOVERY_SETUP)
    expect_status(push_blob_2step(reg, D.layer), any_2xx=True)


def test_discovery_setup_populate_registry_with_test_tags(reg):
    """Content Discovery / Setup / Populate registry with test tags"""
    skip_if_disabled(CONTENT_DISCOVERY)
    run_only_if(RUN_CONTENT_DISCOVERY_SETUP)
    for i in range(S.num_tags):
        tag = f"test{i}"
        S.tag_list.append(tag)
        expect_status(put_manifest(reg, tag, D.manifests[2]), any_2xx=True)
    # the suite then re-reads the list without checking the response
    S.tag_list = tag_list_of(reg.do("GET", ns_path("tags/list")))


def test_discovery_setup_populate_registry_with_test_tags_no_push(reg):
    """Content Discovery / Setup / Populate registry with test tags (no push)"""
    skip_if_disabled(CONTENT_DISCOVERY)
    run_only_if_not(RUN_CONTENT_DISCOVERY_SETUP, "discovery setup ran")
    S.tag_list = os.environ.get("OCI_TAG_LIST", "").split(",")


def test_discovery_setup_references_setup(reg):
    """Content Discovery / Setup / References setup"""
    skip_if_disabled(CONTENT_DISCOVERY)
    run_only_if(RUN_CONTENT_DISCOVERY_SETUP)
    subject = D.manifests[4].digest

    # the well-known digest of `{}`
    assert D.empty_json.digest == \
        "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    expect_status(push_blob_2step(reg, D.empty_json), any_2xx=True)

    # a referrer's blob pushed before its subject exists
    expect_status(push_blob_2step(reg, D.ref_blob_a), any_2xx=True)

    # referrers pushed BEFORE the subject manifest: the registry must still accept them and
    # answer with OCI-Subject
    for blob, mt in ((D.refs_a_config, MT_MANIFEST), (D.refs_a_layer, MT_MANIFEST),
                     (D.refs_index, MT_INDEX)):
        resp = put_manifest(reg, blob.digest, blob, mt)
        expect_status(resp, any_2xx=True)
        assert resp.headers.get("OCI-Subject", "") == subject, describe(resp)

    # the subject image itself
    expect_status(push_blob_2step(reg, D.configs[4]), any_2xx=True)
    expect_status(push_blob_2step(reg, D.layer), any_2xx=True)
    expect_status(put_manifest(reg, TEST_TAG_NAME, D.manifests[4]), any_2xx=True)

    # referrers pushed AFTER the subject exists
    expect_status(push_blob_2step(reg, D.ref_blob_b), any_2xx=True)
    for blob in (D.refs_b_config, D.refs_b_layer):
        resp = put_manifest(reg, blob.digest, blob)
        expect_status(resp, any_2xx=True)
        assert resp.headers.get("OCI-Subject", "") == subject, describe(resp)

    # a referrer whose subject (manifests[3]) is not in the registry
    resp = put_manifest(reg, D.refs_c_layer.digest, D.refs_c_layer)
    expect_status(resp, any_2xx=True)
    assert resp.headers.get("OCI-Subject", "") == D.manifests[3].digest, describe(resp)


# ---- Content Discovery / Test content discovery endpoints (listing tags) ---------------------


def test_discovery_tags_list_200(reg):
    """Content Discovery / listing tags / GET request to list tags should yield 200 response"""
    skip_if_disabled(CONTENT_DISCOVERY)
    resp = reg.do("GET", ns_path("tags/list"))
    expect_status(resp, 200)
    S.tag_list = tag_list_of(resp)
    S.num_tags = len(S.tag_list)


def test_discovery_tags_list_limited_by_n(reg):
    """Content Discovery / listing tags / GET number of tags should be limitable by `n` query
    parameter"""
    skip_if_disabled(CONTENT_DISCOVERY)
    n = S.num_tags // 2
    resp = reg.do("GET", ns_path("tags/list"), params={"n": str(n)})
    expect_status(resp, 200)
    S.tag_list = tag_list_of(resp)
    assert len(S.tag_list) == n, describe(resp)


def test_discovery_tags_list_start_set_by_last(reg):
    """Content Discovery / listing tags / GET start of tag is set by `last` query parameter"""
    skip_if_disabled(CONTENT_DISCOVERY)
    n = S.num_tags // 2
    first = reg.do("GET", ns_path("tags/list"), params={"n": str(n)})
    S.tag_list = tag_list_of(first)
    # (the suite indexes the first page here; an empty first page fails the spec)
    assert 0 <= n - 1 < len(S.tag_list), describe(first)
    last = S.tag_list[n - 1]
    resp = reg.do("GET", ns_path("tags/list"), params={"n": str(n), "last": last})
    expect_status(resp, 200)
    # the suite's remaining checks are made on the first page it fetched
    assert len(S.tag_list) <= n
    assert last in S.tag_list


# ---- Content Discovery / Test content discovery endpoints (listing references) ---------------


def _referrers(reg, digest, params=None):
    resp = reg.do("GET", ns_path(f"referrers/{digest}"), params=params)
    expect_status(resp, 200)
    assert resp.headers.get("Content-Type", "") == MT_INDEX, describe(resp)
    body = json.loads(resp.content)
    return resp, list(body.get("manifests") or [])


def _check_annotations(resp, manifests):
    for m in manifests:
        ann = m.get("annotations") or {}
        assert len(ann) == 1, describe(resp)
        assert ann.get(D.annotation_key) == D.annotation_values.get(m.get("digest"), ""), \
            describe(resp)


def test_discovery_referrers_nonexistent_blob_empty_200(reg):
    """Content Discovery / listing references / GET request to nonexistent blob should result in
    empty 200 response"""
    skip_if_disabled(CONTENT_DISCOVERY)
    _, manifests = _referrers(reg, D.dummy_digest)
    assert len(manifests) == 0


def test_discovery_referrers_existing_blob_200(reg):
    """Content Discovery / listing references / GET request to existing blob should yield 200"""
    skip_if_disabled(CONTENT_DISCOVERY)
    resp, manifests = _referrers(reg, D.manifests[4].digest)
    assert len(manifests) == 5, describe(resp)
    assert manifests[0].get("digest") != manifests[1].get("digest"), describe(resp)
    _check_annotations(resp, manifests)


def test_discovery_referrers_existing_blob_with_filter_200(reg):
    """Content Discovery / listing references / GET request to existing blob with filter should
    yield 200"""
    skip_if_disabled(CONTENT_DISCOVERY)
    resp, manifests = _referrers(reg, D.manifests[4].digest,
                                 params={"artifactType": D.artifact_type_a})
    if resp.headers.get("OCI-Filters-Applied", ""):
        assert len(manifests) == 2, describe(resp)
        assert resp.headers.get("OCI-Filters-Applied") == "artifactType", describe(resp)
    else:
        assert len(manifests) == 5, describe(resp)
        warn("filtering by artifact-type is not implemented")
    _check_annotations(resp, manifests)


def test_discovery_referrers_missing_manifest_200(reg):
    """Content Discovery / listing references / GET request to missing manifest should yield 200"""
    skip_if_disabled(CONTENT_DISCOVERY)
    resp, manifests = _referrers(reg, D.manifests[3].digest)
    assert len(manifests) == 1, describe(resp)
    assert manifests[0].get("digest") == D.refs_c_layer.digest, describe(resp)


# ---- Content Discovery / Teardown ------------------------------------------------------------


def _discovery_delete_manifests_and_tags(reg):
    for ref in (D.refs_index.digest, D.manifests[2].digest, D.manifests[4].digest,
                D.refs_a_config.digest, D.refs_a_layer.digest, TEST_TAG_NAME,
                D.refs_b_config.digest, D.refs_b_layer.digest, D.refs_c_layer.digest):
        expect_status(delete_manifest(reg, ref), 404, 405, any_2xx=True)


def test_discovery_teardown_delete_created_manifest_and_tags(reg):
    """Content Discovery / Teardown / Delete created manifest & associated tags
    (manifests-first order)"""
    run_only_if(DELETE_MANIFEST_BEFORE_BLOBS, _MANIFESTS_FIRST_ONLY)
    skip_if_disabled(CONTENT_DISCOVERY)
    run_only_if(RUN_CONTENT_DISCOVERY_SETUP)
    _discovery_delete_manifests_and_tags(reg)


def test_discovery_teardown_delete_config_blob_created_in_tests(reg):
    """Content Discovery / Teardown / Delete config blob created in tests"""
    skip_if_disabled(CONTENT_DISCOVERY)
    run_only_if(RUN_CONTENT_DISCOVERY_SETUP)
    # note: unlike the other teardowns, 404 is not tolerated here
    expect_status(delete_blob(reg, D.configs[2].digest), 405, any_2xx=True)


def test_discovery_teardown_delete_layer_blob_created_in_setup(reg):
    """Content Discovery / Teardown / Delete layer blob created in setup"""
    skip_if_disabled(CONTENT_DISCOVERY)
    run_only_if(RUN_CONTENT_DISCOVERY_SETUP)
    expect_status(delete_blob(reg, D.layer.digest), 405, any_2xx=True)


def test_discovery_teardown_delete_created_manifest_and_tags_after_blobs(reg):
    """Content Discovery / Teardown / Delete created manifest & associated tags
    (blobs-first order)"""
    run_only_if_not(DELETE_MANIFEST_BEFORE_BLOBS, _BLOBS_FIRST_ONLY)
    skip_if_disabled(CONTENT_DISCOVERY)
    run_only_if(RUN_CONTENT_DISCOVERY_SETUP)
    _discovery_delete_manifests_and_tags(reg)


def test_discovery_teardown_references_teardown(reg):
    """Content Discovery / Teardown / References teardown"""
    skip_if_disabled(CONTENT_DISCOVERY)
    run_only_if(RUN_CONTENT_DISCOVERY_SETUP)

    def ok(resp):
        expect_status(resp, 404, 405, any_2xx=True)

    referrer_manifests = (D.refs_index.digest, D.refs_a_config.digest, D.refs_a_layer.digest,
                          D.manifests[4].digest, D.refs_b_config.digest, D.refs_b_layer.digest)
    if DELETE_MANIFEST_BEFORE_BLOBS:
        for ref in referrer_manifests:
            ok(delete_manifest(reg, ref))
    for digest in (D.configs[4].digest, D.ref_blob_a.digest, D.ref_blob_b.digest,
                   D.empty_json.digest):
        ok(delete_blob(reg, digest))
    if not DELETE_MANIFEST_BEFORE_BLOBS:
        for ref in referrer_manifests:
            ok(delete_manifest(reg, ref))


# ============================================================================================
# 04 Content Management
# ============================================================================================

# ---- Content Management / Setup --------------------------------------------------------------


def test_management_setup_populate_registry_with_test_config_blob(reg):
    """Content Management / Setup / Populate registry with test config blob"""
    skip_if_disabled(CONTENT_MANAGEMENT)
    run_only_if(RUN_CONTENT_MANAGEMENT_SETUP)
    expect_status(push_blob_2step(reg, D.configs[3]), any_2xx=True)


def test_management_setup_populate_registry_with_test_layer(reg):
    """Content Management / Setup / Populate registry with test layer"""
    skip_if_disabled(CONTENT_MANAGEMENT)
    run_only_if(RUN_CONTENT_MANAGEMENT_SETUP)
    expect_status(push_blob_2step(reg, D.layer), any_2xx=True)


def test_management_setup_populate_registry_with_test_tag(reg):
    """Content Management / Setup / Populate registry with test tag"""
    skip_if_disabled(CONTENT_MANAGEMENT)
    run_only_if(RUN_CONTENT_MANAGEMENT_SETUP)
    S.tag_to_delete = TEST_TAG_NAME
    expect_status(put_manifest(reg, S.tag_to_delete, D.manifests[3]), any_2xx=True)


def test_management_setup_count_tags_before_deletion(reg):
    """Content Management / Setup / Check how many tags there are before anything gets deleted"""
    skip_if_disabled(CONTENT_MANAGEMENT)
    run_only_if(RUN_CONTENT_MANAGEMENT_SETUP)
    resp = reg.do("GET", ns_path("tags/list"))
    expect_status(resp, 200)
    body = json.loads(resp.content)  # must be JSON
    S.mgmt_num_tags = len(body.get("tags") or [])


# ---- Content Management / Manifest delete ----------------------------------------------------


def test_management_delete_manifest_tag_202_or_400_405(reg):
    """Content Management / Manifest delete / DELETE request to manifest tag should return 202,
    unless tag deletion is disallowed (400/405)"""
    skip_if_disabled(CONTENT_MANAGEMENT)
    resp = delete_manifest(reg, S.tag_to_delete)
    expect_status(resp, 400, 202, 405)
    if resp.status_code == 400:
        assert error_codes(resp)[0] == "UNSUPPORTED", describe(resp)


def test_management_delete_manifest_by_digest_202_or_404(reg):
    """Content Management / Manifest delete / DELETE request to manifest (digest) should yield 202
    response unless already deleted"""
    skip_if_disabled(CONTENT_MANAGEMENT)
    expect_status(delete_manifest(reg, D.manifests[3].digest), 202, 404)


def test_management_get_deleted_manifest_404_or_200(reg):
    """Content Management / Manifest delete / GET request to deleted manifest URL should yield 404
    response, unless delete is disallowed"""
    skip_if_disabled(CONTENT_MANAGEMENT)
    expect_status(reg.do("GET", ns_path(f"manifests/{D.manifests[3].digest}")), 404, 200)


def test_management_tags_list_reflects_deletion(reg):
    """Content Management / Manifest delete / GET request to tags list should reflect manifest
    deletion"""
    skip_if_disabled(CONTENT_MANAGEMENT)
    resp = reg.do("GET", ns_path("tags/list"))
    expect_status(resp, 200)
    body = json.loads(resp.content)
    assert len(body.get("tags") or []) < S.mgmt_num_tags, describe(resp)


# ---- Content Management / Blob delete --------------------------------------------------------


def test_management_delete_blob_202(reg):
    """Content Management / Blob delete / DELETE request to blob URL should yield 202 response"""
    skip_if_disabled(CONTENT_MANAGEMENT)
    run_only_if(RUN_CONTENT_MANAGEMENT_SETUP)
    expect_status(delete_blob(reg, D.configs[3].digest), 202, 404, 405)
    resp = delete_blob(reg, D.layer.digest)
    expect_status(resp, 202, 404, 405)
    if resp.status_code == 405:
        S.blob_delete_allowed = False


def test_management_get_deleted_blob_404(reg):
    """Content Management / Blob delete / GET request to deleted blob URL should yield 404
    response"""
    skip_if_disabled(CONTENT_MANAGEMENT)
    run_only_if(RUN_CONTENT_MANAGEMENT_SETUP)
    run_only_if(S.blob_delete_allowed, "blob DELETE answered 405")
    expect_status(reg.do("GET", ns_path(f"blobs/{D.configs[3].digest}")), 404)


# ============================================================================================
# Not the suite's: what makes each run count for connreg
# ============================================================================================


def test_connreg_mount_from_is_a_mount(reg):
    """The suite accepts 202 for the `from=` mount, which would skip the automatic cross-mount
    spec; connreg mounts, with and without auth (under token auth only because the challenge
    asks for pull on the source repository too)."""
    skip_if_disabled(PUSH)
    assert S.mount_from is not None
    expect_status(S.mount_from, 201)
    if reg.mode != NO_AUTH:
        mount_scopes = [f.scope for f in reg.token_fetches if "mount=" in f.request
                        and "from=" in f.request]
        assert mount_scopes, "the mount was never challenged"
        assert all(f"repository:{NAMESPACE}:pull" in s.split() for s in mount_scopes), \
            mount_scopes


def test_connreg_every_request_went_through_the_token_flow(reg):
    """With auth: the node really refused requests without credentials, and every spec above
    passed only after the client fetched a token; no-auth: nothing was ever challenged."""
    if reg.mode == NO_AUTH:
        assert reg.token_fetches == []
        return
    assert len(reg.token_fetches) >= 60, len(reg.token_fetches)
    bare = reg.http.get(ns_path("tags/list"))  # no credentials
    expect_status(bare, 401)
    assert bare.headers["WWW-Authenticate"].startswith("Bearer "), describe(bare)
