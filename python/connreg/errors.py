"""OCI error codes as registered data, and the one exception the API layer raises.

Each code carries its HTTP status and default message (distribution-spec "Error Codes" table);
`RegistryError.body()` renders the `{"errors":[...]}` document every failure answers with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ErrorCode:
    code: str
    status: int
    message: str


def _register(code: str, status: int, message: str) -> ErrorCode:
    return ErrorCode(code, status, message)


BLOB_UNKNOWN = _register("BLOB_UNKNOWN", 404, "blob unknown to registry")
BLOB_UPLOAD_INVALID = _register("BLOB_UPLOAD_INVALID", 400, "blob upload invalid")
BLOB_UPLOAD_UNKNOWN = _register("BLOB_UPLOAD_UNKNOWN", 404, "blob upload unknown to registry")
DIGEST_INVALID = _register("DIGEST_INVALID", 400, "provided digest did not match uploaded content")
MANIFEST_BLOB_UNKNOWN = _register("MANIFEST_BLOB_UNKNOWN", 400, "manifest references a manifest or blob unknown to registry")
MANIFEST_INVALID = _register("MANIFEST_INVALID", 400, "manifest invalid")
MANIFEST_UNKNOWN = _register("MANIFEST_UNKNOWN", 404, "manifest unknown to registry")
NAME_INVALID = _register("NAME_INVALID", 400, "invalid repository name")
NAME_UNKNOWN = _register("NAME_UNKNOWN", 404, "repository name not known to registry")
SIZE_INVALID = _register("SIZE_INVALID", 400, "provided length did not match content length")
UNAUTHORIZED = _register("UNAUTHORIZED", 401, "authentication required")
DENIED = _register("DENIED", 403, "requested access to the resource is denied")
UNSUPPORTED = _register("UNSUPPORTED", 405, "the operation is unsupported")
TOO_MANY_REQUESTS = _register("TOOMANYREQUESTS", 429, "too many requests")
# Not in the spec's table but used with the same body shape (as distribution does).
RANGE_INVALID = _register("BLOB_UPLOAD_INVALID", 416, "requested range not satisfiable")
PAGINATION_NUMBER_INVALID = _register("PAGINATION_NUMBER_INVALID", 400, "invalid number of results requested")
TAG_INVALID = _register("TAG_INVALID", 400, "manifest tag did not match URI")
MANIFEST_TOO_LARGE = _register("SIZE_INVALID", 413, "manifest exceeds the size limit")
PRECONDITION_FAILED = _register("PRECONDITION_FAILED", 412, "the reference does not match the request's If-Match/If-None-Match")
NOT_FOUND = _register("NOT_FOUND", 404, "no such endpoint")
METHOD_NOT_ALLOWED = _register("UNSUPPORTED", 405, "method not allowed on this endpoint")
STORAGE_FULL = _register("DENIED", 507, "registry storage budget exhausted")
INVALID_BODY = _register("INVALID", 400, "request body invalid")
BODY_TOO_LARGE = _register("SIZE_INVALID", 413, "request body exceeds the size limit")
# A number or other value in a query parameter or header that is malformed or out of range
# (connreg/parsing.py); ranges of bytes answer RANGE_INVALID (416) instead.
QUERY_INVALID = _register("INVALID", 400, "request parameter invalid")
# Delta transfer between nodes (docs/delta.md): the two sides cut chunks differently, or a plan
# names a chunk this node cannot copy (like MANIFEST_BLOB_UNKNOWN for a manifest's blobs).
CHUNK_PARAMS_MISMATCH = _register("CHUNK_PARAMS_MISMATCH", 400, "chunking parameters differ from this node's")
CHUNK_UNKNOWN = _register("CHUNK_UNKNOWN", 400, "chunk unknown to registry")
INTERNAL = _register("UNKNOWN", 500, "internal server error")
# A shared engine of a scaled root (PostgreSQL, object storage) does not answer right now;
# retrying (through the balancer, on another replica) may succeed (docs/scaling.md).
UNAVAILABLE = _register("UNAVAILABLE", 503, "a storage engine is unavailable; retry later")


class RegistryError(Exception):
    """An error the client gets as an OCI error body with the code's HTTP status."""

    def __init__(self, code: ErrorCode, detail: Any = None, message: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message or code.message)
        self.code = code
        self.detail = detail
        self.message = message or code.message
        self.headers = headers or {}

    @property
    def status(self) -> int:
        return self.code.status

    def body(self) -> bytes:
        entry: dict[str, Any] = {"code": self.code.code, "message": self.message}
        if self.detail is not None:
            entry["detail"] = self.detail
        return json.dumps({"errors": [entry]}).encode()
