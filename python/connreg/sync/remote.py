"""The parent registry, seen from a child: OCI Distribution calls plus the sync endpoints.

Every call raises `ParentUnavailable` for what is transient (connection errors, timeouts, 5xx,
429: the caller backs off and retries later) and `ParentRefused` for other 4xx answers, naming
the request (method, URL), the status and the parent's error code and message. Which refusals
are about one outbox entry (and park it) and which about the link is `sync/parked.py`'s call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import AsyncIterator
from urllib.parse import urlsplit

import httpx

from connreg.delta.plan import CONTENT_TYPE as PLAN_CONTENT_TYPE
from connreg.sync.upload_batch_format import MEDIA_TYPE as UPLOAD_BATCH_TYPE
from connreg.tls import unreachable_reason, verifying_context

MANIFEST_ACCEPT = ", ".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])


class ParentUnavailable(Exception):
    """The parent cannot be reached right now (network, 5xx, 429)."""


class ParentBusy(ParentUnavailable):
    """The parent answered 429: reachable, but asking this node to slow down."""


def _transient(status: int, what: str) -> ParentUnavailable:
    """The exception for a 5xx or 429 answer (429 is not "unreachable": the log says so)."""
    if status == 429:
        return ParentBusy(f"{what}: HTTP 429 (too many requests)")
    return ParentUnavailable(f"{what}: HTTP {status}")


class TagMoved(Exception):
    """A conditional tag update at the parent found the tag elsewhere (HTTP 412)."""


# `if_tag_is` value for an unconditional tag update
ANY = object()


class ParentRefused(Exception):
    """The parent answered with a definitive error (4xx other than 429); `method` and `url`
    name the refused request, so logs and parked outbox entries can say which one."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 detail: object = None, method: str = "", url: str = ""):
        request = f"{method} {url} answered " if method else ""
        super().__init__(f"{request}HTTP {status}{' ' + code if code else ''}: {message}")
        self.status = status
        self.code = code  # the OCI error code, when the body had one
        self.message = message
        self.detail = detail
        self.method = method
        self.url = url


class UploadOutOfStep(Exception):
    """An append to an upload session did not start where the parent's copy ends (HTTP 416);
    `size` is the parent's size when it said so."""

    def __init__(self, size: int | None):
        super().__init__(f"the parent's upload session holds {size} bytes")
        self.size = size


@dataclass
class Manifest:
    body: bytes
    media_type: str
    digest: str


def _error(resp: httpx.Response) -> dict:
    try:
        entry = resp.json()["errors"][0]
        return entry if isinstance(entry, dict) else {}
    except (ValueError, KeyError, IndexError, TypeError):
        return {}


def _message(resp: httpx.Response) -> str:
    message = _error(resp).get("message")
    if message:
        return message
    if resp.request.method == "HEAD":
        # The body a HEAD answer lacks; newer parents name the reason in a header.
        return resp.headers.get("Connreg-Error") or "(HEAD: no body)"
    return resp.reason_phrase or "(no message)"


def _refused(resp: httpx.Response) -> ParentRefused:
    entry = _error(resp)
    code, message = entry.get("code"), _message(resp)
    header = resp.headers.get("Connreg-Error")
    if code is None and resp.request.method == "HEAD" and header:
        code, _, message = header.partition(": ")  # "CODE: message" (app.py error_header)
    return ParentRefused(resp.status_code, message, code,
                         entry.get("detail"), method=resp.request.method,
                         url=str(resp.request.url))


class ParentClient:
    def __init__(self, base_url: str, auth: tuple[str, str] | None,
                 meter=None, timeout: float = 60.0, ca_file: str = ""):
        self.base_url = base_url.rstrip("/")
        # `meter` counts bytes and may throttle them (bandwidth cap); None means unmetered.
        self.meter = meter
        # An https parent is verified against `ca_file` or the system store (tls/client.py).
        self.ca_file = ca_file
        self._client = httpx.AsyncClient(base_url=self.base_url, auth=auth,
                                         timeout=httpx.Timeout(timeout, connect=10.0),
                                         limits=httpx.Limits(max_connections=8),
                                         verify=verifying_context(ca_file))

    def _why(self, exc: httpx.HTTPError) -> str:
        """The reason in a ParentUnavailable: a refused certificate says so and names the CA."""
        return unreachable_reason(exc, urlsplit(self.base_url).netloc, self.ca_file)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _request(self, method: str, url: str, ok=(200,), **kwargs) -> httpx.Response:
        try:
            resp = await self._client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise ParentUnavailable(f"{method} {url}: {self._why(exc)}") from exc
        if resp.status_code in ok:
            return resp
        if resp.status_code >= 500 or resp.status_code == 429:
            raise _transient(resp.status_code, f"{method} {url}")
        raise _refused(resp)

    # --- sync endpoints ---------------------------------------------------------------------
    async def changes(self, cursor: int, wait: float, config: str | None = None,
                      limit: int = 500) -> dict:
        params = {"cursor": cursor, "wait": f"{wait:.1f}", "limit": limit}
        if config:
            params["config"] = config
        resp = await self._request(
            "GET", "/connreg/v1/sync/changes", params=params,
            timeout=httpx.Timeout(wait + 30.0, connect=10.0))
        return resp.json()

    async def head(self) -> int:
        resp = await self._request("GET", "/connreg/v1/sync/changes", params={"peek": 1})
        return resp.json()["head"]

    async def report_status(self, statuses: list[dict], audit: dict | None = None) -> dict:
        """Report states; with `audit`, a batch of audit events (metered, as sync traffic).
        The parent's answer (its `audit` acknowledgement, when it took events)."""
        doc: dict = {"registries": statuses}
        if audit is not None:
            doc["audit"] = audit
        body = json.dumps(doc).encode()
        if audit is not None and self.meter:
            await self.meter.account(len(body))
        resp = await self._request("POST", "/connreg/v1/sync/status", ok=(200, 204),
                                   content=body, headers={"Content-Type": "application/json"})
        try:
            answer = resp.json() if resp.content else {}
        except ValueError:
            answer = {}
        return answer if isinstance(answer, dict) else {}

    async def config(self) -> dict:
        return (await self._request("GET", "/connreg/v1/sync/config")).json()

    async def locks(self, repo: str) -> list[dict] | None:
        """The lock rows of `repo` at the parent (connreg/locks/sync.py); None when the parent
        has no lock endpoint (an older version)."""
        resp = await self._request("GET", "/connreg/v1/sync/locks", ok=(200, 404),
                                   params={"repo": repo})
        if resp.status_code == 404:
            if _error(resp).get("code") == "NOT_FOUND":  # no such endpoint
                return None
            return []
        if self.meter:
            await self.meter.account(len(resp.content))
        rows = resp.json().get("locks")
        return rows if isinstance(rows, list) else []

    async def explain_refusal(self, url: str) -> tuple[str | None, str | None]:
        """The parent's error code and message for `url`, asked with GET after a HEAD there was
        refused (a HEAD answer carries no body). (None, None) when the GET says nothing more;
        a body is read only from an error answer, and at most 64 KiB of it."""
        try:
            async with self._client.stream("GET", url) as resp:
                if resp.status_code < 400:
                    return None, None
                body = b""
                async for piece in resp.aiter_raw(1 << 14):
                    body += piece
                    if len(body) >= 1 << 16:
                        break
        except httpx.HTTPError:
            return None, None
        try:
            entry = json.loads(body)["errors"][0]
            return entry.get("code"), entry.get("message")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return None, None

    # --- OCI reads ----------------------------------------------------------------------------
    async def get_manifest(self, repo: str, reference: str) -> Manifest | None:
        resp = await self._request("GET", f"/v2/{repo}/manifests/{reference}", ok=(200, 404),
                                   headers={"Accept": MANIFEST_ACCEPT})
        if resp.status_code == 404:
            return None
        body = resp.content
        if self.meter:
            await self.meter.account(len(body))
        return Manifest(body, resp.headers.get("Content-Type", "").split(";")[0],
                        resp.headers.get("Docker-Content-Digest", ""))

    async def head_manifest(self, repo: str, reference: str) -> str | None:
        resp = await self._request("HEAD", f"/v2/{repo}/manifests/{reference}", ok=(200, 404),
                                   headers={"Accept": MANIFEST_ACCEPT})
        return resp.headers.get("Docker-Content-Digest") if resp.status_code == 200 else None

    async def manifest_absent(self, repo: str, digest: str) -> bool:
        """True only when the parent positively says it lacks manifest `digest` in `repo`
        (404 MANIFEST_UNKNOWN or NAME_UNKNOWN); False when it has it or says something else.
        A HEAD answer has no body, so a 404 is asked again with GET to read its error code."""
        path = f"/v2/{repo}/manifests/{digest}"
        headers = {"Accept": MANIFEST_ACCEPT}
        if (await self._request("HEAD", path, ok=(200, 404), headers=headers)).status_code == 200:
            return False
        resp = await self._request("GET", path, ok=(200, 404), headers=headers)
        if self.meter:
            await self.meter.account(len(resp.content))
        return resp.status_code == 404 and \
            _error(resp).get("code") in ("MANIFEST_UNKNOWN", "NAME_UNKNOWN")

    async def list_tags(self, repo: str) -> list[str] | None:
        tags: list[str] = []
        last = None
        while True:
            params = {"n": 1000, **({"last": last} if last else {})}
            resp = await self._request("GET", f"/v2/{repo}/tags/list", ok=(200, 404),
                                       params=params)
            if resp.status_code == 404:
                return None
            page = resp.json().get("tags") or []
            tags.extend(page)
            if "Link" not in resp.headers or not page:
                return tags
            last = page[-1]

    async def catalog(self) -> list[str]:
        repos: list[str] = []
        last = None
        while True:
            params = {"n": 1000, **({"last": last} if last else {})}
            resp = await self._request("GET", "/v2/_catalog", params=params)
            page = resp.json().get("repositories") or []
            repos.extend(page)
            if "Link" not in resp.headers or not page:
                return repos
            last = page[-1]

    async def referrers(self, repo: str, digest: str) -> list[dict]:
        resp = await self._request("GET", f"/v2/{repo}/referrers/{digest}", ok=(200, 404))
        if resp.status_code == 404:
            return []
        return resp.json().get("manifests") or []

    async def stream_blob(self, repo: str, digest: str, offset: int = 0
                          ) -> AsyncIterator[bytes]:
        """The blob's bytes from `offset` on (HTTP Range), for resuming an interrupted fetch."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            async with self._client.stream("GET", f"/v2/{repo}/blobs/{digest}",
                                           headers=headers) as resp:
                if resp.status_code >= 500 or resp.status_code == 429:
                    raise _transient(resp.status_code, f"GET blob {digest}")
                if resp.status_code not in (200, 206):
                    await resp.aread()
                    raise _refused(resp)
                if offset and resp.status_code == 200:
                    raise ParentRefused(200, "parent ignored the Range header")
                async for chunk in resp.aiter_raw(1 << 20):
                    yield chunk
                    # Metered after the caller stored it: a window closing while the cap
                    # makes us wait must not lose bytes that already arrived.
                    if self.meter:
                        await self.meter.account(len(chunk))
        except httpx.HTTPError as exc:
            raise ParentUnavailable(f"GET blob {digest}: {self._why(exc)}") from exc

    # --- delta transfer -------------------------------------------------------------------------
    async def chunk_list(self, repo: str, digest: str) -> dict | None:
        resp = await self._request("GET", "/connreg/v1/sync/chunks", ok=(200, 404),
                                   params={"repo": repo, "digest": digest})
        if resp.status_code == 404:
            return None
        if self.meter:
            await self.meter.account(len(resp.content))
        return resp.json()

    async def range_chunk_list(self, repo: str, digest: str, offset: int, length: int,
                               params) -> dict:
        """Finer chunks of one byte range of the blob (`params`: a `_core.ChunkParams`)."""
        resp = await self._request("GET", "/connreg/v1/sync/chunks", params={
            "repo": repo, "digest": digest, "offset": offset, "length": length,
            "min": params.min_size, "avg": params.avg_size, "max": params.max_size})
        if self.meter:
            await self.meter.account(len(resp.content))
        return resp.json()

    async def gzip_layer(self, repo: str, digest: str) -> dict | None:
        """The plaintext chunk list of an analysed gzip layer (docs/delta.md "Gzip layers"),
        `{"pending": true}` while its analysis is still to come, None when the parent cannot
        offer it (or has no such endpoint)."""
        resp = await self._request("GET", "/connreg/v1/sync/gzip", ok=(200, 202, 404),
                                   params={"repo": repo, "digest": digest})
        if self.meter:
            await self.meter.account(len(resp.content))
        return resp.json() if resp.status_code in (200, 202) else None

    async def gzip_recon(self, repo: str, digest: str) -> bytes:
        """The reconstruction file of an analysed gzip layer."""
        resp = await self._request("GET", "/connreg/v1/sync/gzip/recon",
                                   params={"repo": repo, "digest": digest})
        if self.meter:
            await self.meter.account(len(resp.content))
        return resp.content

    async def stream_chunks(self, repo: str, digest: str, ranges: list[list[int]],
                            piece: int = 64 * 1024, path: str = "/connreg/v1/sync/chunks"
                            ) -> AsyncIterator[bytes]:
        """A chunk batch frame (`POST /connreg/v1/sync/chunks`, docs/delta.md) as it arrives,
        in pieces of at most `piece` bytes: the caller keeps each chunk as soon as it is
        complete, so an interruption loses at most the one in flight. Each piece is metered
        after the caller has handled it."""
        try:
            async with self._client.stream("POST", path,
                                           params={"repo": repo, "digest": digest},
                                           json={"ranges": ranges}) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    if resp.status_code >= 500 or resp.status_code == 429:
                        raise _transient(resp.status_code, f"POST chunks of {digest}")
                    raise _refused(resp)
                async for data in resp.aiter_raw(piece):
                    yield data
                    if self.meter:
                        await self.meter.account(len(data))
        except httpx.HTTPError as exc:
            raise ParentUnavailable(f"POST chunks of {digest}: {self._why(exc)}") from exc

    async def gzip_base(self, repo: str, params: str, ids: list[str]) -> dict | None:
        """The parent's previous version of a gzip layer with these plaintext chunks
        (`{"base", "known"}`); None when it cannot take gzip layers by their change."""
        answer = await self._post_optional_json("/connreg/v1/sync/gzip/base", repo,
                                                {"params": params, "ids": ids})
        if answer is None:
            return None
        status, doc = answer
        if (not isinstance(doc, dict) or not isinstance(doc.get("known"), list)
                or len(doc["known"]) != len(ids)):
            raise ParentRefused(status, "malformed answer to gzip/base")
        return doc

    async def _post_optional_json(self, path: str, repo: str, document: dict
                                  ) -> tuple[int, object] | None:
        """POST a JSON document for a feature the parent may not offer, both ways under the
        bandwidth meter: (status, parsed answer), or None when the parent answers 400/404/405
        (an older version, the feature off, parameters it refuses)."""
        body = json.dumps(document).encode()
        if self.meter:
            await self.meter.account(len(body))
        try:
            resp = await self._request("POST", path, params={"repo": repo}, content=body,
                                       headers={"Content-Type": "application/json"})
        except ParentRefused as exc:
            if exc.status in (400, 404, 405):
                return None
            raise
        if self.meter:
            await self.meter.account(len(resp.content))
        return resp.status_code, resp.json()

    async def gzip_push_size(self, repo: str, digest: str) -> int:
        resp = await self._request("GET", "/connreg/v1/sync/gzip/push",
                                   params={"repo": repo, "digest": digest})
        return int(resp.json()["size"])

    async def gzip_push_append(self, repo: str, digest: str, base: str, offset: int,
                               body: bytes) -> int:
        if self.meter:
            await self.meter.account(len(body))
        resp = await self._request("POST", "/connreg/v1/sync/gzip/push", ok=(202,),
                                   params={"repo": repo, "digest": digest, "base": base,
                                           "offset": offset},
                                   content=body, headers={"Content-Type": PLAN_CONTENT_TYPE})
        return int(resp.json()["size"])

    async def gzip_push_finish(self, repo: str, digest: str, recon: bytes) -> None:
        if self.meter:
            await self.meter.account(len(recon))
        await self._request("PUT", "/connreg/v1/sync/gzip/push", ok=(201,),
                            params={"repo": repo, "digest": digest}, content=recon,
                            headers={"Content-Type": "application/octet-stream"})

    async def known_chunks(self, repo: str, params: str, ids: list[str]) -> list[bool] | None:
        """Which chunks the parent can copy itself for a push to `repo`; None when it cannot
        take chunks at all (no such endpoint, delta off, other chunking parameters)."""
        body = json.dumps({"params": params, "ids": ids}).encode()
        if self.meter:
            await self.meter.account(len(body))
        try:
            resp = await self._request("POST", "/connreg/v1/sync/chunks/known",
                                       params={"repo": repo}, content=body,
                                       headers={"Content-Type": "application/json"})
        except ParentRefused as exc:
            if exc.status == 404 and exc.code == "NOT_FOUND" or \
                    exc.code == "CHUNK_PARAMS_MISMATCH":
                return None
            raise
        if self.meter:
            await self.meter.account(len(resp.content))
        known = resp.json().get("known")
        if not isinstance(known, list) or len(known) != len(ids):
            raise ParentRefused(resp.status_code, "malformed answer to chunks/known")
        return known

    async def near_chunks(self, repo: str, params: str, before: str | None,
                          after: str | None, length: int, ids: list[str]
                          ) -> tuple[str, list[int | None]] | None:
        """Where the parent's old version of a run (between chunks `before` and `after`) holds
        each sub-chunk: (anchor chunk id, [offset minus the anchor's, or None, …]); None when
        the parent cannot refine (older version, delta off, parameters refused)."""
        answer = await self._post_optional_json(
            "/connreg/v1/sync/chunks/near", repo,
            {"params": params, "before": before, "after": after, "length": length, "ids": ids})
        if answer is None:
            return None
        status, doc = answer
        at = doc.get("at") if isinstance(doc, dict) else None
        if not isinstance(at, list) or len(at) != len(ids) or not all(
                a is None or isinstance(a, int) and not isinstance(a, bool) for a in at):
            raise ParentRefused(status, "malformed answer to chunks/near")
        anchor = doc.get("anchor")
        if anchor is None:
            return "", [None] * len(ids)
        if anchor not in (before, after):
            raise ParentRefused(status, "malformed answer to chunks/near")
        return anchor, at

    async def append_chunks(self, repo: str, location: str, offset: int, body: bytes) -> int:
        """Append a chunk plan (`delta/plan.py`) to an upload session that holds `offset`
        bytes; the session's new size. UploadOutOfStep when the parent holds another size."""
        upload_id = location.split("?", 1)[0].rstrip("/").rpartition("/")[2]
        if self.meter:
            await self.meter.account(len(body))
        try:
            resp = await self._request("POST", f"/connreg/v1/sync/uploads/{upload_id}",
                                       ok=(202,), params={"repo": repo, "offset": offset},
                                       content=body,
                                       headers={"Content-Type": PLAN_CONTENT_TYPE})
        except ParentRefused as exc:
            if exc.status == 416:
                size = exc.detail.get("uploadSize") if isinstance(exc.detail, dict) else None
                raise UploadOutOfStep(size if isinstance(size, int) else None) from None
            raise
        return int(resp.json()["size"])

    # --- batches (sync/batch_endpoints.py) ------------------------------------------------------
    async def fetch_objects(self, objects: list[tuple[str, str]], referrers: bool,
                            max_bytes: int) -> bytes | None:
        """The zstd frame holding `objects` ([repo, digest] pairs), not yet verified; None
        when the parent cannot batch (an older version: 404 NOT_FOUND / 405)."""
        body = json.dumps({"objects": [list(o) for o in objects],
                           "referrers": referrers}).encode()
        try:
            resp = await self._request("POST", "/connreg/v1/sync/objects", content=body,
                                       headers={"Content-Type": "application/json"})
        except ParentRefused as exc:
            if exc.status == 405 or exc.status == 404 and exc.code == "NOT_FOUND":
                return None
            raise
        frame = resp.content
        if len(frame) > max_bytes + (1 << 20):  # zstd never grows data by more than a little
            raise ParentRefused(resp.status_code, "object batch larger than asked for")
        if self.meter:
            await self.meter.account(len(frame))
        return frame

    async def missing_blobs(self, blobs: list[tuple[str, str]],
                            manifests: list[tuple[str, str]]) -> tuple[list[str], list[bool]] | None:
        """For each blob "present", "mounted" or "missing" at the parent, for each manifest
        whether the parent holds it; None when the parent cannot answer in bulk."""
        body = json.dumps({"blobs": [list(b) for b in blobs],
                           "manifests": [list(m) for m in manifests]}).encode()
        try:
            resp = await self._request("POST", "/connreg/v1/sync/blobs/missing", content=body,
                                       headers={"Content-Type": "application/json"})
        except ParentRefused as exc:
            if exc.status == 405 or exc.status == 404 and exc.code == "NOT_FOUND":
                return None
            raise
        doc = resp.json()
        states, held = doc.get("blobs"), doc.get("manifests")
        if not isinstance(states, list) or len(states) != len(blobs) or \
                not isinstance(held, list) or len(held) != len(manifests):
            raise ParentRefused(resp.status_code, "malformed answer to blobs/missing")
        return states, held

    async def upload_objects(self, frame: bytes, count: int) -> list[dict] | None:
        """Send a batch of `count` objects (sync/upload_batch_format.py); the parent's answer
        per object, in order (`{"status": 201}` or a status with OCI `errors`); None when the
        parent cannot take batches (an older version: 404 NOT_FOUND / 405)."""
        if self.meter:
            await self.meter.account(len(frame))
        try:
            resp = await self._request("POST", "/connreg/v1/sync/upload", content=frame,
                                       headers={"Content-Type": UPLOAD_BATCH_TYPE})
        except ParentRefused as exc:
            if exc.status == 405 or exc.status == 404 and exc.code == "NOT_FOUND":
                return None
            raise
        answers = resp.json().get("objects") if resp.headers.get(
            "Content-Type", "").startswith("application/json") else None
        if not isinstance(answers, list) or len(answers) != count or \
                not all(isinstance(a, dict) and isinstance(a.get("status"), int) for a in answers):
            raise ParentRefused(resp.status_code, "malformed answer to an upload batch",
                                method="POST", url="/connreg/v1/sync/upload")
        return answers

    # --- OCI writes (upward sync) ------------------------------------------------------------
    async def has_blob(self, repo: str, digest: str) -> bool:
        resp = await self._request("HEAD", f"/v2/{repo}/blobs/{digest}", ok=(200, 404))
        return resp.status_code == 200

    async def mount_blob(self, repo: str, digest: str) -> bool:
        """Ask the parent to link a blob it already holds (automatic cross-repository mount)."""
        resp = await self._request("POST", f"/v2/{repo}/blobs/uploads/", ok=(201, 202),
                                   params={"mount": digest})
        if resp.status_code == 201:
            return True
        location = resp.headers.get("Location")
        if location:  # an upload session was opened instead; close it again
            await self._request("DELETE", location, ok=(204, 404))
        return False

    async def start_upload(self, repo: str) -> str:
        resp = await self._request("POST", f"/v2/{repo}/blobs/uploads/", ok=(202,))
        return resp.headers["Location"]

    async def upload_offset(self, location: str) -> int | None:
        """Bytes the parent holds of an upload session, None if the session is gone."""
        resp = await self._request("GET", location, ok=(204, 404))
        if resp.status_code == 404:
            return None
        end = resp.headers.get("Range", "0-0").rpartition("-")[2]
        # "0-0" means 0 or 1 bytes; restart that tiny case rather than guess.
        return int(end) + 1 if end and int(end) > 0 else 0

    async def upload_chunk(self, location: str, data: bytes, offset: int) -> str | None:
        """PATCH one chunk at `offset`; the next location, or None if the parent is elsewhere
        (416: the session does not end where we thought)."""
        if self.meter:
            await self.meter.account(len(data))
        resp = await self._request(
            "PATCH", location, ok=(202, 416), content=data,
            headers={"Content-Type": "application/octet-stream",
                     "Content-Range": f"{offset}-{offset + len(data) - 1}",
                     "Content-Length": str(len(data))})
        return resp.headers.get("Location", location) if resp.status_code == 202 else None

    async def cancel_upload(self, location: str) -> None:
        await self._request("DELETE", location, ok=(204, 404))

    async def finish_upload(self, location: str, digest: str) -> None:
        await self._request("PUT", location, ok=(201,), params={"digest": digest},
                            headers={"Content-Length": "0"})

    async def push_blob(self, repo: str, digest: str, size: int, chunks) -> None:
        """Upload a blob in one streamed monolithic POST (`?digest=`, one round trip);
        `chunks` is an async iterator of bytes."""

        async def metered():
            async for chunk in chunks:
                if self.meter:
                    await self.meter.account(len(chunk))
                yield chunk

        await self._request("POST", f"/v2/{repo}/blobs/uploads/", ok=(201,),
                            params={"digest": digest}, content=metered(),
                            headers={"Content-Type": "application/octet-stream",
                                     "Content-Length": str(size)})

    async def put_manifest(self, repo: str, reference: str, body: bytes,
                           media_type: str, if_tag_is: str | None | object = ANY) -> None:
        """PUT a manifest; with `if_tag_is` (a digest, or None for "no such tag") the parent
        applies it only if `reference` still points there, else TagMoved."""
        if self.meter:
            await self.meter.account(len(body))
        headers = {"Content-Type": media_type, **_precondition_headers(if_tag_is)}
        resp = await self._request("PUT", f"/v2/{repo}/manifests/{reference}", ok=(201, 412),
                                   content=body, headers=headers)
        if resp.status_code == 412:
            raise TagMoved(f"{repo}:{reference}: {_message(resp)}")

    async def delete(self, repo: str, reference: str,
                     if_tag_is: str | None | object = ANY) -> bool:
        resp = await self._request("DELETE", f"/v2/{repo}/manifests/{reference}",
                                   ok=(202, 404, 412), headers=_precondition_headers(if_tag_is))
        if resp.status_code == 412:
            raise TagMoved(f"{repo}:{reference}: {_message(resp)}")
        return resp.status_code == 202


def _precondition_headers(if_tag_is: str | None | object) -> dict[str, str]:
    if if_tag_is is ANY:
        return {}
    if if_tag_is is None:
        return {"If-None-Match": "*"}
    return {"If-Match": f'"{if_tag_is}"'}
