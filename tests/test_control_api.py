"""The management API on a real root: scope maps, tokens, connected registries, their
validation rules and limits, sync scope maps across a hierarchy, settings and activation,
including real connected-registry nodes that activate themselves at start.
"""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from connreg.testing import Node, free_port, start_node
from connreg.testing.oci import make_image
from helpers import error_codes, push_image

ADMIN_PASSWORD = "control-test-admin-pw-0123456789"
GATEWAY = ("config/read", "config/write", "message/read", "message/write")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Node:
    n = start_node(tmp_path_factory.mktemp("control") / "root", admin_password=ADMIN_PASSWORD,
                   env={"CONNREG_AUTH_FAILURE_LIMIT": "1000"})
    yield n
    n.stop()


@pytest.fixture(scope="module")
def api(root):
    with httpx.Client(base_url=f"{root.url}/connreg/v1", auth=root.admin, timeout=30) as c:
        yield c


def ok(r: httpx.Response, status: int = 200) -> dict:
    assert r.status_code == status, r.text
    return r.json() if r.content else {}


def refused(r: httpx.Response, code: str, status: int = 400, text: str = "") -> str:
    assert r.status_code == status, r.text
    assert error_codes(r) == [code], r.text
    message = r.json()["errors"][0]["message"]
    assert text.lower() in message.lower(), message
    return message


def create_cr(api, name, repos=("team/app",), **fields) -> dict:
    return ok(api.post("/connected-registries",
                       json={"name": name, "repositories": list(repos), **fields}), 201)


def sync_actions(api, cr: str) -> set[str]:
    return set(ok(api.get(f"/scope-maps/{cr}-sync-scope-map"))["actions"])


# --- authentication of the management API ------------------------------------------------------
def test_management_api_needs_the_admin(root, api):
    r = httpx.get(f"{root.url}/connreg/v1/tokens")
    refused(r, "UNAUTHORIZED", 401)
    r = httpx.get(f"{root.url}/connreg/v1/tokens", auth=("admin", "wrong"))
    refused(r, "UNAUTHORIZED", 401)
    tok = ok(api.post("/tokens", json={"name": "plain-user",
                                       "actions": ["repositories/a/content/read"]}), 201)
    pw = tok["passwords"][0]["value"]
    r = httpx.get(f"{root.url}/connreg/v1/tokens", auth=("plain-user", pw))
    refused(r, "DENIED", 403)
    # Bearer tokens from /oauth2/token work too.
    bearer = httpx.get(f"{root.url}/oauth2/token", auth=root.admin).json()["token"]
    r = httpx.get(f"{root.url}/connreg/v1/scope-maps",
                  headers={"Authorization": f"Bearer {bearer}"})
    assert r.status_code == 200


# --- scope maps and tokens ------------------------------------------------------------------------
def test_scope_map_lifecycle_and_rules(api):
    sm = ok(api.post("/scope-maps", json={"name": "ci-push", "description": "CI",
                                          "actions": ["repositories/ci/*/content/write",
                                                      "repositories/ci/*/content/write",
                                                      "gateway/edge-one/config/read"]}), 201)
    assert sm["actions"] == ["gateway/edge-one/config/read", "repositories/ci/*/content/write"]
    assert sm["system"] is False and sm["createdAt"]
    refused(api.post("/scope-maps", json={"name": "CI-PUSH", "actions": []}), "CONFLICT", 409)
    for bad in (["repositories/Bad/content/read"], ["repositories/a/content/admin"],
                ["gateway/x/config/read"], ["registry/catalog"], "not-a-list"):
        refused(api.post("/scope-maps", json={"name": "bad-map", "actions": bad}), "INVALID")
    refused(api.post("/scope-maps", json={"name": "x", "actions": []}), "INVALID", text="name")
    sm = ok(api.patch("/scope-maps/ci-push", json={
        "addActions": ["repositories/ci/*/metadata/write"],
        "removeActions": ["gateway/edge-one/config/read"]}))
    assert sm["actions"] == ["repositories/ci/*/content/write", "repositories/ci/*/metadata/write"]
    assert [s["name"] for s in ok(api.get("/scope-maps"))["scopeMaps"]].count("ci-push") == 1
    ok(api.post("/tokens", json={"name": "ci-bot", "scopeMap": "ci-push"}), 201)
    refused(api.delete("/scope-maps/ci-push"), "CONFLICT", 409, "used by token")
    assert api.delete("/tokens/ci-bot").status_code == 204
    assert api.delete("/scope-maps/ci-push").status_code == 204
    refused(api.get("/scope-maps/ci-push"), "NOT_FOUND", 404)


def test_500_repositories_per_scope_map(api):
    repos = [f"many/r{i}" for i in range(501)]
    actions = [f"repositories/{r}/content/read" for r in repos]
    refused(api.post("/scope-maps", json={"name": "too-many", "actions": actions}),
            "LIMIT_EXCEEDED", text="500")
    ok(api.post("/scope-maps", json={"name": "just-enough", "actions": actions[:500]}), 201)
    refused(api.patch("/scope-maps/just-enough", json={"addActions": actions[500:]}),
            "LIMIT_EXCEEDED")
    # Several actions on one repository are one entry.
    more = [f"repositories/many/r0/{v}" for v in ("content/write", "metadata/read")]
    ok(api.patch("/scope-maps/just-enough", json={"addActions": more}))
    refused(api.post("/connected-registries", json={"name": "too-many-repos",
                                                    "repositories": repos}),
            "LIMIT_EXCEEDED", text="500")


def test_token_lifecycle(api):
    r = ok(api.post("/tokens", json={"name": "life-token",
                                     "actions": ["repositories/life/content/read"],
                                     "expiry": "2999-01-01T00:00:00Z"}), 201)
    assert r["scopeMap"] == "life-token-scope-map" and r["status"] == "enabled"
    assert [p["name"] for p in r["passwords"]] == ["password1", "password2"]
    assert all(p["expiry"] == "2999-01-01T00:00:00Z" for p in r["passwords"])
    assert r["passwords"][0]["value"] != r["passwords"][1]["value"]
    shown = ok(api.get("/tokens/life-token"))
    assert "passwords" not in shown and [c["name"] for c in shown["credentials"]] == [
        "password1", "password2"]
    refused(api.post("/tokens", json={"name": "LIFE-TOKEN", "actions": []}), "CONFLICT", 409)
    refused(api.post("/tokens", json={"name": "admin", "actions": []}), "INVALID", text="reserved")
    refused(api.post("/tokens", json={"name": "no-map-token", "scopeMap": "nope"}),
            "NOT_FOUND", 404)
    refused(api.patch("/tokens/life-token", json={"status": "paused"}), "INVALID")
    assert ok(api.patch("/tokens/life-token", json={"status": "disabled"}))["status"] == "disabled"
    both = ok(api.post("/tokens/life-token/credentials", json={}))
    assert len(both["passwords"]) == 2
    assert api.delete("/tokens/life-token").status_code == 204
    refused(api.get("/tokens/life-token"), "NOT_FOUND", 404)


def test_token_and_scope_map_limits_are_configurable(tmp_path):
    node = start_node(tmp_path / "small", admin_password="small-admin-pw-123456",
                      env={"CONNREG_MAX_TOKENS": "2", "CONNREG_MAX_SCOPE_MAPS": "3"})
    try:
        with httpx.Client(base_url=f"{node.url}/connreg/v1", auth=node.admin) as c:
            for i in range(2):
                ok(c.post("/tokens", json={"name": f"token-{i}", "actions": []}), 201)
            refused(c.post("/tokens", json={"name": "token-2", "actions": []}),
                    "LIMIT_EXCEEDED", text="at most 2 tokens")
            ok(c.post("/scope-maps", json={"name": "map-3", "actions": []}), 201)
            refused(c.post("/scope-maps", json={"name": "map-4", "actions": []}),
                    "LIMIT_EXCEEDED", text="at most 3 scope maps")
    finally:
        node.stop()


# --- connected registries: validation ---------------------------------------------------------
@pytest.mark.parametrize("name", ["edge", "1edge", "edge.one", "e" * 41, "edge one", ""])
def test_connected_registry_name_rules(api, name):
    refused(api.post("/connected-registries", json={"name": name, "repositories": ["a"]}),
            "INVALID", text="name")


def test_connected_registry_field_rules(api):
    create_cr(api, "rules-parent-ro", mode="ReadOnly")
    cases = [
        ({"name": "Rules-Parent-RO"}, "CONFLICT", "already exists"),
        ({"mode": "Mirror"}, "INVALID", "mode"),
        ({"parent": "rules-parent-ro", "mode": "ReadWrite"}, "INVALID", "ReadOnly"),
        ({"parent": "rules-parent-ro"}, "INVALID", "ReadOnly"),  # default mode is ReadWrite
        ({"parent": "missing-parent"}, "NOT_FOUND", "not found"),
        ({"syncSchedule": "0 * * *"}, "INVALID", "cron"),
        ({"syncSchedule": "61 * * * *", "syncWindow": "PT2H"}, "INVALID", "cron"),
        ({"syncSchedule": "0 */6 * * *"}, "INVALID", "syncWindow is required"),
        ({"syncSchedule": "0 */6 * * *", "syncWindow": "PT30M"}, "INVALID", "PT1H"),
        ({"syncSchedule": "0 */6 * * *", "syncWindow": "P8D"}, "INVALID", "P7D"),
        ({"syncSchedule": "0 */6 * * *", "syncWindow": "2 hours"}, "INVALID", "ISO-8601"),
        ({"messageTtl": "PT12H"}, "INVALID", "P1D"),
        ({"messageTtl": "P91D"}, "INVALID", "P90D"),
        ({"logLevel": "Verbose"}, "INVALID", "logLevel"),
        ({"repositories": []}, "INVALID", "repository"),
        ({"repositories": ["Bad Name"]}, "INVALID", "repository"),
        ({"notifications": ["no-colon"]}, "INVALID", "notification"),
        ({"bandwidthLimit": -5}, "INVALID", "bandwidthLimit"),
        ({"activationStatus": "Active"}, "INVALID", "read-only"),
        ({"clientTokens": ["no-such-token"]}, "NOT_FOUND", "not found"),
    ]
    for fields, code, text in cases:
        body = {"name": "rules-child", "repositories": ["team/app"], **fields}
        status = {"INVALID": 400, "CONFLICT": 409, "NOT_FOUND": 404}[code]
        refused(api.post("/connected-registries", json=body), code, status, text)
    cr = create_cr(api, "rules-child", parent="rules-parent-ro", mode="ReadOnly",
                   syncSchedule="0 */6 * * *", syncWindow="PT2H", messageTtl="P7D",
                   logLevel="Warning", notifications=["team/app:*"], bandwidthLimit=1000000)
    assert (cr["syncWindow"], cr["messageTtl"], cr["logLevel"]) == ("PT2H", "P7D", "Warning")
    assert cr["activationStatus"] == "Inactive" and cr["syncToken"] == "rules-child-sync-token"
    # Mode and parent cannot change; other settings can, with the same rules.
    refused(api.patch("/connected-registries/rules-child", json={"mode": "ReadWrite"}),
            "INVALID", text="cannot change")
    refused(api.patch("/connected-registries/rules-child", json={"parent": None}),
            "INVALID", text="cannot change")
    refused(api.patch("/connected-registries/rules-child", json={"syncWindow": None}),
            "INVALID", text="syncWindow is required")
    cr = ok(api.patch("/connected-registries/rules-child",
                      json={"syncSchedule": "* * * * *", "syncWindow": None, "mode": "ReadOnly"}))
    assert cr["syncSchedule"] == "* * * * *" and cr["syncWindow"] is None
    defaults = create_cr(api, "rules-defaults")
    assert (defaults["mode"], defaults["syncSchedule"], defaults["messageTtl"],
            defaults["logLevel"]) == ("ReadWrite", "* * * * *", "P2D", "Information")


def test_client_tokens(api):
    create_cr(api, "tokens-rw")
    create_cr(api, "tokens-ro", mode="ReadOnly")
    names = []
    for i in range(21):
        name = f"client-{i:02d}"
        ok(api.post("/tokens", json={"name": name,
                                     "actions": ["repositories/team/app/content/read"]}), 201)
        names.append(name)
    cr = ok(api.patch("/connected-registries/tokens-rw", json={"addClientTokens": names[:20]}))
    assert len(cr["clientTokens"]) == 20
    refused(api.patch("/connected-registries/tokens-rw", json={"addClientTokens": names[20:]}),
            "LIMIT_EXCEEDED", text="20 client tokens")
    refused(api.post("/connected-registries", json={"name": "tokens-many", "repositories": ["a"],
                                                    "clientTokens": names}),
            "LIMIT_EXCEEDED", text="20")
    cr = ok(api.patch("/connected-registries/tokens-rw", json={
        "removeClientTokens": ["client-00"], "addClientTokens": ["client-20"]}))
    assert "client-00" not in cr["clientTokens"] and "client-20" in cr["clientTokens"]
    # A ReadOnly CR refuses client tokens that can write or delete.
    ok(api.post("/tokens", json={"name": "writer-client",
                                 "actions": ["repositories/team/app/content/write"]}), 201)
    refused(api.patch("/connected-registries/tokens-ro",
                      json={"addClientTokens": ["writer-client"]}), "INVALID", text="ReadOnly")
    ok(api.patch("/connected-registries/tokens-ro", json={"addClientTokens": ["client-00"]}))
    # ...and refuses a later change that would give one of its client tokens write actions.
    refused(api.patch("/scope-maps/client-00-scope-map", json={
        "addActions": ["repositories/team/app/content/delete"]}), "INVALID", text="ReadOnly")
    refused(api.delete("/tokens/client-00"), "CONFLICT", 409, "client token")
    refused(api.patch("/connected-registries/tokens-ro",
                      json={"addClientTokens": ["tokens-rw-sync-token"]}), "INVALID",
            text="sync token")


# --- connected registries: the hierarchy -----------------------------------------------------------
def test_sync_scope_maps_follow_the_hierarchy(api):
    create_cr(api, "tree-top", repos=["tree/app"])
    create_cr(api, "tree-mid", repos=["tree/app"], parent="tree-top", mode="ReadOnly")
    create_cr(api, "tree-leaf", repos=["tree/leaf"], parent="tree-mid", mode="ReadOnly")
    leaf = sync_actions(api, "tree-leaf")
    assert leaf == {f"gateway/tree-leaf/{g}" for g in GATEWAY} | {
        "repositories/tree/leaf/content/read", "repositories/tree/leaf/metadata/read"}
    mid, top = sync_actions(api, "tree-mid"), sync_actions(api, "tree-top")
    assert leaf < mid and leaf < top and mid < top
    assert "repositories/tree/app/content/write" in top  # ReadWrite
    assert "repositories/tree/app/content/write" not in mid  # ReadOnly
    # Ancestors also sync what their descendants need.
    assert ok(api.get("/connected-registries/tree-mid"))["repositories"] == ["tree/app",
                                                                           "tree/leaf"]
    # repo --add on the leaf reaches every ancestor.
    ok(api.post("/connected-registries/tree-leaf/repositories", json={"add": ["tree/new"]}))
    for cr in ("tree-leaf", "tree-mid", "tree-top"):
        assert "repositories/tree/new/content/read" in sync_actions(api, cr)
        assert "tree/new" in ok(api.get(f"/connected-registries/{cr}"))["repositories"]
    # repo --remove at the top reaches every descendant; the top keeps the others.
    ok(api.post("/connected-registries/tree-top/repositories", json={"remove": ["tree/new"]}))
    for cr in ("tree-leaf", "tree-mid", "tree-top"):
        assert not any("tree/new" in a for a in sync_actions(api, cr))
    refused(api.post("/connected-registries/tree-leaf/repositories",
                     json={"remove": ["tree/leaf"]}), "INVALID", text="no repository")
    # list --parent (all descendants) and --no-children (first level only).
    names = lambda r: [c["name"] for c in ok(r)["connectedRegistries"]]  # noqa: E731
    assert names(api.get("/connected-registries", params={"parent": "tree-top"})) == [
        "tree-leaf", "tree-mid"]
    assert names(api.get("/connected-registries",
                         params={"parent": "tree-top", "noChildren": "true"})) == ["tree-mid"]
    assert {"tree-top", "tree-mid", "tree-leaf"} <= set(names(api.get("/connected-registries")))
    top_level = names(api.get("/connected-registries", params={"noChildren": "true"}))
    assert "tree-top" in top_level and "tree-mid" not in top_level
    # The sync scope map and token belong to the CR.
    refused(api.delete("/scope-maps/tree-leaf-sync-scope-map"), "CONFLICT", 409)
    refused(api.delete("/tokens/tree-leaf-sync-token"), "CONFLICT", 409)
    refused(api.patch("/scope-maps/tree-leaf-sync-scope-map", json={"actions": []}),
            "CONFLICT", 409)
    refused(api.delete("/connected-registries/tree-mid"), "CONFLICT", 409, "children")


def test_delete_with_and_without_cleanup(api):
    create_cr(api, "del-parent", repos=["del/a"])
    create_cr(api, "del-child", repos=["del/b"], parent="del-parent")
    create_cr(api, "del-keep", repos=["del/c"], parent="del-parent")
    assert "gateway/del-child/config/read" in sync_actions(api, "del-parent")
    r = ok(api.delete("/connected-registries/del-child", params={"cleanup": "true"}))
    assert r == {"deleted": "del-child", "leftBehind": []}
    refused(api.get("/tokens/del-child-sync-token"), "NOT_FOUND", 404)
    refused(api.get("/scope-maps/del-child-sync-scope-map"), "NOT_FOUND", 404)
    parent = sync_actions(api, "del-parent")
    assert not any("del-child" in a for a in parent)
    assert "repositories/del/a/content/write" in parent  # its own actions stay
    assert "gateway/del-keep/config/read" in parent  # and its other child's
    # Without cleanup the answer says what stays.
    r = ok(api.delete("/connected-registries/del-keep"))
    assert r["deleted"] == "del-keep"
    assert r["leftBehind"][:2] == ["token del-keep-sync-token", "scope map del-keep-sync-scope-map"]
    assert any("del-parent" in item for item in r["leftBehind"])
    ok(api.get("/tokens/del-keep-sync-token"))
    refused(api.post("/connected-registries", json={"name": "del-keep", "repositories": ["x"]}),
            "CONFLICT", 409, "left behind")
    assert api.delete("/tokens/del-keep-sync-token").status_code == 204
    assert api.delete("/scope-maps/del-keep-sync-scope-map").status_code == 204
    create_cr(api, "del-keep")
    refused(api.delete("/connected-registries/never-was"), "NOT_FOUND", 404)


# --- settings and activation ---------------------------------------------------------------------
def test_settings_rotate_the_sync_password(root, api):
    create_cr(api, "set-top", repos=["set/a"])
    create_cr(api, "set-child", repos=["set/a"], parent="set-top")
    s1 = ok(api.post("/connected-registries/set-top/settings", json={"parentProtocol": "http"}))
    assert s1["connectionString"] == (
        f"ConnectedRegistryName=set-top;SyncTokenName=set-top-sync-token;"
        f"SyncTokenPassword={s1['syncTokenPassword']};ParentGatewayEndpoint={root.host};"
        f"ParentEndpointProtocol=http")
    sync = ("set-top-sync-token", s1["syncTokenPassword"])
    assert httpx.get(f"{root.url}/v2/", auth=sync).status_code == 200
    # A new password1 replaces the old one; password2 is independent.
    s2 = ok(api.post("/connected-registries/set-top/settings", json={"parentProtocol": "https"}))
    assert s2["connectionString"].endswith("ParentEndpointProtocol=https")
    assert httpx.get(f"{root.url}/v2/", auth=sync).status_code == 401
    s3 = ok(api.post("/connected-registries/set-top/settings",
                     json={"parentProtocol": "http", "generatePassword": 2}))
    assert s3["passwordName"] == "password2"
    for s in (s2, s3):
        assert httpx.get(f"{root.url}/v2/",
                         auth=("set-top-sync-token", s["syncTokenPassword"])).status_code == 200
    # The child of a CR needs its parent's address from the operator.
    refused(api.post("/connected-registries/set-child/settings", json={"parentProtocol": "http"}),
            "INVALID", text="parentEndpoint")
    s = ok(api.post("/connected-registries/set-child/settings",
                    json={"parentProtocol": "http", "parentEndpoint": "edge.local:5001"}))
    assert "ParentGatewayEndpoint=edge.local:5001;" in s["connectionString"]
    refused(api.post("/connected-registries/set-child/settings", json={"parentProtocol": "ftp"}),
            "INVALID", text="parentProtocol")
    refused(api.post("/connected-registries/set-top/settings",
                     json={"parentProtocol": "http", "generatePassword": 3}), "INVALID")
    # The sync token may pull its repositories and read its own CR, nothing else.
    auth = ("set-top-sync-token", s3["syncTokenPassword"])
    assert httpx.get(f"{root.url}/connreg/v1/connected-registries/set-top",
                     auth=auth).status_code == 200
    assert httpx.get(f"{root.url}/connreg/v1/connected-registries/set-child",
                     auth=auth).status_code == 200  # a descendant's config: relayed by the parent
    assert httpx.get(f"{root.url}/connreg/v1/connected-registries/del-parent",
                     auth=auth).status_code == 403
    assert httpx.get(f"{root.url}/connreg/v1/tokens", auth=auth).status_code == 403


def test_activation_conflict_and_deactivate(root, api):
    create_cr(api, "act-edge", repos=["act/a"])
    pw = ok(api.post("/connected-registries/act-edge/settings",
                     json={"parentProtocol": "http"}))["syncTokenPassword"]
    url = f"{root.url}/connreg/v1/connected-registries/act-edge/activate"
    sync = ("act-edge-sync-token", pw)
    refused(httpx.post(url, json={"instanceId": "one"}), "UNAUTHORIZED", 401)
    refused(httpx.post(url, json={}, auth=sync), "INVALID", text="instanceId")
    cr = ok(httpx.post(url, json={"instanceId": "one"}, auth=sync))
    assert (cr["activationStatus"], cr["instanceId"]) == ("Active", "one")
    ok(httpx.post(url, json={"instanceId": "one"}, auth=sync))  # the same instance restarting
    msg = refused(httpx.post(url, json={"instanceId": "two"}, auth=sync), "CONFLICT", 409,
                  "already active")
    assert "deactivate" in msg
    # Another CR's sync token cannot activate this one.
    other = ok(api.post("/connected-registries/set-top/settings",
                        json={"parentProtocol": "http"}))["syncTokenPassword"]
    refused(httpx.post(url, json={"instanceId": "x"}, auth=("set-top-sync-token", other)),
            "DENIED", 403)
    cr = ok(api.post("/connected-registries/act-edge/deactivate"))
    assert cr["activationStatus"] == "Inactive" and cr["instanceId"] is None
    cr = ok(httpx.post(url, json={"instanceId": "two"}, auth=sync))
    assert cr["instanceId"] == "two"
    # Disabling the sync token disables the CR.
    ok(api.patch("/tokens/act-edge-sync-token", json={"status": "disabled"}))
    refused(httpx.post(url, json={"instanceId": "two"}, auth=sync), "UNAUTHORIZED", 401)
    assert ok(api.post("/connected-registries/act-edge/resync"), 202)["resyncRequestedAt"]


def serve_cr(data_dir, connection_string: str, extra_env: dict | None = None,
             timeout: float = 30) -> subprocess.CompletedProcess:
    """Run `connreg serve` expecting it to refuse to start."""
    env = {"CONNREG_CONNECTION_STRING": connection_string, **(extra_env or {})}
    return subprocess.run(
        [sys.executable, "-m", "connreg", "serve", "--data-dir", str(data_dir),
         "--listen", f"127.0.0.1:{free_port()}"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)


def test_nodes_activate_themselves_at_start(root, api, tmp_path):
    create_cr(api, "node-top", repos=["nodes/app"])
    create_cr(api, "node-leaf", repos=["nodes/app"], parent="node-top", mode="ReadOnly")
    conn = ok(api.post("/connected-registries/node-top/settings",
                       json={"parentProtocol": "http"}))["connectionString"]
    top = start_node(tmp_path / "top", env={"CONNREG_CONNECTION_STRING": conn})
    leaf = None
    try:
        cr = ok(api.get("/connected-registries/node-top"))
        assert cr["activationStatus"] == "Active"
        instance = (top.data_dir / "instance-id").read_text().strip()
        assert cr["instanceId"] == instance
        # A restart of the same deployment is the same instance.
        top.restart()
        # A second deployment is refused, with a one-line message and a non-zero exit.
        proc = serve_cr(tmp_path / "second", conn)
        assert proc.returncode != 0
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "already active" in lines[0], proc.stderr
        assert conn.split("SyncTokenPassword=")[1].split(";")[0] not in proc.stderr
        # A wrong password is refused too.
        proc = serve_cr(tmp_path / "third", conn.replace("SyncTokenPassword=", "SyncTokenPassword=x"))
        assert proc.returncode != 0 and "HTTP 401" in proc.stderr
        # Nested: the leaf activates through node-top, which relays to the root.
        leaf_conn = ok(api.post("/connected-registries/node-leaf/settings", json={
            "parentProtocol": "http", "parentEndpoint": "127.0.0.1:1"}))["connectionString"]
        leaf = start_node(tmp_path / "leaf", env={"CONNREG_CONNECTION_STRING": leaf_conn,
                                                  "CONNREG_PARENT_ENDPOINT": top.host})
        assert ok(api.get("/connected-registries/node-leaf"))["activationStatus"] == "Active"
        # A ReadOnly connected registry refuses writes, naming its mode.
        with httpx.Client(base_url=leaf.url, auth=leaf.admin) as c:
            r = c.post("/v2/nodes/app/blobs/uploads/")
            refused(r, "DENIED", 403, "ReadOnly")
        # The management API is the root's.
        r = httpx.get(f"{top.url}/connreg/v1/tokens", auth=top.admin)
        refused(r, "DENIED", 403, "root")
        # After deactivate, a new deployment is accepted.
        top.stop()
        ok(api.post("/connected-registries/node-top/deactivate"))
        second = start_node(tmp_path / "second", env={"CONNREG_CONNECTION_STRING": conn})
        second.stop()
        assert ok(api.get("/connected-registries/node-top"))["instanceId"] != instance
    finally:
        top.stop()
        if leaf:
            leaf.stop()


def test_unreachable_parent_and_bad_connection_string(tmp_path):
    proc = serve_cr(tmp_path / "a", "ConnectedRegistryName=lonely;SyncTokenName=t;"
                    "SyncTokenPassword=p;ParentGatewayEndpoint=127.0.0.1:1;"
                    "ParentEndpointProtocol=http")
    assert proc.returncode != 0 and "cannot reach parent" in proc.stderr
    proc = serve_cr(tmp_path / "b", "ConnectedRegistryName=lonely")
    assert proc.returncode == 2 and "lacks" in proc.stderr


def test_readonly_pushes_stay_possible_on_the_root(root, api):
    # The ReadOnly rule is the CR node's; the root takes pushes from the admin as usual.
    with httpx.Client(base_url=root.url, auth=root.admin, timeout=30) as c:
        push_image(c, "nodes/app", make_image([100]), "v1")
