"""The control plane's rules: scope maps, tokens and connected registries (spec §2–§4).

Every change runs as one store transaction, so a connected registry, its sync scope map, its
sync token and its ancestors' sync scope maps change together or not at all.

Sync scope maps are derived, never edited by hand: the sync scope map of a connected registry
holds its own actions (its repositories with the read set, or read+write+delete for ReadWrite,
plus its four gateway actions) and the own actions of every descendant. `_recompute` rebuilds
them for a set of connected registries after any change to the tree.
"""

from __future__ import annotations

import time
from datetime import datetime

from typing import Any, Callable

from connreg.auth.actions import (
    READ_VERBS, REPO_VERBS, WRITE_VERBS, gateway_actions, parse_action, repo_actions,
    repo_matches,
)
from connreg.auth.passwords import generate_password, hash_password
from connreg.config import Settings
from connreg.control import validation as v
from connreg.control.interfaces import (
    CONNECTED_REGISTRY, SCOPE_MAP, TOKEN, ControlStore, ControlTxn,
)

PASSWORD_NAMES = ("password1", "password2")
CR_DEFAULTS = {
    "mode": "ReadWrite", "parent": None, "clientTokens": [], "syncSchedule": v.CONTINUOUS,
    "syncWindow": None, "messageTtl": "P2D", "logLevel": "Information", "notifications": [],
    "gcEnabled": True, "gcSchedule": "0 0 * * *", "bandwidthLimit": None,
}
CR_REPORTED = {
    "activationStatus": "Inactive", "instanceId": None, "connectionState": "Offline",
    "lastActivityTime": None, "lastSyncTime": None, "lastSuccessfulSyncTime": None,
    "version": None, "statusDetails": [],
}
SETTABLE = set(CR_DEFAULTS) | {"repositories"}


def _expiry_field(body: dict):
    """A password's expiry: `expiry`, or `expiration` (the CLI's flag name), not both."""
    if "expiry" in body and "expiration" in body:
        raise v.invalid("give expiry or expiration (the same field), not both", "expiry")
    return body.get("expiry", body.get("expiration"))


# A node reports every few seconds (sync/service.py STATUS_EVERY); three missed reports and
# the parent shows it Offline.
HEARTBEAT_TIMEOUT_SECONDS = 20.0


def sync_names(cr: str) -> tuple[str, str]:
    """(sync token, sync scope map) of connected registry `cr`."""
    return f"{cr}-sync-token", f"{cr}-sync-scope-map"


def render_token(doc: dict) -> dict:
    out = {k: val for k, val in doc.items() if k != "credentials"}
    out["credentials"] = [{"name": c["name"], "createdAt": c["createdAt"],
                           "expiry": c.get("expiry")} for c in doc.get("credentials", [])]
    return out


def _own_actions(cr: dict) -> set[str]:
    verbs = REPO_VERBS if cr["mode"] == "ReadWrite" else READ_VERBS
    out = set(gateway_actions(cr["name"]))
    for repo in cr["repositories"]:
        out.update(repo_actions(repo, verbs))
    return out


class ControlPlane:
    def __init__(self, settings: Settings, store: ControlStore):
        self.settings = settings
        self.store = store

    async def _tx(self, fn: Callable[[ControlTxn], Any]) -> Any:
        return await self.store.transact(fn)

    # --- helpers on a transaction -------------------------------------------------------------
    @staticmethod
    def _need(t: ControlTxn, kind: str, name: str, label: str) -> dict:
        doc = t.get(kind, name)
        if doc is None:
            raise v.not_found(label, name)
        return doc

    @staticmethod
    def _crs(t: ControlTxn) -> dict[str, dict]:
        return {c["name"].lower(): c for c in t.list(CONNECTED_REGISTRY)}

    @staticmethod
    def _ancestors(crs: dict[str, dict], cr: dict) -> list[dict]:
        out, parent = [], cr.get("parent")
        while parent:
            p = crs.get(parent.lower())
            if p is None or p in out:
                break
            out.append(p)
            parent = p.get("parent")
        return out

    @staticmethod
    def _descendants(crs: dict[str, dict], name: str) -> list[dict]:
        out, frontier = [], [name.lower()]
        while frontier:
            current = frontier.pop()
            for c in crs.values():
                if (c.get("parent") or "").lower() == current and c not in out:
                    out.append(c)
                    frontier.append(c["name"].lower())
        return out

    def _recompute(self, t: ControlTxn, crs: dict[str, dict], names: list[str]) -> None:
        for name in names:
            cr = crs.get(name.lower())
            if cr is None:
                continue
            wanted = _own_actions(cr)
            for d in self._descendants(crs, name):
                wanted |= _own_actions(d)
            repos = {parse_action(a).target for a in wanted if a.startswith("repositories/")}
            if len(repos) > self.settings.max_scope_map_repositories:
                raise v.limit(f"sync scope map of {cr['name']} would hold {len(repos)} "
                              f"repository entries (at most "
                              f"{self.settings.max_scope_map_repositories})")
            sm = t.get(SCOPE_MAP, cr["syncScopeMap"])
            if sm is not None:
                sm["actions"] = sorted(wanted)
                sm["updatedAt"] = v.now_iso()
                t.put(SCOPE_MAP, sm)

    def _check_client_tokens(self, t: ControlTxn, cr: dict, tokens: list[str]) -> None:
        if len(tokens) > self.settings.max_client_tokens:
            raise v.limit(f"a connected registry has at most {self.settings.max_client_tokens} "
                          f"client tokens ({len(tokens)} given)")
        for name in tokens:
            token = self._need(t, TOKEN, name, "token")
            if token.get("system"):
                raise v.invalid(f"{name} is a sync token and cannot be a client token",
                                "clientTokens")
            if cr["mode"] == "ReadOnly":
                sm = t.get(SCOPE_MAP, token["scopeMap"]) or {"actions": []}
                writes = [a for a in sm["actions"] if a.startswith("repositories/")
                          and parse_action(a).verb in WRITE_VERBS]
                if writes:
                    raise v.invalid(f"connected registry {cr['name']} is ReadOnly: client token "
                                    f"{name} has write/delete actions ({writes[0]}…)",
                                    "clientTokens")

    def _readonly_crs_using(self, t: ControlTxn, token_names: set[str]) -> list[tuple[dict, str]]:
        lowered = {n.lower() for n in token_names}
        return [(cr, tok) for cr in t.list(CONNECTED_REGISTRY) if cr["mode"] == "ReadOnly"
                for tok in cr["clientTokens"] if tok.lower() in lowered]

    def _owner_exists(self, t: ControlTxn, doc: dict) -> str | None:
        owner = doc.get("connectedRegistry")
        return owner if owner and t.get(CONNECTED_REGISTRY, owner) is not None else None

    # --- scope maps ---------------------------------------------------------------------------
    async def create_scope_map(self, body: dict) -> dict:
        name = v.resource_name(body.get("name"), "scope map")
        acts = v.actions(body.get("actions"), self.settings.max_scope_map_repositories)
        desc = body.get("description") or ""
        if not isinstance(desc, str):
            raise v.invalid("description must be a string", "description")

        def fn(t):
            if t.get(SCOPE_MAP, name):
                raise v.conflict(f"scope map {name!r} already exists")
            if t.count(SCOPE_MAP) >= self.settings.max_scope_maps:
                raise v.limit(f"at most {self.settings.max_scope_maps} scope maps")
            now = v.now_iso()
            doc = {"name": name, "description": desc, "actions": acts, "createdAt": now,
                   "updatedAt": now, "system": False}
            t.put(SCOPE_MAP, doc)
            return doc
        return await self._tx(fn)

    def get_scope_map(self, name: str) -> dict:
        doc = self.store.get(SCOPE_MAP, name)
        if doc is None:
            raise v.not_found("scope map", name)
        return doc

    def list_scope_maps(self) -> list[dict]:
        return self.store.list(SCOPE_MAP)

    async def update_scope_map(self, name: str, body: dict) -> dict:
        limit = self.settings.max_scope_map_repositories

        def fn(t):
            doc = self._need(t, SCOPE_MAP, name, "scope map")
            owner = self._owner_exists(t, doc) if doc.get("system") else None
            if owner:
                raise v.conflict(f"scope map {doc['name']} is the sync scope map of connected "
                                 f"registry {owner}; it changes with the connected registry")
            acts = set(doc["actions"])
            if "actions" in body:
                acts = set(v.actions(body["actions"], 10**9))
            acts |= set(v.actions(body.get("addActions"), 10**9))
            acts -= set(v.string_list(body.get("removeActions"), "removeActions"))
            doc["actions"] = v.actions(sorted(acts), limit)
            if "description" in body:
                if not isinstance(body["description"], str):
                    raise v.invalid("description must be a string", "description")
                doc["description"] = body["description"]
            doc["updatedAt"] = v.now_iso()
            t.put(SCOPE_MAP, doc)
            users = {tok["name"] for tok in t.list(TOKEN)
                     if tok["scopeMap"].lower() == doc["name"].lower()}
            for cr, tok in self._readonly_crs_using(t, users):
                self._check_client_tokens(t, cr, [tok])
            return doc
        return await self._tx(fn)

    async def delete_scope_map(self, name: str) -> None:
        def fn(t):
            doc = self._need(t, SCOPE_MAP, name, "scope map")
            owner = self._owner_exists(t, doc) if doc.get("system") else None
            if owner:
                raise v.conflict(f"scope map {doc['name']} belongs to connected registry "
                                 f"{owner}; delete the connected registry with cleanup")
            users = [tok["name"] for tok in t.list(TOKEN)
                     if tok["scopeMap"].lower() == doc["name"].lower()]
            if users:
                raise v.conflict(f"scope map {doc['name']} is used by token(s) "
                                 f"{', '.join(users[:5])}")
            t.delete(SCOPE_MAP, doc["name"])
        await self._tx(fn)

    # --- tokens -------------------------------------------------------------------------------
    @staticmethod
    def _new_credentials(doc: dict, which: tuple[str, ...], expiry: str | None) -> list[dict]:
        """Fresh passwords for `which`; returns them in plaintext (the only time they exist)."""
        shown = []
        creds = {c["name"]: c for c in doc.get("credentials", [])}
        for name in which:
            password = generate_password()
            creds[name] = {"name": name, "createdAt": v.now_iso(), "expiry": expiry,
                           "hash": hash_password(password)}
            shown.append({"name": name, "value": password, "expiry": expiry})
        doc["credentials"] = [creds[n] for n in PASSWORD_NAMES if n in creds]
        return shown

    async def create_token(self, body: dict) -> dict:
        name = v.resource_name(body.get("name"), "token")
        status = v.choice(body.get("status", "enabled"), ("enabled", "disabled"), "status")
        expiry = v.expiry(_expiry_field(body))
        scope_map = body.get("scopeMap")
        inline = body.get("actions")
        if (scope_map is None) == (inline is None):
            raise v.invalid("give either scopeMap or actions", "scopeMap")
        if inline is not None:
            inline = v.actions(inline, self.settings.max_scope_map_repositories)

        def fn(t):
            if t.get(TOKEN, name):
                raise v.conflict(f"token {name!r} already exists")
            if t.count(TOKEN) >= self.settings.max_tokens:
                raise v.limit(f"at most {self.settings.max_tokens} tokens")
            now = v.now_iso()
            if inline is not None:
                sm_name = f"{name}-scope-map"
                if t.get(SCOPE_MAP, sm_name):
                    raise v.conflict(f"scope map {sm_name!r} already exists")
                if t.count(SCOPE_MAP) >= self.settings.max_scope_maps:
                    raise v.limit(f"at most {self.settings.max_scope_maps} scope maps")
                t.put(SCOPE_MAP, {"name": sm_name, "description": f"actions of token {name}",
                                  "actions": inline, "createdAt": now, "updatedAt": now,
                                  "system": False})
            else:
                sm_name = self._need(t, SCOPE_MAP, scope_map, "scope map")["name"]
            doc = {"name": name, "scopeMap": sm_name, "status": status, "createdAt": now,
                   "updatedAt": now, "system": False}
            passwords = self._new_credentials(doc, PASSWORD_NAMES, expiry)
            t.put(TOKEN, doc)
            return {**render_token(doc), "passwords": passwords}
        return await self._tx(fn)

    def get_token(self, name: str) -> dict:
        doc = self.store.get(TOKEN, name)
        if doc is None:
            raise v.not_found("token", name)
        return render_token(doc)

    def list_tokens(self) -> list[dict]:
        return [render_token(d) for d in self.store.list(TOKEN)]

    async def update_token(self, name: str, body: dict) -> dict:
        def fn(t):
            doc = self._need(t, TOKEN, name, "token")
            if "status" in body:
                doc["status"] = v.choice(body["status"], ("enabled", "disabled"), "status")
            if "scopeMap" in body:
                owner = self._owner_exists(t, doc) if doc.get("system") else None
                if owner:
                    raise v.conflict(f"token {doc['name']} is the sync token of {owner}; its "
                                     "scope map cannot change")
                doc["scopeMap"] = self._need(t, SCOPE_MAP, body["scopeMap"], "scope map")["name"]
            doc["updatedAt"] = v.now_iso()
            t.put(TOKEN, doc)
            for cr, tok in self._readonly_crs_using(t, {doc["name"]}):
                self._check_client_tokens(t, cr, [tok])
            return render_token(doc)
        return await self._tx(fn)

    async def delete_token(self, name: str) -> None:
        def fn(t):
            doc = self._need(t, TOKEN, name, "token")
            owner = self._owner_exists(t, doc) if doc.get("system") else None
            if owner:
                raise v.conflict(f"token {doc['name']} is the sync token of connected registry "
                                 f"{owner}; delete the connected registry with cleanup")
            users = [cr["name"] for cr in t.list(CONNECTED_REGISTRY)
                     if doc["name"].lower() in {c.lower() for c in cr["clientTokens"]}]
            if users:
                raise v.conflict(f"token {doc['name']} is a client token of connected "
                                 f"registr{'y' if len(users) == 1 else 'ies'} "
                                 f"{', '.join(users)}; remove it there first")
            t.delete(TOKEN, doc["name"])
        await self._tx(fn)

    async def generate_credentials(self, name: str, body: dict) -> dict:
        which = body.get("passwordName")
        if which is None:
            names = PASSWORD_NAMES
        else:
            names = (v.choice(which, PASSWORD_NAMES, "passwordName"),)
        expiry = v.expiry(_expiry_field(body))

        def fn(t):
            doc = self._need(t, TOKEN, name, "token")
            passwords = self._new_credentials(doc, names, expiry)
            doc["updatedAt"] = v.now_iso()
            t.put(TOKEN, doc)
            return {**render_token(doc), "passwords": passwords}
        return await self._tx(fn)

    # --- connected registries: create, read, update, delete -----------------------------------
    def _validate_cr_fields(self, doc: dict, body: dict) -> None:
        """Apply and validate settable fields from `body` onto `doc` (not repositories)."""
        if "syncSchedule" in body:
            doc["syncSchedule"] = v.cron(body["syncSchedule"], "syncSchedule")
        if "syncWindow" in body:
            doc["syncWindow"] = body["syncWindow"]
        doc["syncWindow"] = v.sync_window(doc["syncWindow"], doc["syncSchedule"])
        if "messageTtl" in body:
            doc["messageTtl"] = v.message_ttl(body["messageTtl"])
        if "logLevel" in body:
            doc["logLevel"] = v.choice(body["logLevel"], v.LOG_LEVELS, "logLevel")
        if "notifications" in body:
            doc["notifications"] = v.notifications(body["notifications"])
        if "gcEnabled" in body:
            doc["gcEnabled"] = v.boolean(body["gcEnabled"], "gcEnabled")
        if "gcSchedule" in body:
            doc["gcSchedule"] = v.cron(body["gcSchedule"], "gcSchedule")
        if "bandwidthLimit" in body:
            doc["bandwidthLimit"] = v.bandwidth(body["bandwidthLimit"])

    async def create_connected_registry(self, body: dict) -> dict:
        unknown = set(body) - SETTABLE - {"name"}
        if unknown:
            raise v.invalid(f"unknown or read-only field(s): {', '.join(sorted(unknown))}")
        name = v.cr_name(body.get("name"))
        doc = {"name": name, **CR_DEFAULTS}
        doc["mode"] = v.choice(body.get("mode", "ReadWrite"), v.MODES, "mode")
        doc["repositories"] = v.repositories(body.get("repositories"),
                                             self.settings.max_scope_map_repositories)
        client_tokens = v.string_list(body.get("clientTokens"), "clientTokens")
        self._validate_cr_fields(doc, body)
        token_name, sm_name = sync_names(name)
        doc.update(CR_REPORTED, syncToken=token_name, syncScopeMap=sm_name)

        def fn(t):
            if t.get(CONNECTED_REGISTRY, name):
                raise v.conflict(f"a connected registry named {name!r} already exists "
                                 "(names are case-insensitive)")
            parent = body.get("parent")
            if parent is not None:
                p = self._need(t, CONNECTED_REGISTRY, parent, "parent connected registry")
                if p["mode"] == "ReadOnly" and doc["mode"] != "ReadOnly":
                    raise v.invalid(f"parent {p['name']} is ReadOnly: it accepts only ReadOnly "
                                    "children", "mode")
                doc["parent"] = p["name"]
            for kind, res in ((TOKEN, token_name), (SCOPE_MAP, sm_name)):
                if t.get(kind, res):
                    raise v.conflict(f"{res} already exists (left behind by a deletion without "
                                     "cleanup?); delete it first")
            if t.count(TOKEN) >= self.settings.max_tokens:
                raise v.limit(f"at most {self.settings.max_tokens} tokens")
            if t.count(SCOPE_MAP) >= self.settings.max_scope_maps:
                raise v.limit(f"at most {self.settings.max_scope_maps} scope maps")
            self._check_client_tokens(t, doc, client_tokens)
            doc["clientTokens"] = sorted({self._need(t, TOKEN, c, "token")["name"]
                                          for c in client_tokens})
            now = v.now_iso()
            doc["createdAt"] = doc["updatedAt"] = now
            t.put(SCOPE_MAP, {"name": sm_name, "description": f"sync scope map of {name}",
                              "actions": [], "createdAt": now, "updatedAt": now,
                              "system": True, "connectedRegistry": name})
            t.put(TOKEN, {"name": token_name, "scopeMap": sm_name, "status": "enabled",
                          "createdAt": now, "updatedAt": now, "credentials": [],
                          "system": True, "connectedRegistry": name})
            t.put(CONNECTED_REGISTRY, doc)
            crs = self._crs(t)
            self._add_to_ancestors(crs, doc, doc["repositories"], t)
            self._recompute(t, crs, [name] + [a["name"] for a in self._ancestors(crs, doc)])
            return doc
        return await self._tx(fn)

    def _add_to_ancestors(self, crs: dict[str, dict], cr: dict, repos: list[str],
                          t: ControlTxn) -> None:
        """Ancestors gain repositories they do not already cover (a parent serves its child)."""
        for a in self._ancestors(crs, cr):
            missing = [r for r in repos if not any(repo_matches(x, r) or x == r
                                                   for x in a["repositories"])]
            if missing:
                a["repositories"] = sorted(set(a["repositories"]) | set(missing))
                if len(a["repositories"]) > self.settings.max_scope_map_repositories:
                    raise v.limit(f"ancestor {a['name']} would sync more than "
                                  f"{self.settings.max_scope_map_repositories} repositories")
                a["updatedAt"] = v.now_iso()
                t.put(CONNECTED_REGISTRY, a)

    def _with_liveness(self, doc: dict) -> dict:
        """connectionState as reported, unless heartbeats stopped: then Offline (§2). A disabled
        sync token disables the connected registry: it is shown Offline with the reason."""
        token = self.store.get(TOKEN, doc.get("syncToken") or "")
        if token is not None and token.get("status") == "disabled":
            detail = {"code": "SYNC_TOKEN_DISABLED",
                      "description": f"sync token {token['name']} is disabled: the connected "
                                     "registry cannot sync until it is enabled again",
                      "timestamp": token.get("updatedAt"), "correlationId": None}
            return {**doc, "connectionState": "Offline",
                    "statusDetails": [*doc.get("statusDetails", []), detail]}
        last = doc.get("lastActivityTime")
        if last and doc.get("connectionState") != "Offline":
            age = time.time() - datetime.fromisoformat(last.replace("Z", "+00:00")).timestamp()
            if age > HEARTBEAT_TIMEOUT_SECONDS:
                return {**doc, "connectionState": "Offline"}
        return doc

    def get_connected_registry(self, name: str) -> dict:
        doc = self.store.get(CONNECTED_REGISTRY, name)
        if doc is None:
            raise v.not_found("connected registry", name)
        return self._with_liveness(doc)

    def list_connected_registries(self, parent: str | None, no_children: bool) -> list[dict]:
        return [self._with_liveness(d) for d in self._list_crs(parent, no_children)]

    def _list_crs(self, parent: str | None, no_children: bool) -> list[dict]:
        docs = self.store.list(CONNECTED_REGISTRY)
        if parent is None:  # the root: all, or with no_children only the root's own children
            return [c for c in docs if not c.get("parent")] if no_children else docs
        crs = {c["name"].lower(): c for c in docs}
        if parent.lower() not in crs:
            raise v.not_found("connected registry", parent)
        if no_children:
            return [c for c in docs if (c.get("parent") or "").lower() == parent.lower()]
        found = {c["name"] for c in self._descendants(crs, parent)}
        return [c for c in docs if c["name"] in found]

    async def update_connected_registry(self, name: str, body: dict) -> dict:
        unknown = set(body) - SETTABLE - {"name", "addClientTokens", "removeClientTokens"}
        if unknown:
            raise v.invalid(f"unknown or read-only field(s): {', '.join(sorted(unknown))}")

        def fn(t):
            doc = self._need(t, CONNECTED_REGISTRY, name, "connected registry")
            for field in ("mode", "parent"):
                if field in body and str(body[field] or "").lower() != str(doc[field] or
                                                                           "").lower():
                    raise v.invalid(f"{field} cannot change after creation (delete and "
                                    "re-create the connected registry instead)", field)
            self._validate_cr_fields(doc, body)
            tokens = list(doc["clientTokens"])
            if "clientTokens" in body:
                tokens = v.string_list(body["clientTokens"], "clientTokens")
            lower = {x.lower() for x in v.string_list(body.get("removeClientTokens"),
                                                      "removeClientTokens")}
            tokens = [x for x in tokens if x.lower() not in lower]
            tokens += v.string_list(body.get("addClientTokens"), "addClientTokens")
            tokens = sorted({self._need(t, TOKEN, x, "token")["name"] for x in tokens})
            self._check_client_tokens(t, doc, tokens)
            doc["clientTokens"] = tokens
            doc["updatedAt"] = v.now_iso()
            t.put(CONNECTED_REGISTRY, doc)
            if "repositories" in body:
                new = v.repositories(body["repositories"],
                                     self.settings.max_scope_map_repositories)
                return self._change_repositories(
                    t, doc["name"], [r for r in new if r not in doc["repositories"]],
                    [r for r in doc["repositories"] if r not in new])
            return doc
        return await self._tx(fn)

    def _change_repositories(self, t: ControlTxn, name: str, add: list[str],
                             remove: list[str]) -> dict:
        crs = self._crs(t)
        doc = crs.get(name.lower())
        if doc is None:
            raise v.not_found("connected registry", name)
        touched = [doc]
        if add:
            doc["repositories"] = sorted(set(doc["repositories"]) | set(add))
            self._add_to_ancestors(crs, doc, add, t)
        if remove:
            for c in [doc] + self._descendants(crs, doc["name"]):
                kept = [r for r in c["repositories"] if r not in remove]
                if kept != c["repositories"]:
                    c["repositories"] = kept
                    touched.append(c)
        for c in touched:
            c["updatedAt"] = v.now_iso()
            t.put(CONNECTED_REGISTRY, c)
        if not doc["repositories"]:
            raise v.invalid(f"connected registry {doc['name']} would have no repository left",
                            "remove")
        if len(doc["repositories"]) > self.settings.max_scope_map_repositories:
            raise v.limit(f"at most {self.settings.max_scope_map_repositories} repositories "
                          "per connected registry")
        affected = {c["name"] for c in crs.values()}  # small trees: rebuild them all
        self._recompute(t, crs, sorted(affected))
        return doc

    async def change_repositories(self, name: str, body: dict) -> dict:
        add = v.repositories(body.get("add"), 10**9, required=False)
        remove = v.repositories(body.get("remove"), 10**9, required=False)
        if not add and not remove:
            raise v.invalid("give repositories to add or remove", "add")
        return await self._tx(lambda t: self._change_repositories(t, name, add, remove))

    async def delete_connected_registry(self, name: str, cleanup: bool) -> dict:
        def fn(t):
            crs = self._crs(t)
            doc = crs.get(name.lower())
            if doc is None:
                raise v.not_found("connected registry", name)
            children = [c["name"] for c in crs.values()
                        if (c.get("parent") or "").lower() == doc["name"].lower()]
            if children:
                raise v.conflict(f"connected registry {doc['name']} has children "
                                 f"({', '.join(children)}); delete them first")
            t.delete(CONNECTED_REGISTRY, doc["name"])
            ancestors = [a["name"] for a in self._ancestors(crs, doc)]
            del crs[doc["name"].lower()]
            if cleanup:
                t.delete(TOKEN, doc["syncToken"])
                t.delete(SCOPE_MAP, doc["syncScopeMap"])
                self._recompute(t, crs, ancestors)
                return {"deleted": doc["name"], "leftBehind": []}
            left = [f"token {doc['syncToken']}", f"scope map {doc['syncScopeMap']}"]
            left += [f"actions for {doc['name']} in the sync scope map of {a}" for a in ancestors]
            return {"deleted": doc["name"], "leftBehind": left}
        return await self._tx(fn)

    # --- connected registries: lifecycle --------------------------------------------------------
    async def deactivate(self, name: str) -> dict:
        def fn(t):
            doc = self._need(t, CONNECTED_REGISTRY, name, "connected registry")
            doc.update(activationStatus="Inactive", instanceId=None, connectionState="Offline",
                       updatedAt=v.now_iso())
            t.put(CONNECTED_REGISTRY, doc)
            return doc
        return await self._tx(fn)

    async def resync(self, name: str) -> dict:
        def fn(t):
            doc = self._need(t, CONNECTED_REGISTRY, name, "connected registry")
            doc["resyncRequestedAt"] = v.now_iso()
            t.put(CONNECTED_REGISTRY, doc)
            return doc
        return await self._tx(fn)

    async def settings_for(self, name: str, body: dict) -> dict:
        protocol = v.choice(body.get("parentProtocol"), ("http", "https"), "parentProtocol")
        which = body.get("generatePassword", 1)
        if which not in (1, 2):
            raise v.invalid("generatePassword must be 1 or 2", "generatePassword")
        given = body.get("parentEndpoint")
        if given is not None:
            given = v.endpoint(given, "parentEndpoint")

        def fn(t):
            doc = self._need(t, CONNECTED_REGISTRY, name, "connected registry")
            if doc["parent"] and given is None:
                raise v.invalid(f"the parent of {doc['name']} is connected registry "
                                f"{doc['parent']}: give parentEndpoint (its host:port)",
                                "parentEndpoint")
            endpoint = given or self.settings.advertised
            token = self._need(t, TOKEN, doc["syncToken"], "sync token")
            [shown] = self._new_credentials(token, (PASSWORD_NAMES[which - 1],), None)
            token["updatedAt"] = v.now_iso()
            t.put(TOKEN, token)
            conn = (f"ConnectedRegistryName={doc['name']};SyncTokenName={token['name']};"
                    f"SyncTokenPassword={shown['value']};ParentGatewayEndpoint={endpoint};"
                    f"ParentEndpointProtocol={protocol}")
            return {"connectionString": conn, "connectedRegistryName": doc["name"],
                    "syncTokenName": token["name"], "syncTokenPassword": shown["value"],
                    "passwordName": shown["name"], "parentGatewayEndpoint": endpoint,
                    "parentEndpointProtocol": protocol, "mode": doc["mode"],
                    "parent": doc["parent"], "repositories": doc["repositories"]}
        return await self._tx(fn)

    async def activate(self, name: str, caller: str, body: dict) -> dict:
        instance = body.get("instanceId")
        if not isinstance(instance, str) or not 1 <= len(instance) <= 200:
            raise v.invalid("instanceId (1-200 characters) is required", "instanceId")
        version = body.get("version")

        def fn(t):
            doc = self._need(t, CONNECTED_REGISTRY, name, "connected registry")
            if caller != "admin" and caller.lower() != doc["syncToken"].lower():
                raise v.RegistryError(v.ErrorCode("DENIED", 403, "denied"),
                                      message=f"only the sync token of {doc['name']} may "
                                              "activate it")
            if doc["activationStatus"] == "Active" and doc["instanceId"] != instance:
                raise v.conflict(f"connected registry {doc['name']} is already active on "
                                 f"another instance ({doc['instanceId']}); run `connreg "
                                 f"connected-registry deactivate --name {doc['name']}` to "
                                 "move it to a new deployment")
            doc.update(activationStatus="Active", instanceId=instance, connectionState="Online",
                       lastActivityTime=v.now_iso())
            if isinstance(version, str):
                doc["version"] = version[:50]
            t.put(CONNECTED_REGISTRY, doc)
            return doc
        return await self._tx(fn)

