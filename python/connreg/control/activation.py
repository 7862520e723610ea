"""A connected registry's side of activation (spec §4), and relaying it up a hierarchy.

At start, a node with a connection string POSTs `{"instanceId"}` to its parent's
`/connreg/v1/connected-registries/<name>/activate` with its sync token (Basic). The instance id
is generated once and kept in `<data_dir>/instance-id`, so restarts of the same deployment are
recognised; a second deployment gets 409 until `deactivate`. What the parent answers (mode,
parent, repositories; never a secret) is kept in `<data_dir>/connected-registry.json`.

Nested hierarchies: the root is the only source of truth for activation. A CR that receives an
activate request for a descendant relays it unchanged (same Authorization header, same body) to
its own parent, and so on up to the root, which checks the descendant's own sync token.

Every call to the parent (activation, the relay, sync and delta transfer through
`sync/remote.py`) verifies an https parent the same way: `Connection.verify()`, against
`parent_ca_file` or the system trust store, and says why in `Connection.unreachable()`.
"""

from __future__ import annotations

import json
import os
import ssl
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

from connreg import __version__
from connreg.config import Settings
from connreg.tls import TrustError, unreachable_reason, verifying_context

INSTANCE_ID_FILE = "instance-id"
STATE_FILE = "connected-registry.json"
REQUIRED_KEYS = ("ConnectedRegistryName", "SyncTokenName", "SyncTokenPassword",
                 "ParentGatewayEndpoint", "ParentEndpointProtocol")


class ActivationError(Exception):
    """Activation was refused or could not happen; the message is one line for the operator."""


@dataclass(frozen=True)
class Connection:
    name: str
    token: str
    password: str
    endpoint: str
    protocol: str
    ca_file: str = ""  # what an https parent must verify against; "" = the system store

    @property
    def base_url(self) -> str:
        return f"{self.protocol}://{self.endpoint}"

    def verify(self) -> ssl.SSLContext:
        """httpx's `verify` for every call to the parent."""
        return verifying_context(self.ca_file)

    def unreachable(self, exc: BaseException) -> str:
        """Why a call to the parent failed: a TLS refusal in words, else the error's type."""
        return unreachable_reason(exc, self.endpoint, self.ca_file)

    def __repr__(self) -> str:  # never show the password
        return f"Connection(name={self.name!r}, token={self.token!r}, endpoint={self.endpoint!r})"


def parse_connection_string(text: str, endpoint_override: str = "") -> Connection:
    parts = {}
    for item in text.strip().split(";"):
        if item.strip():
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError("connection string: expected Key=Value pairs separated by ';'")
            parts[key.strip()] = value.strip()
    missing = [k for k in REQUIRED_KEYS if not parts.get(k)]
    if missing:
        raise ValueError(f"connection string lacks {', '.join(missing)}")
    protocol = parts["ParentEndpointProtocol"].lower()
    if protocol not in ("http", "https"):
        raise ValueError("connection string: ParentEndpointProtocol must be http or https")
    return Connection(parts["ConnectedRegistryName"], parts["SyncTokenName"],
                      parts["SyncTokenPassword"], endpoint_override or
                      parts["ParentGatewayEndpoint"], protocol)


def connection(settings: Settings) -> Connection | None:
    if not settings.connection_string:
        return None
    return replace(parse_connection_string(settings.connection_string, settings.parent_endpoint),
                   ca_file=settings.parent_ca_file)


def parent_trust(settings: Settings) -> None:
    """Refuse at start a `parent_ca_file` that cannot be used (ValueError, one line)."""
    try:
        verifying_context(settings.parent_ca_file)
    except TrustError as exc:
        raise ValueError(f"parent_ca_file: {exc}") from None


def instance_id(data_dir: Path) -> str:
    path = data_dir / INSTANCE_ID_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(str(uuid.uuid4()) + "\n")
        os.replace(tmp, path)
    return path.read_text().strip()


def load_state(data_dir: Path) -> dict | None:
    path = data_dir / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else None


# Answers that say "not now" rather than "no": the parent or its own parent is away or busy.
PARENT_AWAY = (429, 502, 503, 504)


def _message(resp: httpx.Response) -> str:
    try:
        return resp.json()["errors"][0]["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        return f"HTTP {resp.status_code}"


def activate(settings: Settings, timeout: float = 30.0) -> dict:
    """Activate this node's connected registry at its parent; ActivationError if refused."""
    conn = connection(settings)
    assert conn is not None
    body = {"instanceId": instance_id(settings.data_dir), "version": __version__}
    url = f"{conn.base_url}/connreg/v1/connected-registries/{conn.name}/activate"
    try:
        resp = httpx.post(url, json=body, auth=(conn.token, conn.password), timeout=timeout,
                          verify=conn.verify())
    except httpx.HTTPError as exc:
        state = load_state(settings.data_dir)
        if state is not None:  # activated before: serve what we have while the parent is away
            state["offline"] = f"parent {conn.endpoint} unreachable ({conn.unreachable(exc)})"
            return state
        raise ActivationError(f"cannot reach parent {conn.endpoint} to activate connected "
                              f"registry {conn.name}: {conn.unreachable(exc)}") from None
    if resp.status_code in PARENT_AWAY and (state := load_state(settings.data_dir)) is not None:
        # The parent is up but cannot answer for its own parent (a grandparent cut off relays
        # 503): not a refusal. An edge rebooting on a ship while the link upstream is down
        # must come up and serve what it has, as when the parent itself is unreachable.
        state["offline"] = (f"parent {conn.endpoint} cannot confirm the activation now "
                            f"(HTTP {resp.status_code}: {_message(resp)})")
        return state
    if resp.status_code != 200:
        raise ActivationError(f"parent {conn.endpoint} refused to activate connected registry "
                              f"{conn.name} (HTTP {resp.status_code}): {_message(resp)}")
    doc = resp.json()
    state = {k: doc.get(k) for k in ("name", "mode", "parent", "repositories", "instanceId",
                                     "syncSchedule", "syncWindow", "messageTtl", "logLevel",
                                     "bandwidthLimit", "gcEnabled", "gcSchedule")}
    path = settings.data_dir / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, path)
    return state


def remember_repositories(data_dir: Path, repositories: list[str]) -> None:
    """Record the repository set the parent changed at runtime, so a start without the parent
    (which serves the recorded state) refuses and accepts writes by the current set."""
    state = load_state(data_dir)
    if state is None or state.get("repositories") == repositories:
        return
    state["repositories"] = repositories
    path = data_dir / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, path)


async def relay_activation(settings: Settings, name: str, authorization: str | None,
                           body: bytes) -> httpx.Response:
    """Forward a descendant's activate request to this node's parent, unchanged."""
    conn = connection(settings)
    assert conn is not None
    headers = {"Content-Type": "application/json"}
    if authorization:
        headers["Authorization"] = authorization
    async with httpx.AsyncClient(timeout=30.0, verify=conn.verify()) as client:
        return await client.post(
            f"{conn.base_url}/connreg/v1/connected-registries/{name}/activate",
            content=body, headers=headers)
