"""Locks over HTTP, for `connreg repository show|update` (docs/locks.md):

    GET   /connreg/v1/locks?repository=R[&tag=T|&digest=D]   the attributes (node admin)
    PATCH /connreg/v1/locks   {"repository": R, "tag"|"digest": …, "writeEnabled": false, …}

PATCH answers only at the root (locks travel down with sync; a connected registry's copy is
replaced by its parent's), GET on every node, so an operator can see what an edge enforces.
The parent side of lock sync, `GET /connreg/v1/sync/locks?repo=R`, is in `sync_endpoints.py`.
"""

from __future__ import annotations

import time

from quart import Blueprint, Response, current_app, request

from connreg import errors
from connreg.api.http import json_response, read_json_body
from connreg.errors import RegistryError
from connreg.locks import policy
from connreg.locks.model import RepositoryLock
from connreg.references import check_digest, check_name, check_tag
from connreg.registry import Registry

bp = Blueprint("locks", __name__, url_prefix="/connreg/v1/locks")
MAX_BODY = 64 * 1024
ATTRIBUTES = (("writeEnabled", "write_enabled"), ("deleteEnabled", "delete_enabled"),
              ("readEnabled", "read_enabled"))


def _registry() -> Registry:
    return current_app.extensions["registry"]


def _target(repo, tag, digest) -> tuple[str, str | None, str | None]:
    """Validated (repository, tag, digest); 404 when what they name is not stored here."""
    if not isinstance(repo, str) or not repo:
        raise RegistryError(errors.INVALID_BODY, message="give the repository")
    check_name(repo)
    if tag is not None and digest is not None:
        raise RegistryError(errors.INVALID_BODY, message="give a tag or a digest, not both")
    reg = _registry()
    if tag is not None:
        if not isinstance(tag, str):
            raise RegistryError(errors.INVALID_BODY, message="tag must be a string")
        check_tag(tag)
    if digest is not None:
        if not isinstance(digest, str):
            raise RegistryError(errors.INVALID_BODY, message="digest must be a string")
        check_digest(digest)
    if not reg.meta.repository_exists(repo):
        raise RegistryError(errors.NAME_UNKNOWN, message=f"repository {repo} not found",
                            detail={"name": repo})
    if tag is not None and reg.meta.resolve_tag(repo, tag) is None:
        raise RegistryError(errors.MANIFEST_UNKNOWN, message=f"tag {repo}:{tag} not found",
                            detail={"name": repo, "reference": tag})
    if digest is not None and reg.meta.get_manifest(repo, digest) is None:
        raise RegistryError(errors.MANIFEST_UNKNOWN, message=f"manifest {repo}@{digest} not "
                            "found", detail={"name": repo, "reference": digest})
    return repo, tag, digest


def describe(repo: str, tag: str | None, digest: str | None) -> dict:
    """What `connreg repository show` prints."""
    reg = _registry()
    doc: dict = {"registry": _node_name(), "repository": repo}
    if tag is not None:
        doc.update(tag=tag, digest=reg.meta.resolve_tag(repo, tag))
    elif digest is not None:
        doc["digest"] = digest
    else:
        doc.update(tagCount=len(reg.meta.list_tags(repo, None, None)),
                   manifestCount=len(reg.meta.manifest_digests(repo)))
    doc["changeableAttributes"] = policy.attributes(reg.meta, repo, tag, digest)
    doc["locks"] = [lock.to_json() for lock in reg.meta.locks(repo)]
    return doc


def _node_name() -> str | None:
    service = current_app.extensions.get("sync")
    return service.config.name if service is not None else None


@bp.route("", methods=["GET"])
async def show() -> Response:
    await current_app.extensions["authorizer"].require_node_admin("repository locks")
    repo, tag, digest = _target(request.args.get("repository"), request.args.get("tag"),
                                request.args.get("digest"))
    return json_response(describe(repo, tag, digest))


@bp.route("", methods=["PATCH"])
async def update() -> Response:
    if current_app.config["CONNREG_SETTINGS"].is_connected_registry:
        raise RegistryError(errors.DENIED, message="this node is a connected registry: locks "
                            "are set at the root and synchronized down")
    authz = current_app.extensions["authorizer"]
    await authz.require_node_admin("repository locks")
    doc = await read_json_body(MAX_BODY, "lock update")
    if not isinstance(doc, dict):
        raise RegistryError(errors.INVALID_BODY, message="expected a JSON object")
    unknown = set(doc) - {"repository", "tag", "digest"} - {a for a, _ in ATTRIBUTES}
    if unknown:
        raise RegistryError(errors.INVALID_BODY,
                            message=f"unknown field(s): {', '.join(sorted(unknown))[:200]}")
    repo, tag, digest = _target(doc.get("repository"), doc.get("tag"), doc.get("digest"))
    changes = {}
    for field, attr in ATTRIBUTES:
        if field in doc:
            if not isinstance(doc[field], bool):
                raise RegistryError(errors.INVALID_BODY, message=f"{field} must be true or false")
            changes[attr] = doc[field]
    if not changes:
        raise RegistryError(errors.INVALID_BODY, message="nothing to change: give writeEnabled, "
                            "deleteEnabled and/or readEnabled")
    reg = _registry()
    current = next((l for l in reg.meta.locks(repo) if l.tag == tag and l.digest == digest),
                   RepositoryLock(repo, tag, digest))
    values = {attr: changes.get(attr, getattr(current, attr)) for _, attr in ATTRIBUTES}
    await reg.meta.set_lock(RepositoryLock(repo, tag, digest, updated=time.time(), **values))
    request.audit_target = RepositoryLock(repo, tag, digest).describe()
    return json_response(describe(repo, tag, digest))
