"""Content discovery: tags list, catalog, referrers."""

from __future__ import annotations

import json

from quart import Response, request

from connreg import errors
from connreg.api.http import json_response, paginate
from connreg.content import OCI_INDEX
from connreg.errors import RegistryError
from connreg.references import check_digest
from connreg.registry import Registry


async def list_tags(reg: Registry, name: str) -> Response:
    if not reg.meta.repository_exists(name):
        raise RegistryError(errors.NAME_UNKNOWN, detail={"name": name})
    tags, headers = paginate(lambda n, last: reg.meta.list_tags(name, n, last),
                             f"/v2/{name}/tags/list")
    return json_response({"name": name, "tags": tags}, headers=headers)


async def catalog(reg: Registry) -> Response:
    # The auth layer narrows the catalog to what the caller may pull (None: everything).
    allowed = getattr(request, "catalog_filter", None)

    def fetch(limit: int, last: str | None) -> list[str]:
        if allowed is None:
            return reg.meta.list_repositories(limit, last)
        out: list[str] = []
        cursor = last
        while len(out) < limit:
            batch = reg.meta.list_repositories(1000, cursor)
            if not batch:
                break
            out.extend(r for r in batch if allowed(r))
            cursor = batch[-1]
        return out[:limit]

    repos, headers = paginate(fetch, "/v2/_catalog")
    return json_response({"repositories": repos}, headers=headers)


async def referrers(reg: Registry, name: str, digest: str) -> Response:
    check_digest(digest)
    artifact_type = request.args.get("artifactType")
    descriptors = []
    for ref in reg.meta.referrers(name, digest, artifact_type):
        desc = {"mediaType": ref.media_type, "digest": ref.digest, "size": ref.size}
        if ref.artifact_type:
            desc["artifactType"] = ref.artifact_type
        if ref.annotations_json:
            desc["annotations"] = json.loads(ref.annotations_json)
        descriptors.append(desc)
    headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type is not None else {}
    return json_response({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors},
                         headers=headers, content_type=OCI_INDEX)
