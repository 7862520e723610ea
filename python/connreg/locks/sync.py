"""Locks travel down with the repository they belong to.

Parent side: `GET /connreg/v1/sync/locks?repo=R` answers the repository's lock rows to a child
that may pull it. Child side: a "lock" change in the feed (written by `set_lock` at the root,
or by `replace_locks` at an intermediate node, so it relays) makes the child fetch the
repository's rows and replace its own; reconciliation does the same for every repository, so a
node started after a lock, or one whose cursor expired while it was away, has them too.
"""

from __future__ import annotations

import logging

from quart import Blueprint, Response, current_app, request

from connreg import errors
from connreg.api.http import json_response
from connreg.errors import RegistryError
from connreg.locks.model import RepositoryLock
from connreg.references import check_name
from connreg.registry import Registry

log = logging.getLogger("connreg.sync")
bp = Blueprint("sync_locks", __name__)
# More lock rows than this in one repository would be a mistake; a child takes at most these.
MAX_LOCKS_PER_REPOSITORY = 10_000


@bp.route("/connreg/v1/sync/locks", methods=["GET"])
async def repository_locks() -> Response:
    from connreg.sync.endpoints import sync_caller

    principal, _ = await sync_caller("message/read")
    repo = request.args.get("repo") or ""
    check_name(repo)
    if principal is not None and not principal.perms.can_pull(repo):
        raise RegistryError(errors.DENIED, message=f"{principal.name} may not pull {repo}")
    reg: Registry = current_app.extensions["registry"]
    locks = reg.meta.locks(repo)[:MAX_LOCKS_PER_REPOSITORY]
    return json_response({"repository": repo, "locks": [l.to_json() for l in locks]})


async def follow_parent(reg: Registry, parent, repo: str) -> None:
    """Make `repo`'s locks here equal to the parent's (origin "parent", so they relay on).
    A parent without lock support (an older version: 404 on the endpoint) leaves them alone."""
    rows = await parent.locks(repo)
    if rows is None:
        return
    try:
        locks = [RepositoryLock.from_json(repo, row) for row in rows[:MAX_LOCKS_PER_REPOSITORY]
                 if isinstance(row, dict)]
    except ValueError as exc:
        log.warning("locks of %s from the parent ignored: %s", repo, exc)
        return
    if await reg.meta.replace_locks(repo, locks, origin="parent"):
        log.info("locks of %s now as at the parent: %s", repo,
                 ", ".join(l.describe() for l in locks) or "none")
