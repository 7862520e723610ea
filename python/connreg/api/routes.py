"""Every /v2/ route in one table: a name, a path pattern and a handler per method.

Repository names contain slashes, so routes match on the whole path after `/v2/` with anchored
patterns instead of framework converters; the order of the table decides ambiguities (upload
paths before blob paths).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Awaitable, Callable

from quart import Response

from connreg.api import blobs, discovery, manifests, uploads
from connreg.registry import Registry

Handler = Callable[..., Awaitable[Response]]


@dataclass(frozen=True)
class Route:
    name: str
    pattern: re.Pattern
    methods: dict[str, Handler]


def _head(handler: Handler) -> Handler:
    async def head(reg: Registry, **params) -> Response:
        return await handler(reg, head=True, **params)
    return head


ROUTES = [
    Route("catalog", re.compile(r"_catalog"), {"GET": discovery.catalog}),
    Route("upload-start", re.compile(r"(?P<name>.+)/blobs/uploads/?"),
          {"POST": uploads.start_upload}),
    Route("upload", re.compile(r"(?P<name>.+)/blobs/uploads/(?P<upload_id>[^/]+)"),
          {"GET": uploads.upload_status, "PATCH": uploads.patch_upload,
           "PUT": uploads.finish_upload, "DELETE": uploads.cancel_upload}),
    Route("blob", re.compile(r"(?P<name>.+)/blobs/(?P<digest>[^/]+)"),
          {"GET": blobs.get_blob, "HEAD": _head(blobs.get_blob), "DELETE": blobs.delete_blob}),
    Route("manifest", re.compile(r"(?P<name>.+)/manifests/(?P<reference>[^/]+)"),
          {"GET": manifests.get_manifest, "HEAD": _head(manifests.get_manifest),
           "PUT": manifests.put_manifest, "DELETE": manifests.delete_manifest}),
    Route("tags", re.compile(r"(?P<name>.+)/tags/list"), {"GET": discovery.list_tags}),
    Route("referrers", re.compile(r"(?P<name>.+)/referrers/(?P<digest>[^/]+)"),
          {"GET": discovery.referrers}),
]


def match(path: str) -> tuple[Route, dict[str, str]] | None:
    for route in ROUTES:
        m = route.pattern.fullmatch(path)
        if m:
            return route, m.groupdict()
    return None
