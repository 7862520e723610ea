"""The `connreg` management CLI, run as a real subprocess against a real auth-enabled root node.

Scripts rely on this contract: `--output json` prints the management API's camelCase JSON,
errors are one `connreg: error: …` line on stderr with exit 1 (API refused) or 2 (usage).
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import re
import select
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from connreg.cli.main import build_parser
from connreg.testing import Node, free_port, start_node

ADMIN_PASSWORD = "cli-test-admin-password-0123456789"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Node:
    # A few tests fail logins on purpose; keep them clear of the per-address limit.
    n = start_node(tmp_path_factory.mktemp("cli") / "root", admin_password=ADMIN_PASSWORD,
                   env={"CONNREG_AUTH_FAILURE_LIMIT": "1000"})
    yield n
    n.stop()


@pytest.fixture
def config_dir(tmp_path) -> Path:
    return tmp_path / "config"


def base_env(config_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNREG_")}
    env["CONNREG_CONFIG_DIR"] = str(config_dir)
    return env


def run(*args: str, env: dict[str, str], input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "connreg", *args], env=env, input=input,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def cli(root, config_dir):
    """Run `connreg ARGS…` as admin of `root` (credentials from the environment)."""
    env = {**base_env(config_dir), "CONNREG_REGISTRY": root.url, "CONNREG_USERNAME": "admin",
           "CONNREG_PASSWORD": ADMIN_PASSWORD}

    def call(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
        return run(*args, env=env, input=input)

    call.env = env
    return call


def ok_json(result: subprocess.CompletedProcess):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) if result.stdout.strip() else None


def ok_table(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    assert not result.stdout.lstrip().startswith(("{", "[")), result.stdout
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess, code: int) -> str:
    """The single stderr line of a failed command (and nothing on stdout)."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("connreg: error: "), lines[0]
    assert result.stdout == ""
    return lines[0]


def api(root: Node) -> httpx.Client:
    return httpx.Client(base_url=f"{root.url}/connreg/v1", auth=("admin", ADMIN_PASSWORD),
                        timeout=30)


# ---------------------------------------------------------------------------------------------
# help and usage


def _commands(parser: argparse.ArgumentParser, prefix: list[str]):
    """(command words, is a leaf) for every command and group under `parser`."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    yield prefix, not subs
    for name, child in (subs[0].choices.items() if subs else ()):
        yield from _commands(child, [*prefix, name])


# `serve` and `maintenance` work on a local node, not on a registry's management API.
LOCAL_COMMANDS = ("serve", "maintenance")
COMMANDS = [(c, leaf) for c, leaf in _commands(build_parser(), [])
            if c and c[0] not in LOCAL_COMMANDS]
MANAGEMENT = [c for c, _ in COMMANDS]


@pytest.mark.parametrize(("command", "leaf"), COMMANDS, ids=[" ".join(c) for c, _ in COMMANDS])
def test_help_everywhere(command, leaf, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: connreg {' '.join(command)}")
    if leaf and command[0] not in ("login", "logout"):
        for option in ("--registry", "--username", "--password", "--output"):
            assert option in out, (command, option)


def test_every_group_command_is_registered():
    names = {" ".join(c) for c in MANAGEMENT}
    for expected in ("scope-map create", "scope-map update", "scope-map show", "scope-map list",
                     "scope-map delete", "token create", "token update", "token show",
                     "token list", "token delete", "token credential generate",
                     "connected-registry create", "connected-registry update",
                     "connected-registry show", "connected-registry list",
                     "connected-registry deactivate", "connected-registry resync",
                     "connected-registry repo", "connected-registry delete",
                     "connected-registry get-settings", "login", "logout"):
        assert expected in names


def test_usage_errors_are_one_line_exit_2(cli):
    line = one_line_error(cli("scope-map", "create", "--repository", "team/app", "content/read"), 2)
    assert "--name" in line
    line = one_line_error(cli("scope-map", "create", "--name", "smbad",
                              "--repository", "team/app", "content/reed"), 2)
    assert "content/reed" in line and "content/read" in line
    line = one_line_error(cli("scope-map", "create", "--name", "smbad",
                              "--repository", "team/app"), 2)
    assert "at least one action" in line
    one_line_error(cli("token", "create", "--name", "tkbad"), 2)
    one_line_error(cli("token", "create", "--name", "tkbad", "--expiration", "tomorrow"), 2)
    one_line_error(cli("connected-registry", "create", "--name", "crbad", "--repository", "a",
                       "--mode", "Sideways"), 2)
    one_line_error(cli("connected-registry", "update", "--name", "crbad", "--mode", "ReadOnly"), 2)
    one_line_error(cli("connected-registry", "frobnicate"), 2)


def test_no_registry_configured(config_dir):
    line = one_line_error(run("scope-map", "list", env=base_env(config_dir)), 2)
    assert "--registry" in line and "connreg login" in line


def test_unreachable_registry(config_dir):
    url = f"http://127.0.0.1:{free_port()}"
    line = one_line_error(run("token", "list", "--registry", url, "-u", "admin", "-p", "pw-xyz",
                              env=base_env(config_dir)), 1)
    assert "cannot reach" in line and "pw-xyz" not in line


# ---------------------------------------------------------------------------------------------
# login


def test_login_stores_credentials_0600_and_logout(root, config_dir):
    env = base_env(config_dir)
    wrong = run("login", root.url, "--username", "admin", "--password", "not-the-password",
                env=env)
    line = one_line_error(wrong, 1)
    assert "not-the-password" not in line and "login" in line
    assert not (config_dir / "credentials.json").exists()

    done = run("login", root.url, "--username", "admin", "--password-stdin", env=env,
               input=ADMIN_PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    assert ADMIN_PASSWORD not in done.stdout + done.stderr
    path = config_dir / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(config_dir.stat().st_mode) == 0o700
    stored = json.loads(path.read_text())
    assert stored["current"] == root.url
    assert stored["registries"][root.url]["username"] == "admin"

    # Later commands need neither --registry nor credentials.
    assert "scopeMaps" in ok_json(run("scope-map", "list", "-o", "json", env=env))

    out = run("logout", env=env)
    assert out.returncode == 0 and root.url in out.stdout
    assert root.url not in json.loads(path.read_text())["registries"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    one_line_error(run("scope-map", "list", "--registry", root.url, env=env), 1)


def test_login_as_a_token_warns_it_cannot_manage(cli, root, config_dir):
    token = ok_json(cli("token", "create", "--name", "lg-reader", "-o", "json",
                        "--repository", "team/app", "content/read"))
    password = token["passwords"][0]["value"]
    env = base_env(config_dir / "token-login")
    done = run("login", root.url, "-u", "lg-reader", "-p", password, env=env)
    assert done.returncode == 0, done.stderr
    assert "refuses management" in done.stderr and password not in done.stdout + done.stderr
    line = one_line_error(run("token", "list", env=env), 1)
    assert password not in line


def test_logout_when_not_logged_in(config_dir):
    result = run("logout", env=base_env(config_dir))
    assert result.returncode == 0 and "Not logged in" in result.stdout


def test_flags_override_stored_login(root, config_dir):
    env = base_env(config_dir)
    assert run("login", root.url, "-u", "admin", "-p", ADMIN_PASSWORD, env=env).returncode == 0
    line = one_line_error(run("token", "list", "-u", "admin", "-p", "wrong-pw-123", env=env), 1)
    assert "wrong-pw-123" not in line


# ---------------------------------------------------------------------------------------------
# scope maps


def test_scope_map_lifecycle(cli):
    created = ok_json(cli("scope-map", "create", "--name", "sm-ci", "-o", "json",
                          "--repository", "team/app", "content/read", "content/write",
                          "metadata/read", "--repository", "team/*", "metadata/read",
                          "--gateway", "edge-one", "config/read", "message/write",
                          "--description", "CI pushes"))
    assert created["name"] == "sm-ci" and created["description"] == "CI pushes"
    assert set(created["actions"]) == {
        "repositories/team/app/content/read", "repositories/team/app/content/write",
        "repositories/team/app/metadata/read", "repositories/team/*/metadata/read",
        "gateway/edge-one/config/read", "gateway/edge-one/message/write"}

    shown = ok_table(cli("scope-map", "show", "--name", "sm-ci"))
    assert "sm-ci" in shown and "repositories/team/app/content/write" in shown

    updated = ok_json(cli("scope-map", "update", "--name", "sm-ci", "-o", "json",
                          "--add-repository", "team/db", "content/read",
                          "--remove-repository", "team/app", "content/write",
                          "--remove-gateway", "edge-one"))
    assert set(updated["actions"]) == {
        "repositories/team/app/content/read", "repositories/team/app/metadata/read",
        "repositories/team/*/metadata/read", "repositories/team/db/content/read"}

    replaced = ok_json(cli("scope-map", "update", "--name", "sm-ci", "-o", "json",
                           "--repository", "other", "content/read", "--description", "x"))
    assert replaced["actions"] == ["repositories/other/content/read"]
    assert replaced["description"] == "x"

    listed = ok_json(cli("scope-map", "list", "-o", "json"))
    assert "sm-ci" in [s["name"] for s in listed["scopeMaps"]]
    table = ok_table(cli("scope-map", "list"))
    assert table.splitlines()[0].split()[0] == "NAME" and "sm-ci" in table

    assert ok_table(cli("scope-map", "delete", "--name", "sm-ci")).startswith("Deleted")
    line = one_line_error(cli("scope-map", "show", "--name", "sm-ci"), 1)
    assert "sm-ci" in line or "not" in line.lower()


def test_scope_map_delete_json_prints_nothing(cli):
    ok_json(cli("scope-map", "create", "--name", "sm-quiet", "--repository", "a", "content/read",
                "-o", "json"))
    result = cli("scope-map", "delete", "--name", "sm-quiet", "-o", "json")
    assert result.returncode == 0 and result.stdout == ""


# ---------------------------------------------------------------------------------------------
# tokens


def test_token_create_with_repository_makes_scope_map_and_prints_passwords_once(cli, root):
    token = ok_json(cli("token", "create", "--name", "tk-reader", "-o", "json",
                        "--repository", "team/app", "content/read", "metadata/read"))
    assert token["scopeMap"] == "tk-reader-scope-map"
    assert token["status"] == "enabled"
    passwords = {p["name"]: p["value"] for p in token["passwords"]}
    assert set(passwords) == {"password1", "password2"} and all(passwords.values())

    scope_map = ok_json(cli("scope-map", "show", "--name", "tk-reader-scope-map", "-o", "json"))
    assert set(scope_map["actions"]) == {"repositories/team/app/content/read",
                                         "repositories/team/app/metadata/read"}

    shown = cli("token", "show", "--name", "tk-reader", "-o", "json")
    assert passwords["password1"] not in shown.stdout and passwords["password2"] not in shown.stdout
    assert "passwords" not in ok_json(shown)
    assert "tk-reader" in ok_table(cli("token", "show", "--name", "tk-reader"))

    # The printed password is the token's: the registry accepts it.
    assert httpx.get(f"{root.url}/v2/", auth=("tk-reader", passwords["password1"])).status_code == 200

    rotated = ok_json(cli("token", "credential", "generate", "--name", "tk-reader",
                          "--password1", "-o", "json"))
    assert [p["name"] for p in rotated["passwords"]] == ["password1"]
    new = rotated["passwords"][0]["value"]
    assert new != passwords["password1"]
    assert httpx.get(f"{root.url}/v2/", auth=("tk-reader", new)).status_code == 200
    assert httpx.get(f"{root.url}/v2/", auth=("tk-reader", passwords["password1"])).status_code == 401
    assert httpx.get(f"{root.url}/v2/", auth=("tk-reader", passwords["password2"])).status_code == 200

    both = ok_json(cli("token", "credential", "generate", "--name", "tk-reader", "-o", "json",
                       "--expiration", "2099-01-01T00:00:00Z"))
    assert sorted(p["name"] for p in both["passwords"]) == ["password1", "password2"]

    updated = ok_json(cli("token", "update", "--name", "tk-reader", "--status", "disabled",
                          "-o", "json"))
    assert updated["status"] == "disabled"

    one_line_error(cli("token", "create", "--name", "tk-reader", "--scope-map", "tk-both",
                       "--repository", "a", "content/read"), 2)
    ok_table(cli("token", "delete", "--name", "tk-reader"))
    one_line_error(cli("token", "show", "--name", "tk-reader"), 1)


def test_token_create_with_scope_map_table_output(cli):
    ok_json(cli("scope-map", "create", "--name", "tk-push-sm", "-o", "json",
                "--repository", "team/app", "content/read", "content/write",
                "metadata/read", "metadata/write"))
    result = cli("token", "create", "--name", "tk-pusher", "--scope-map", "tk-push-sm",
                 "--expiration", "2099-12-31T23:59:59Z")
    table = ok_table(result)
    assert "password1" in table and "password2" in table and "tk-push-sm" in table
    assert "shown only once" in result.stderr

    listed = ok_json(cli("token", "list", "-o", "json"))
    mine = [t for t in listed["tokens"] if t["name"] == "tk-pusher"]
    assert mine and mine[0]["scopeMap"] == "tk-push-sm"
    assert all(c.get("expiry") for c in mine[0]["credentials"])
    assert "tk-pusher" in ok_table(cli("token", "list"))

    ok_json(cli("scope-map", "create", "--name", "tk-other-sm", "-o", "json",
                "--repository", "x", "content/read"))
    assert ok_json(cli("token", "update", "--name", "tk-pusher", "--scope-map", "tk-other-sm",
                       "-o", "json"))["scopeMap"] == "tk-other-sm"
    assert "enabled" in ok_table(cli("token", "update", "--name", "tk-pusher",
                                     "--status", "enabled"))
    # A scope map in use cannot go.
    one_line_error(cli("scope-map", "delete", "--name", "tk-other-sm"), 1)


def test_token_create_for_missing_scope_map_is_refused(cli):
    line = one_line_error(cli("token", "create", "--name", "tk-orphan", "--scope-map", "nope-sm"), 1)
    assert "nope-sm" in line or "scope" in line.lower()


# ---------------------------------------------------------------------------------------------
# connected registries

CONNECTION_STRING = re.compile(
    r"^ConnectedRegistryName=(?P<name>[^;]+);SyncTokenName=(?P<token>[^;]+);"
    r"SyncTokenPassword=(?P<password>[^;]+);ParentGatewayEndpoint=(?P<endpoint>[^;]+);"
    r"ParentEndpointProtocol=(?P<protocol>https?)$")


def test_connected_registry_lifecycle(cli, root):
    parent = ok_json(cli("connected-registry", "create", "--name", "cr-plant", "-o", "json",
                         "--mode", "ReadWrite", "--repository", "team/app", "team/db",
                         "--repository", "base/*", "--sync-message-ttl", "P3D",
                         "--log-level", "debug", "--notifications", "team/app:*",
                         "--gc-enabled", "false", "--gc-schedule", "0 3 * * *",
                         "--bandwidth-limit", "1000000"))
    assert parent["name"] == "cr-plant" and parent["mode"] == "ReadWrite"
    assert parent["parent"] is None
    assert set(parent["repositories"]) == {"team/app", "team/db", "base/*"}
    assert parent["messageTtl"] == "P3D" and parent["logLevel"] == "Debug"
    assert parent["notifications"] == ["team/app:*"]
    assert parent["gcEnabled"] is False and parent["bandwidthLimit"] == 1000000
    assert parent["syncToken"]

    with api(root) as c:
        for name in ("cr-client-a", "cr-client-b"):
            c.post("/scope-maps", json={"name": f"{name}-sm",
                                        "actions": ["repositories/team/app/content/read",
                                                    "repositories/team/app/metadata/read"]})
            assert c.post("/tokens", json={"name": name, "scopeMap": f"{name}-sm"}).status_code == 201

    child_table = ok_table(cli("connected-registry", "create", "--name", "cr-line1",
                               "--parent", "cr-plant", "--mode", "readonly",
                               "--repository", "team/app", "--client-tokens", "cr-client-a",
                               "--sync-schedule", "0 2 * * *", "--sync-window", "PT4H"))
    assert "cr-line1" in child_table and "ReadOnly" in child_table and "cr-plant" in child_table

    shown = ok_json(cli("connected-registry", "show", "--name", "cr-line1", "-o", "json"))
    assert shown["parent"] == "cr-plant" and shown["syncSchedule"] == "0 2 * * *"
    assert shown["syncWindow"] == "PT4H" and shown["clientTokens"] == ["cr-client-a"]
    assert "Inactive" in ok_table(cli("connected-registry", "show", "--name", "cr-line1"))

    names = [c["name"] for c in ok_json(cli("connected-registry", "list", "-o", "json"))
             ["connectedRegistries"]]
    assert {"cr-plant", "cr-line1"} <= set(names)
    children = ok_json(cli("connected-registry", "list", "--parent", "cr-plant", "-o", "json"))
    assert [c["name"] for c in children["connectedRegistries"]] == ["cr-line1"]
    top = ok_json(cli("connected-registry", "list", "--no-children", "-o", "json"))
    top_names = [c["name"] for c in top["connectedRegistries"]]
    assert "cr-plant" in top_names and "cr-line1" not in top_names
    table = ok_table(cli("connected-registry", "list"))
    assert table.splitlines()[0].split()[:2] == ["NAME", "MODE"]

    updated = ok_json(cli("connected-registry", "update", "--name", "cr-line1", "-o", "json",
                          "--add-client-tokens", "cr-client-b",
                          "--remove-client-tokens", "cr-client-a",
                          "--sync-schedule", "0 4 * * *", "--sync-window", "PT2H",
                          "--sync-message-ttl", "P5D", "--log-level", "Warning",
                          "--notifications", "team/app:v1"))
    assert updated["clientTokens"] == ["cr-client-b"]
    assert updated["syncSchedule"] == "0 4 * * *" and updated["syncWindow"] == "PT2H"
    assert updated["messageTtl"] == "P5D" and updated["logLevel"] == "Warning"
    assert updated["notifications"] == ["team/app:v1"]
    assert "Warning" in ok_table(cli("connected-registry", "update", "--name", "cr-line1",
                                     "--log-level", "warning"))

    ok_json(cli("connected-registry", "repo", "--name", "cr-line1", "-o", "json",
                "--add", "team/db", "--remove", "team/app"))
    assert ok_json(cli("connected-registry", "show", "--name", "cr-line1", "-o", "json")
                   )["repositories"] == ["team/db"]
    ok_table(cli("connected-registry", "repo", "--name", "cr-line1", "--add", "base/img"))

    ok_table(cli("connected-registry", "deactivate", "--name", "cr-line1"))
    ok_json(cli("connected-registry", "deactivate", "--name", "cr-line1", "-o", "json"))
    ok_table(cli("connected-registry", "resync", "--name", "cr-line1"))
    ok_json(cli("connected-registry", "resync", "--name", "cr-line1", "-o", "json"))


def test_get_settings_connection_string(cli, root):
    ok_json(cli("connected-registry", "create", "--name", "cr-settings", "-o", "json",
                "--repository", "team/app"))
    line = one_line_error(cli("connected-registry", "get-settings", "--name", "cr-settings",
                              "--parent-protocol", "http"), 2)
    assert "--yes" in line

    settings = ok_json(cli("connected-registry", "get-settings", "--name", "cr-settings",
                           "--parent-protocol", "http", "--yes", "-o", "json"))
    match = CONNECTION_STRING.match(settings["connectionString"])
    assert match, settings["connectionString"]
    assert match["name"] == "cr-settings" and match["protocol"] == "http"
    sync_token = ok_json(cli("connected-registry", "show", "--name", "cr-settings",
                             "-o", "json"))["syncToken"]
    assert match["token"] == sync_token
    # The password is the sync token's password1.
    assert httpx.get(f"{root.url}/v2/", auth=(sync_token, match["password"])).status_code == 200

    result = cli("connected-registry", "get-settings", "--name", "cr-settings", "--yes",
                 "--parent-protocol", "https", "--generate-password", "2",
                 "--parent-endpoint", "root.example:443")
    table = ok_table(result)
    second = CONNECTION_STRING.match(
        re.search(r"ConnectedRegistryName=\S+", table).group(0))
    assert second["endpoint"] == "root.example:443" and second["protocol"] == "https"
    assert second["password"] != match["password"]
    assert "shown only once" in result.stderr
    # Rotating password2 left password1 alone.
    assert httpx.get(f"{root.url}/v2/", auth=(sync_token, match["password"])).status_code == 200
    one_line_error(cli("connected-registry", "get-settings", "--name", "cr-settings",
                       "--parent-protocol", "ftp", "--yes"), 2)


def test_get_settings_for_a_child_of_a_cr_needs_parent_endpoint(cli):
    ok_json(cli("connected-registry", "create", "--name", "cr-gs-top", "-o", "json",
                "--repository", "team/*"))
    ok_json(cli("connected-registry", "create", "--name", "cr-gs-low", "-o", "json",
                "--parent", "cr-gs-top", "--repository", "team/app"))
    line = one_line_error(cli("connected-registry", "get-settings", "--name", "cr-gs-low",
                              "--parent-protocol", "https", "--yes"), 2)
    assert "--parent-endpoint" in line and "cr-gs-top" in line
    settings = ok_json(cli("connected-registry", "get-settings", "--name", "cr-gs-low",
                           "--parent-protocol", "https", "--yes", "-o", "json",
                           "--parent-endpoint", "plant.example:5000"))
    match = CONNECTION_STRING.match(settings["connectionString"])
    assert match["endpoint"] == "plant.example:5000" and match["name"] == "cr-gs-low"


def test_delete_needs_confirmation_and_cleanup(cli):
    created = ok_json(cli("connected-registry", "create", "--name", "cr-doomed", "-o", "json",
                          "--repository", "team/app"))
    sync_token = created["syncToken"]
    line = one_line_error(cli("connected-registry", "delete", "--name", "cr-doomed"), 2)
    assert "--yes" in line
    ok_json(cli("connected-registry", "show", "--name", "cr-doomed", "-o", "json"))

    deleted = ok_json(cli("connected-registry", "delete", "--name", "cr-doomed", "--cleanup",
                          "--yes", "-o", "json"))
    assert deleted["deleted"] == "cr-doomed" and deleted["leftBehind"] == []
    one_line_error(cli("connected-registry", "show", "--name", "cr-doomed"), 1)
    one_line_error(cli("token", "show", "--name", sync_token), 1)


def test_delete_without_cleanup_says_what_is_left(cli):
    created = ok_json(cli("connected-registry", "create", "--name", "cr-leftover", "-o", "json",
                          "--repository", "team/app"))
    out = ok_table(cli("connected-registry", "delete", "--name", "cr-leftover", "--yes"))
    assert out.startswith("Deleted") and "Left behind" in out
    assert created["syncToken"] in out
    ok_json(cli("token", "show", "--name", created["syncToken"], "-o", "json"))


def _on_tty(env: dict[str, str], args: list[str], answer: bytes) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as stdin/stderr, answer its prompt, return (rc, text)."""
    main, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "connreg", *args], env=env,
                            stdin=secondary, stdout=subprocess.PIPE, stderr=secondary)
    os.close(secondary)
    seen = b""
    deadline = time.monotonic() + 30
    while b"[y/N]" not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 0.5)
        if ready:
            try:
                seen += os.read(main, 4096)
            except OSError:
                break
    os.write(main, answer)
    out, _ = proc.communicate(timeout=30)
    try:
        while select.select([main], [], [], 0.1)[0]:
            seen += os.read(main, 4096)
    except OSError:
        pass
    os.close(main)
    return proc.returncode, seen.decode(errors="replace") + out.decode()


def test_delete_asks_on_a_terminal(cli):
    ok_json(cli("connected-registry", "create", "--name", "cr-asked", "-o", "json",
                "--repository", "team/app"))
    rc, text = _on_tty(cli.env, ["connected-registry", "delete", "--name", "cr-asked"], b"n\n")
    assert rc == 1 and "cancelled" in text
    ok_json(cli("connected-registry", "show", "--name", "cr-asked", "-o", "json"))
    rc, text = _on_tty(cli.env, ["connected-registry", "delete", "--name", "cr-asked",
                                 "--cleanup"], b"y\n")
    assert rc == 0, text
    one_line_error(cli("connected-registry", "show", "--name", "cr-asked"), 1)


# ---------------------------------------------------------------------------------------------
# refusals the API makes, reported as one line with exit 1


def test_readonly_parent_refuses_readwrite_child(cli):
    ok_json(cli("connected-registry", "create", "--name", "cr-ro-parent", "--mode", "ReadOnly",
                "--repository", "team/app", "-o", "json"))
    line = one_line_error(cli("connected-registry", "create", "--name", "cr-rw-child",
                              "--parent", "cr-ro-parent", "--mode", "ReadWrite",
                              "--repository", "team/app"), 1)
    assert "ReadOnly" in line


def test_21st_client_token_refused(cli, root):
    names = [f"cr-ct-{i:02d}" for i in range(21)]
    with api(root) as c:
        c.post("/scope-maps", json={"name": "cr-ct-sm",
                                    "actions": ["repositories/team/app/content/read"]})
        for name in names:
            assert c.post("/tokens", json={"name": name, "scopeMap": "cr-ct-sm"}).status_code == 201
    line = one_line_error(cli("connected-registry", "create", "--name", "cr-many",
                              "--repository", "team/app", "--client-tokens", *names), 1)
    assert "20" in line
    ok_json(cli("connected-registry", "create", "--name", "cr-many", "-o", "json",
                "--repository", "team/app", "--client-tokens", *names[:20]))
    line = one_line_error(cli("connected-registry", "update", "--name", "cr-many",
                              "--add-client-tokens", names[20]), 1)
    assert "20" in line


def test_missing_sync_window_refused(cli):
    line = one_line_error(cli("connected-registry", "create", "--name", "cr-nowindow",
                              "--repository", "team/app", "--sync-schedule", "0 2 * * *"), 1)
    assert "window" in line.lower()


def test_errors_never_echo_the_password(root, config_dir):
    env = {**base_env(config_dir), "CONNREG_REGISTRY": root.url, "CONNREG_USERNAME": "admin",
           "CONNREG_PASSWORD": "secret-wrong-9f8e7d"}
    result = run("connected-registry", "list", env=env)
    line = one_line_error(result, 1)
    assert "secret-wrong-9f8e7d" not in line
