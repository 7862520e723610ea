"""Hostile input (issue 9, items 7 and 8): every route gets the malformed values an attacker
would try (numbers past Python's 4,300-digit limit, 1e999, inf, nan, unicode digits, JSON nested
100k deep, bodies longer or shorter than they claim, lenient manifests) and must answer each with
a 4xx and an OCI error body (`{"errors":[{"code",…}]}`), store nothing, and stay up.

One open node (`--no-auth`) takes the table and a seeded generator of more number variants; a
node with token auth checks the cross-repository mount challenge and a few credential inputs.
"""

from __future__ import annotations

import base64
import json
import random
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator
from urllib.parse import quote

import httpx
import pytest

from connreg.testing import Node, start_node
from connreg.testing.oci import OCI_MANIFEST, make_image, sha256
from helpers import error_codes, push_blob, push_image

REPO = "hostile/base"
ADMIN_PASSWORD = "hostile-input-admin-Pa55word-0123456789"

# Numbers no parser may take: past 4,300 digits (int() raises), past 19 digits or 2^63-1, floats
# that overflow or are not numbers, signs, whitespace, non-ASCII digits, other notations.
BAD_NUMBERS = ["9" * 4301, "1e999", "inf", "nan", "-1", str(2**64), "99999999999999999999",
               " ", " 1", "1 ", "+1", "١٢", "²", "0x10", "1_000", "1.5", "--1", "1e3"]
BAD_SECONDS = ["9" * 4301, "1e400", "inf", "-inf", "nan", "-1", "", " ", "١٢", "0x10", "1_0",
               "1.5.5", ".5", "1e3", "99999999999999999999"]
DEEP_JSON = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
HUGE_CLAIM = 100 * 1024 * 1024


@dataclass
class Case:
    """One hostile request. `path` and header values may name {blob}, {config}, {upload},
    {upload_id} (a fresh session of REPO, created just before the request)."""

    label: str
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | Callable[[], Iterator[bytes]] | None = None  # a callable: chunked encoding
    codes: tuple[str, ...] = ()  # the OCI error codes allowed (any when empty)
    statuses: tuple[int, ...] = ()  # the statuses allowed (any 4xx when empty)


@dataclass
class Target:
    node: Node
    client: httpx.Client
    blob: str
    config: str
    config_size: int
    layer: str
    layer_size: int
    tag_digest: str


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Iterator[Target]:
    node = start_node(tmp_path_factory.mktemp("hostile") / "node", args=["--no-auth"])
    with httpx.Client(base_url=node.url, timeout=60) as client:
        image = make_image([3000], arch="amd64")
        r = push_image(client, REPO, image, "v1")
        config, layer = json.loads(image.manifest)["config"], json.loads(image.manifest)["layers"][0]
        yield Target(node, client, layer["digest"], config["digest"], config["size"],
                     layer["digest"], layer["size"], r.headers["Docker-Content-Digest"])
    node.stop()


def manifest_body(t: Target, **changes) -> bytes:
    """A manifest of REPO's stored config and layer, with `changes` applied to the document."""
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                      "digest": t.config, "size": t.config_size},
           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                       "digest": t.layer, "size": t.layer_size}]}
    for key, value in changes.items():
        if callable(value):
            value(doc)
        else:
            doc[key] = value
    return json.dumps(doc).encode()


def table(t: Target) -> list[Case]:
    cases: list[Case] = []
    blob_url = f"/v2/{REPO}/blobs/{t.blob}"
    upload_url = f"/v2/{REPO}/blobs/uploads/{{upload_id}}"
    for bad in BAD_NUMBERS:
        short = bad[:12]
        cases += [
            Case(f"catalog n={short}", "GET", f"/v2/_catalog?n={bad}",
                 codes=("PAGINATION_NUMBER_INVALID",), statuses=(400,)),
            Case(f"tags n={short}", "GET", f"/v2/{REPO}/tags/list?n={bad}",
                 codes=("PAGINATION_NUMBER_INVALID",), statuses=(400,)),
            Case(f"changes cursor={short}", "GET", f"/connreg/v1/sync/changes?cursor={bad}",
                 statuses=(400,)),
            Case(f"changes limit={short}", "GET", f"/connreg/v1/sync/changes?limit={bad}",
                 statuses=(400,)),
            Case(f"chunk list offset={short}", "GET",
                 f"/connreg/v1/sync/chunks?repo={REPO}&digest={t.blob}&offset={bad}&length=1"
                 "&min=256&avg=1024&max=4096", statuses=(400,)),
            Case(f"chunk list length={short}", "GET",
                 f"/connreg/v1/sync/chunks?repo={REPO}&digest={t.blob}&offset=0&length={bad}"
                 "&min=256&avg=1024&max=4096", statuses=(400,)),
            Case(f"chunk list avg={short}", "GET",
                 f"/connreg/v1/sync/chunks?repo={REPO}&digest={t.blob}&offset=0&length=1"
                 f"&min=256&avg={bad}&max=4096", statuses=(400,)),
            Case(f"plan offset={short}", "POST",
                 f"/connreg/v1/sync/uploads/{{upload_id}}?repo={REPO}&offset={bad}", body=b"",
                 statuses=(400,)),
        ]
        if bad != "1.5":  # a valid number of seconds
            cases.append(Case(f"gc grace={short}", "POST",
                              f"/connreg/v1/gc?dryRun=true&gracePeriodSeconds={bad}",
                              statuses=(400,)))
        if bad == bad.strip() != "":  # HTTP strips a header value's outer whitespace
            for header in (f"bytes={bad}-", f"bytes=0-{bad}", f"bytes=-{bad}"):
                for method in ("GET", "HEAD"):
                    cases.append(Case(f"{method} blob Range {header[:20]}", method, blob_url,
                                      {"Range": header}, statuses=(416,)))
            for header in (f"{bad}-0", f"0-{bad}", f"bytes {bad}-5/*"):
                cases.append(Case(f"PATCH Content-Range {header[:20]}", "PATCH", upload_url,
                                  {"Content-Range": header}, b"x",
                                  codes=("BLOB_UPLOAD_INVALID",), statuses=(416,)))
            cases.append(Case(f"PUT Content-Range 0-{short}", "PUT",
                              upload_url + f"?digest={sha256(b'x')}",
                              {"Content-Range": f"0-{bad}"}, b"x", statuses=(416,)))
    for bad in BAD_SECONDS:
        cases.append(Case(f"changes wait={bad[:12]}", "GET", f"/connreg/v1/sync/changes?wait={bad}",
                          statuses=(400,)))

    # Chunked PATCH bodies against their Content-Range (sessions hold 2 bytes, so ranges
    # start at 2): longer or shorter → 416, nothing kept.
    cases += [
        Case("chunked PATCH 2-2 with 100,000 bytes", "PATCH", upload_url,
             {"Content-Range": "2-2"}, lambda: iter([b"x" * 50_000, b"y" * 50_000]),
             codes=("BLOB_UPLOAD_INVALID",), statuses=(416,)),
        Case("chunked PATCH 2-101 with 50 bytes", "PATCH", upload_url,
             {"Content-Range": "2-101"}, lambda: iter([b"x" * 25, b"y" * 25]),
             codes=("BLOB_UPLOAD_INVALID",), statuses=(416,)),
        Case("chunked PATCH 2-101 with no body", "PATCH", upload_url,
             {"Content-Range": "2-101"}, lambda: iter([]),
             codes=("BLOB_UPLOAD_INVALID",), statuses=(416,)),
        Case("chunked PUT 2-11 with 11 bytes", "PUT",
             upload_url + f"?digest={sha256(b'ab' + b'x' * 11)}",
             {"Content-Range": "2-11"}, lambda: iter([b"x" * 11]), statuses=(416,)),
        Case("PATCH Content-Range end before start", "PATCH", upload_url,
             {"Content-Range": "5-1"}, b"x", statuses=(416,)),
        Case("PATCH Content-Range and Content-Length disagree", "PATCH", upload_url,
             {"Content-Range": "2-2"}, b"xyz", statuses=(416,)),
    ]

    # Manifests: lenient or hostile documents are MANIFEST_INVALID and store nothing.
    put = f"/v2/{REPO}/manifests/hostile"
    ct = {"Content-Type": OCI_MANIFEST}

    def layer_annotation(doc):
        doc["layers"][0]["annotations"] = {"n": 1}

    def config_size(delta):
        def change(doc):
            doc["config"]["size"] = t.config_size + delta
        return change

    def layer_size(value):
        def change(doc):
            doc["layers"][0]["size"] = value
        return change

    good = manifest_body(t)
    manifests = [
        ("nested 100k deep", DEEP_JSON), ("object nested 100k deep", DEEP_OBJECT),
        ("schemaVersion 2.0", manifest_body(t, schemaVersion=2.0)),
        ("schemaVersion '2'", manifest_body(t, schemaVersion="2")),
        ("schemaVersion true", good.replace(b'"schemaVersion": 2', b'"schemaVersion": true')),
        ("schemaVersion 2 with 4301 digits",
         good.replace(b'"schemaVersion": 2', b'"schemaVersion": ' + b"9" * 4301)),
        ("UTF-16", good.decode().encode("utf-16")),
        ("UTF-16-LE without BOM", good.decode().encode("utf-16-le")),
        ("UTF-8 BOM", b"\xef\xbb\xbf" + good),
        ("invalid UTF-8", good.replace(b'"layers"', b'"layers", "x\xff": 1, "layers"')),
        ("annotation value a number", manifest_body(t, annotations={"a": 1})),
        ("annotations a list", manifest_body(t, annotations=["a"])),
        ("layer annotation a number", manifest_body(t, x=layer_annotation)),
        ("config size one more than stored", manifest_body(t, x=config_size(1))),
        ("config size one less than stored", manifest_body(t, x=config_size(-1))),
        ("layer size 2^64", manifest_body(t, x=layer_size(2**64))),
        ("layer size -1", manifest_body(t, x=layer_size(-1))),
        ("layer size 3000.0", manifest_body(t, x=layer_size(float(t.layer_size)))),
        ("layer size 1e999", good.replace(f'"size": {t.layer_size}'.encode(), b'"size": 1e999')),
        ("layer size NaN", good.replace(f'"size": {t.layer_size}'.encode(), b'"size": NaN')),
        ("empty", b""), ("whitespace", b"  \n"),
    ]
    for label, body in manifests:
        cases.append(Case(f"manifest {label}", "PUT", put, ct, body,
                          codes=("MANIFEST_INVALID",), statuses=(400,)))

    # JSON bodies of the sync, delta and management endpoints.
    json_endpoints = [
        ("sync status", f"/connreg/v1/sync/status"),
        ("chunk batch", f"/connreg/v1/sync/chunks?repo={REPO}&digest={t.blob}"),
        ("chunks known", f"/connreg/v1/sync/chunks/known?repo={REPO}"),
        ("chunks near", f"/connreg/v1/sync/chunks/near?repo={REPO}"),
        ("parked retry", "/connreg/v1/sync/parked/retry"),
        ("parked drop", "/connreg/v1/sync/parked/drop"),
        ("gc", "/connreg/v1/gc?dryRun=true"),
        ("scope map", "/connreg/v1/scope-maps"),
        ("token", "/connreg/v1/tokens"),
        ("connected registry", "/connreg/v1/connected-registries"),
    ]
    hostile_json = [("nested 100k deep", DEEP_JSON), ("object nested 100k deep", DEEP_OBJECT),
                    ("invalid UTF-8", b'{"a": "\xff\xfe"}'), ("UTF-16", '{"a": 1}'.encode("utf-16")),
                    ("number 1e999", b'{"a": 1e999}'), ("NaN", b'{"a": NaN}'),
                    ("4301 digits", b'{"a": ' + b"9" * 4301 + b"}"),
                    ("not JSON", b"{\x00"), ("a list", b"[1]")]
    for label, path in json_endpoints:
        for what, body in hostile_json:
            cases.append(Case(f"{label} {what}", "POST", path,
                              {"Content-Type": "application/json"}, body))
    cases += [
        Case("sync status registries not objects", "POST", "/connreg/v1/sync/status",
             {"Content-Type": "application/json"}, b'{"registries": [1, "x", null]}',
             statuses=(400,)),
        Case("chunk batch range 2^64", "POST",
             f"/connreg/v1/sync/chunks?repo={REPO}&digest={t.blob}", {},
             json.dumps({"ranges": [[0, 2**64]]}).encode()),
        Case("chunk batch range floats", "POST",
             f"/connreg/v1/sync/chunks?repo={REPO}&digest={t.blob}", {},
             b'{"ranges": [[0.0, 1e300]]}'),
        Case("chunks near length 2^63", "POST", f"/connreg/v1/sync/chunks/near?repo={REPO}", {},
             json.dumps({"params": "fastcdc-blake3:256:1024:4096", "before": "0" * 64,
                         "after": None, "length": 2**63, "ids": []}).encode()),
        Case("parked seqs 2^64", "POST", "/connreg/v1/sync/parked/retry", {},
             json.dumps({"seqs": [2**64]}).encode()),
        Case("gc grace 1e300 in body", "POST", "/connreg/v1/gc", {},
             b'{"dryRun": true, "gracePeriodSeconds": 1e300}'),
        Case("connected registry messageTtl of 5000 digits", "POST",
             "/connreg/v1/connected-registries", {},
             json.dumps({"name": "hostile-cr", "repositories": ["team/app"],
                         "messageTtl": "P" + "9" * 5000 + "D"}).encode()),
        Case("connected registry messageTtl with unicode digits", "POST",
             "/connreg/v1/connected-registries", {},
             json.dumps({"name": "hostile-cr", "repositories": ["team/app"],
                         "messageTtl": "P١D"}).encode()),
        Case("connected registry syncWindow of 19 nines", "POST",
             "/connreg/v1/connected-registries", {},
             json.dumps({"name": "hostile-cr", "repositories": ["team/app"],
                         "syncSchedule": "0 */6 * * *",
                         "syncWindow": "PT9999999999999999999H"}).encode()),
        Case("connected registry bandwidthLimit 1e300", "POST",
             "/connreg/v1/connected-registries", {},
             b'{"name": "hostile-cr", "repositories": ["team/app"], "bandwidthLimit": 1e300}'),
        Case("connected registry syncSchedule of 5000 digits", "POST",
             "/connreg/v1/connected-registries", {},
             json.dumps({"name": "hostile-cr", "repositories": ["team/app"],
                         "syncSchedule": "9" * 5000 + " * * * *",
                         "syncWindow": "PT2H"}).encode()),
        Case("token expiry of 19 nines of days", "POST", "/connreg/v1/tokens", {},
             json.dumps({"name": "hostile-token", "actions": [f"repositories/{REPO}/content/read"],
                         "expiry": "P9999999999999999999D"}).encode()),
    ]
    return cases


def claims(t: Target) -> list[Case]:
    """Bodies that claim 100 MB and carry a few bytes: refused from the header alone."""
    paths = [f"/v2/{REPO}/manifests/claim", "/connreg/v1/sync/status",
             f"/connreg/v1/sync/chunks/known?repo={REPO}", "/connreg/v1/scope-maps",
             "/connreg/v1/gc?dryRun=true", "/connreg/v1/sync/parked/retry",
             f"/connreg/v1/sync/chunks?repo={REPO}&digest={t.blob}"]
    return [Case(f"100 MB claim {p[:40]}", "PUT" if "/manifests/" in p else "POST", p,
                 {"Content-Length": str(HUGE_CLAIM), "Content-Type": "application/json"}, b"{}",
                 statuses=(413, 400)) for p in paths]


def new_session(client: httpx.Client) -> tuple[str, str]:
    r = client.post(f"/v2/{REPO}/blobs/uploads/")
    assert r.status_code == 202, r.text
    location = r.headers["Location"]
    return location.rsplit("/", 1)[1], location


def snapshot(t: Target) -> dict:
    """What a refused request must not change: repositories, tags, the change log, control
    resources, stored blobs."""
    c = t.client
    blobs = sorted(p.name for p in (t.node.data_dir / "store" / "blobs").rglob("*") if p.is_file())
    return {
        "catalog": c.get("/v2/_catalog").json(),
        "tags": c.get(f"/v2/{REPO}/tags/list").json(),
        "head": c.get("/connreg/v1/sync/changes?peek=1").json()["head"],
        "scopeMaps": c.get("/connreg/v1/scope-maps").json(),
        "tokens": c.get("/connreg/v1/tokens").json(),
        "registries": c.get("/connreg/v1/connected-registries").json(),
        "blobs": blobs,
    }


def raw_header(value: str) -> bytes:
    """A header value as its UTF-8 bytes on the wire (httpx encodes str values as ASCII)."""
    return value.encode("utf-8")


def send(client: httpx.Client, case: Case, upload_id: str = "") -> httpx.Response:
    path = case.path.replace("{upload_id}", upload_id)
    body = case.body() if callable(case.body) else case.body
    headers = {k: raw_header(v) for k, v in case.headers.items()}
    return client.request(case.method, path, headers=headers, content=body)


def raw_request(node: Node, case: Case) -> httpx.Response:
    """Send `case` over a plain socket (httpx will not send fewer bytes than Content-Length
    says) and read the answer."""
    head = f"{case.method} {case.path} HTTP/1.1\r\nHost: {node.host}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in case.headers.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", node.port), timeout=60) as sock:
        sock.sendall(head.encode("latin-1") + (case.body or b""))
        data = b""
        while b"\r\n\r\n" not in data:
            piece = sock.recv(65536)
            assert piece, f"{case.label}: connection closed without an answer"
            data += piece
        head_bytes, _, body = data.partition(b"\r\n\r\n")
        lines = head_bytes.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = dict(line.split(": ", 1) for line in lines[1:])
        length = int({k.lower(): v for k, v in headers.items()}.get("content-length", "0"))
        while len(body) < length:
            piece = sock.recv(65536)
            assert piece, f"{case.label}: connection closed mid-answer"
            body += piece
    return httpx.Response(status, headers=headers, content=body[:length])


def assert_refused(case: Case, r: httpx.Response) -> None:
    assert 400 <= r.status_code < 500, f"{case.label}: {r.status_code} {r.text[:300]}"
    if case.statuses:
        assert r.status_code in case.statuses, f"{case.label}: {r.status_code} {r.text[:300]}"
    if case.method == "HEAD":
        return  # no body to carry the error
    errors = r.json()["errors"]
    assert isinstance(errors[0]["code"], str) and errors[0]["message"], case.label
    if case.codes:
        assert errors[0]["code"] in case.codes, f"{case.label}: {r.text[:300]}"


def upload_size(client: httpx.Client, location: str) -> int:
    r = client.get(location)
    assert r.status_code == 204, r.text
    return int(r.headers["Range"].rsplit("-", 1)[1]) + (0 if r.headers["Range"] == "0-0" else 1)


def test_hostile_table(target):
    """Every case: a 4xx with an OCI error body, nothing stored, the node still answering."""
    t, c = target, target.client
    before = snapshot(t)
    cases = table(t)
    assert len(cases) > 300
    failures = []
    for case in cases:
        upload_id, location = new_session(c) if "{upload_id}" in case.path else ("", "")
        if location:  # a session holding two bytes: a refused request must leave it so
            assert c.patch(location, content=b"ab",
                           headers={"Content-Range": "0-1"}).status_code == 202
        try:
            assert_refused(case, send(c, case, upload_id))
            if location:
                # unchanged (all of these bodies are under the 1 MiB checked before writing)
                assert upload_size(c, location) == 2, f"{case.label}: session changed"
        except (AssertionError, ValueError, KeyError, httpx.HTTPError) as exc:
            failures.append(f"{case.label}: {type(exc).__name__} {str(exc)[:300]}")
        if location:
            c.delete(location)
    assert not failures, f"{len(failures)} of {len(cases)} cases:\n" + "\n".join(failures[:60])
    assert c.get("/v2/").status_code == 200
    assert snapshot(t) == before


def test_body_size_claims_are_refused_from_the_header(target):
    """100 MB Content-Length claims with a 2-byte body: refused before reading (in parallel:
    each waits for the server to give up on the missing bytes)."""
    t = target
    before = snapshot(t)

    def one(case: Case) -> tuple[Case, httpx.Response]:
        return case, raw_request(t.node, case)

    with ThreadPoolExecutor(8) as pool:
        for case, r in pool.map(one, claims(t)):
            assert_refused(case, r)
    assert t.client.get("/v2/").status_code == 200
    assert snapshot(t) == before


def test_long_chunked_patch_past_its_range_discards_the_session(target):
    """Past the 1 MiB checked before writing, a body longer than its Content-Range cannot be
    taken back from an append-only upload: the session is discarded (416 says so), so the bytes
    can never become part of a blob."""
    c = target.client
    upload_id, location = new_session(c)
    end = 2 * 1024 * 1024 - 1
    r = c.patch(location, headers={"Content-Range": f"0-{end}"},
                content=iter([b"z" * (1024 * 1024)] * 3))
    assert r.status_code == 416 and error_codes(r) == ["BLOB_UPLOAD_INVALID"]
    assert "discarded" in r.json()["errors"][0]["message"]
    assert c.get(location).status_code == 404
    # The exact length is accepted, chunked or not, and completes a blob.
    _, location = new_session(c)
    data = bytes(range(256)) * 8192
    r = c.patch(location, headers={"Content-Range": f"0-{len(data) - 1}"},
                content=iter([data[:1_000_000], data[1_000_000:]]))
    assert r.status_code == 202, r.text
    r = c.put(r.headers["Location"], params={"digest": sha256(data)})
    assert r.status_code == 201, r.text


def test_generated_number_variants(target):
    """A seeded generator of more number spellings in every numeric slot: valid ones may
    succeed, nothing may answer 5xx, every refusal is an OCI error body."""
    t, c = target, target.client
    rng = random.Random(9)
    pieces = ["0", "7", "9" * 19, "9" * 20, "1" * 4400, "-", "+", ".", "e", "E", "999", " ",
              "\t", "_", "x", "١", "٢", "²", "½", "Ⅻ", "０", "inf", "nan", "%00", "1e308"]

    def number() -> str:  # at most 5,000 characters: requests stay under the header limit
        return "".join(rng.choice(pieces) for _ in range(rng.randint(0, 4)))[:5000]

    def q() -> str:  # a number as a query value, percent-encoded as any client would
        return quote(number(), safe="")

    slots = [
        lambda v: ("GET", f"/v2/_catalog?n={q()}", {}),
        lambda v: ("GET", f"/v2/{REPO}/tags/list?n={q()}", {}),
        lambda v: ("GET", f"/v2/{REPO}/blobs/{t.blob}", {"Range": f"bytes={v}-{number()}"}),
        lambda v: ("GET", f"/connreg/v1/sync/changes?cursor={q()}&limit={q()}", {}),
        lambda v: ("GET", f"/connreg/v1/sync/changes?wait={q()[:30]}&cursor=999999", {}),
        lambda v: ("GET", f"/connreg/v1/sync/chunks?repo={REPO}&digest={t.blob}&offset={q()}"
                          f"&length={q()}&min=256&avg=1024&max=4096", {}),
    ]
    before = snapshot(t)
    for i in range(150):
        value = number()
        method, path, headers = slots[i % len(slots)](value)
        try:
            r = c.request(method, path,  # (outer whitespace is not sent in HTTP headers)
                          headers={k: raw_header(v.strip(" \t")) for k, v in headers.items()})
        except httpx.TimeoutException:
            pytest.fail(f"{path[:80]} {headers}: no answer")
        assert r.status_code < 500, f"{method} {path[:80]} {headers}: {r.text[:300]}"
        if r.status_code >= 400:
            assert isinstance(r.json()["errors"][0]["code"], str)
    _, location = new_session(c)
    for _ in range(30):  # Content-Range spellings on one session
        header = f"{number()}-{number()}".strip(" \t")
        r = c.patch(location, content=b"q", headers={"Content-Range": raw_header(header)})
        assert r.status_code in (202, 416), f"{header!r}: {r.status_code} {r.text[:200]}"
        if r.status_code == 202:
            location = r.headers["Location"]
        else:
            assert error_codes(r) == ["BLOB_UPLOAD_INVALID"]
    c.delete(location)
    assert c.get("/v2/").status_code == 200
    assert snapshot(t) == before


# --- with token auth on -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def auth_node(tmp_path_factory) -> Iterator[Node]:
    node = start_node(tmp_path_factory.mktemp("hostile-auth") / "root",
                      admin_password=ADMIN_PASSWORD,
                      env={"CONNREG_AUTH_FAILURE_LIMIT": "1000"})
    yield node
    node.stop()


def challenge_scope(r: httpx.Response) -> str:
    header = r.headers["WWW-Authenticate"]
    return header.split('scope="', 1)[1].split('"', 1)[0]


def test_mount_challenge_names_the_source_and_one_token_covers_both(auth_node):
    """The 401 for `POST …/uploads/?mount=D&from=R` asks for pull on R too, so a client that
    follows the challenge gets a token for both repositories and the mount happens (201)."""
    node = auth_node
    with httpx.Client(base_url=node.url, timeout=60, auth=node.admin) as admin:
        digest = push_blob(admin, "mount/source", b"shared layer bytes")
    url = f"{node.url}/v2/mount/target/blobs/uploads/"
    params = {"mount": digest, "from": "mount/source"}
    r = httpx.post(url, params=params)
    assert r.status_code == 401 and error_codes(r) == ["UNAUTHORIZED"]
    scope = challenge_scope(r)
    assert scope == "repository:mount/target:pull,push repository:mount/source:pull"
    # One token request carries both scopes (space-separated in one `scope` parameter).
    tok = httpx.get(f"{node.url}/oauth2/token", auth=node.admin,
                    params={"service": "connreg", "scope": scope})
    assert tok.status_code == 200, tok.text
    assert tok.json()["scope"] == ("repository:mount/source:pull "
                                   "repository:mount/target:pull,push")
    r = httpx.post(url, params=params, headers={"Authorization": f"Bearer {tok.json()['token']}"})
    assert r.status_code == 201, r.text
    assert r.headers["Location"] == f"/v2/mount/target/blobs/{digest}"
    # A token for the target alone, held by someone who may pull the source: fetch a wider one.
    narrow = httpx.get(f"{node.url}/oauth2/token", auth=node.admin, params={
        "service": "connreg", "scope": "repository:mount/other:pull,push"}).json()["token"]
    r = httpx.post(f"{node.url}/v2/mount/other/blobs/uploads/", params=params,
                   headers={"Authorization": f"Bearer {narrow}"})
    assert r.status_code == 401
    assert 'error="insufficient_scope"' in r.headers["WWW-Authenticate"]
    assert challenge_scope(r) == "repository:mount/other:pull,push repository:mount/source:pull"
    # Several `scope` parameters in one request work the same way.
    tok = httpx.get(f"{node.url}/oauth2/token", auth=node.admin, params={
        "service": "connreg", "scope": ["repository:mount/other:pull,push",
                                        "repository:mount/source:pull"]})
    r = httpx.post(f"{node.url}/v2/mount/other/blobs/uploads/", params=params,
                   headers={"Authorization": f"Bearer {tok.json()['token']}"})
    assert r.status_code == 201, r.text


def test_mount_from_an_unreadable_repository_becomes_an_upload(auth_node):
    """A token that may push the target but never pull the source is not sent round the
    challenge loop: the mount is skipped and an ordinary upload session starts (202)."""
    node = auth_node
    with httpx.Client(base_url=node.url, auth=node.admin, timeout=60) as registry:
        digest = push_blob(registry, "secret/source", b"private layer")
    with httpx.Client(base_url=f"{node.url}/connreg/v1", auth=node.admin, timeout=60) as admin:
        r = admin.post("/tokens", json={"name": "pusher-token", "actions": [
            f"repositories/open/target/{verb}" for verb in (
                "content/read", "content/write", "metadata/read", "metadata/write")]})
        assert r.status_code == 201, r.text
        password = r.json()["passwords"][0]["value"]
    tok = httpx.get(f"{node.url}/oauth2/token", auth=("pusher-token", password), params={
        "service": "connreg",
        "scope": "repository:open/target:pull,push repository:secret/source:pull"})
    assert tok.json()["scope"] == "repository:open/target:pull,push"
    r = httpx.post(f"{node.url}/v2/open/target/blobs/uploads/",
                   params={"mount": digest, "from": "secret/source"},
                   headers={"Authorization": f"Bearer {tok.json()['token']}"})
    assert r.status_code == 202, r.text
    assert httpx.head(f"{node.url}/v2/open/target/blobs/{digest}", auth=node.admin).status_code == 404


def test_hostile_credentials_and_token_requests(auth_node):
    """Malformed credentials and token requests: 4xx with an OCI body, the node alive."""
    node = auth_node
    url = node.url
    bad_basic = ["Basic", "Basic " + "A" * 5000, "Basic !!!!", "Basic " +
                 base64.b64encode(b"\xff\xfe:\xff").decode(), "Basic " +
                 base64.b64encode(b"admin").decode(), "Bearer", "Bearer " + "x" * 5000,
                 "Bearer a.b.c", "Bearer " + ".".join(["e30"] * 3), "Negotiate abc", "Basic :"]
    for value in bad_basic:
        for path in ("/v2/", f"/v2/{REPO}/tags/list", "/connreg/v1/tokens",
                     "/connreg/v1/sync/changes?cursor=1e999"):
            r = httpx.get(url + path, headers={"Authorization": value})
            assert r.status_code in (400, 401), f"{value[:20]} {path}: {r.status_code} {r.text}"
            assert isinstance(r.json()["errors"][0]["code"], str)
    forms = [{"grant_type": "password", "username": "admin", "password": "x" * 100_000},
             {"grant_type": "refresh_token", "refresh_token": "\u0661" * 100},
             {"grant_type": "password", "username": "\x00", "password": "\x00"},
             {"grant_type": "nope"}, {}]
    for form in forms:
        r = httpx.post(f"{url}/oauth2/token", data=form)
        assert 400 <= r.status_code < 500, f"{str(form)[:60]}: {r.status_code} {r.text[:200]}"
        assert isinstance(r.json()["errors"][0]["code"], str)
    # A form sent chunked (no Content-Length) is still held to the size limit, as it streams.
    def endless_form():
        yield b"grant_type=password&username=admin&scope="
        for _ in range(40):
            yield b"repository:a:pull+" * 200
    r = httpx.post(f"{url}/oauth2/token", content=endless_form(),
                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413 and r.json()["errors"][0]["code"] == "SIZE_INVALID", r.text
    r = httpx.post(f"{url}/oauth2/token", data={"grant_type": "password", "username": "admin",
                                                "password": node.admin_password,
                                                "scope": [f"repository:r{i}:pull"
                                                          for i in range(300)]})
    assert r.status_code == 400 and r.json()["errors"][0]["code"] == "INVALID", r.text
    r = httpx.post(f"{url}/oauth2/token", data={"grant_type": "password", "username": "admin",
                                                "password": node.admin_password,
                                                "scope": "repository:a/b:pull"})
    assert r.status_code == 200 and r.json()["token"], r.text
    r = httpx.get(f"{url}/oauth2/token", auth=node.admin,
                  params={"service": "connreg", "scope": ["repository::pull",
                                                          "repository:" + "a" * 5000 + ":pull",
                                                          "registry:catalog:*" * 100]})
    assert r.status_code == 200 and r.json()["scope"] == ""
    # Authenticated admin, hostile numbers and bodies: still refused cleanly.
    with httpx.Client(base_url=url, auth=node.admin, timeout=60) as admin:
        r = admin.get("/connreg/v1/sync/changes", params={"cursor": "9" * 4301})
        assert r.status_code == 400 and r.json()["errors"][0]["code"] == "INVALID"
        r = admin.post("/connreg/v1/scope-maps", content=DEEP_JSON)
        assert r.status_code == 400
        r = admin.put("/v2/auth/app/manifests/x", content=DEEP_JSON,
                      headers={"Content-Type": OCI_MANIFEST})
        assert r.status_code == 400 and error_codes(r) == ["MANIFEST_INVALID"]
        assert admin.get("/v2/").status_code == 200


# --- the parsers themselves ---------------------------------------------------------------------

def test_bounded_parsers_take_only_plain_numbers_in_range():
    from connreg.errors import RegistryError
    from connreg.parsing import INT64_MAX, bounded_int, bounded_seconds

    assert bounded_int("0", "n") == 0 and bounded_int("007", "n") == 7
    assert bounded_int(str(INT64_MAX), "n") == INT64_MAX
    assert bounded_int("5", "n", 5, 5) == 5
    for bad in [*BAD_NUMBERS, "", str(INT64_MAX + 1), None]:
        with pytest.raises(RegistryError):
            bounded_int(bad, "n")
    with pytest.raises(RegistryError):
        bounded_int("6", "n", 0, 5)
    assert bounded_seconds("20.0", "wait", 30) == 20.0 and bounded_seconds("0", "wait", 30) == 0
    for bad in [*BAD_SECONDS, "30.5", None]:
        with pytest.raises(RegistryError):
            bounded_seconds(bad, "wait", 30)


def test_json_depth_is_found_without_recursion_and_strings_do_not_count():
    from connreg.errors import RegistryError
    from connreg.parsing import MAX_JSON_DEPTH, json_depth_exceeds, strict_json

    def nested(depth: int, opener: bytes = b"[", closer: bytes = b"]") -> bytes:
        return opener * depth + closer * depth

    assert not json_depth_exceeds(nested(MAX_JSON_DEPTH))
    assert json_depth_exceeds(nested(MAX_JSON_DEPTH + 1))
    mixed = b'{"a":[' * 40 + b"1" + b"]}" * 40  # 80 levels, alternating
    assert json_depth_exceeds(mixed)
    assert strict_json(nested(MAX_JSON_DEPTH))  # accepted and parsed
    # Brackets inside strings, escaped quotes included, are text, not nesting.
    text = b'{"a": "' + b"[{" * 500 + b'\\"' + b"[" * 100 + b'", "b": ["]]]\\\\"]}'
    assert not json_depth_exceeds(text)
    assert strict_json(text)["b"] == ["]]]\\"]
    assert json_depth_exceeds(b"[" * 100_000)  # unbalanced, deep
    for bad in (b"]" * 1000 + b"[", nested(100_000), DEEP_OBJECT, b'{"a": 1e999}',
                b'[-' + b"9" * 20 + b"]", b"\xef\xbb\xbf{}", '{"é": 1}'.encode("utf-16")):
        with pytest.raises(RegistryError):
            strict_json(bad)
    assert strict_json(b'{"a": -9223372036854775808, "b": 1.5e300}') == {
        "a": -2**63, "b": 1.5e300}
