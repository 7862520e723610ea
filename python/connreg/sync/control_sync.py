"""Control-plane documents that travel with sync (§2, §4, §5 "Down").

Down: a parent serves a child the documents of its subtree — the child's and its descendants'
connected-registry resources, their sync tokens and client tokens (salted password hashes only,
never plaintext) and those tokens' scope maps — so the child authenticates its clients and its
own children while offline. The child replaces its copy in one transaction.

Up: each node reports its state with its descendants' states (relayed); the parent records the
reported fields on its copy, so the root's `connected-registry show` sees the whole tree.
"""

from __future__ import annotations

import hashlib
import json
import time

from connreg.control.interfaces import CONNECTED_REGISTRY, SCOPE_MAP, TOKEN, ControlStore

# Fields a running instance reports; everything else in a CR document belongs to the root.
REPORTED = ("connectionState", "lastActivityTime", "lastSyncTime", "lastSuccessfulSyncTime",
            "version", "statusDetails", "syncProgress", "storage")
SYNCED_KINDS = (CONNECTED_REGISTRY, TOKEN, SCOPE_MAP)


def _subtree(crs: list[dict], name: str) -> list[dict]:
    by_parent: dict[str, list[dict]] = {}
    for cr in crs:
        by_parent.setdefault((cr.get("parent") or "").lower(), []).append(cr)
    root = next((c for c in crs if c["name"].lower() == name.lower()), None)
    if root is None:
        return []
    out, frontier = [root], [root]
    while frontier:
        current = frontier.pop()
        for child in by_parent.get(current["name"].lower(), []):
            out.append(child)
            frontier.append(child)
    return out


def subtree_documents(store: ControlStore, child: str) -> dict:
    """What `child` needs to run and to serve its own children offline."""
    crs = _subtree(store.list(CONNECTED_REGISTRY), child)
    token_names = {n.lower() for cr in crs for n in [cr.get("syncToken"), *cr.get("clientTokens", [])]
                   if n}
    tokens = [t for t in store.list(TOKEN) if t["name"].lower() in token_names]
    map_names = {t["scopeMap"].lower() for t in tokens if t.get("scopeMap")}
    scope_maps = [m for m in store.list(SCOPE_MAP) if m["name"].lower() in map_names]
    return {"connectedRegistries": crs, "tokens": tokens, "scopeMaps": scope_maps,
            "generatedAt": time.time()}


_versions: dict[tuple[int, str, int], str] = {}


def config_version(store: ControlStore, child: str) -> str:
    """A fingerprint of what `child` would receive, minus reported state: changes when the root
    changes anything the child must apply (settings, repositories, tokens), not on heartbeats."""
    key = (id(store), child.lower(), store.generation)
    version = _versions.get(key)
    if version is None:
        docs = subtree_documents(store, child)
        docs.pop("generatedAt")
        docs["connectedRegistries"] = [{k: v for k, v in cr.items() if k not in REPORTED}
                                       for cr in docs["connectedRegistries"]]
        version = hashlib.sha256(json.dumps(docs, sort_keys=True).encode()).hexdigest()[:16]
        if len(_versions) > 1000:
            _versions.clear()
        _versions[key] = version
    return version


async def replace_documents(store: ControlStore, doc: dict) -> None:
    """Make the local copy equal to what the parent sent, keeping what children reported."""

    def fn(t):
        existing = {cr["name"].lower(): cr for cr in t.list(CONNECTED_REGISTRY)}
        for kind, key in ((CONNECTED_REGISTRY, "connectedRegistries"), (TOKEN, "tokens"),
                          (SCOPE_MAP, "scopeMaps")):
            incoming = {d["name"].lower(): d for d in doc.get(key, [])}
            for old in t.list(kind):
                if old["name"].lower() not in incoming:
                    t.delete(kind, old["name"])
            for name, new in incoming.items():
                if kind == CONNECTED_REGISTRY and name in existing:
                    for field in REPORTED:  # a descendant's report is fresher here than above
                        if field in existing[name]:
                            new[field] = existing[name][field]
                if t.get(kind, new["name"]) != new:
                    t.put(kind, new)

    await store.transact(fn)


async def record_statuses(store: ControlStore, statuses: list[dict], allowed,
                          reporter: str | None = None) -> list[str]:
    """Store reported fields for each CR the reporter may report for; return the names stored.

    The reporter's own entry arrives over a working link, so it is at least Online here even if
    it had not yet noticed (its own view is about its parent link, which this report proves).
    """
    stored: list[str] = []

    def fn(t):
        for status in statuses:
            name = status.get("name")
            if not isinstance(name, str) or not allowed(name):
                continue
            cr = t.get(CONNECTED_REGISTRY, name)
            if cr is None:
                continue
            for field in REPORTED:
                if field in status:
                    cr[field] = status[field]
            if reporter and name.lower() == reporter.lower() and cr.get("connectionState") in (
                    None, "Offline"):
                cr["connectionState"] = "Online"
            t.put(CONNECTED_REGISTRY, cr)
            stored.append(cr["name"])

    await store.transact(fn)
    return stored


def descendant_statuses(store: ControlStore, me: str) -> list[dict]:
    """The last reports of our descendants, to relay upward with our own."""
    out = []
    for cr in _subtree(store.list(CONNECTED_REGISTRY), me)[1:]:
        if cr.get("lastActivityTime"):
            out.append({"name": cr["name"], **{f: cr.get(f) for f in REPORTED if f in cr}})
    return out
