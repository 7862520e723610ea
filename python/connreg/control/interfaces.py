"""The control-plane store protocol: named JSON documents by kind, changed in transactions.

Kinds: `scope_map`, `token`, `connected_registry`, `setting`. Names are unique per kind,
case-insensitively. Documents are the management API's camelCase shape plus private fields
(password hashes) that the API layer never renders.
"""

from __future__ import annotations

from typing import Callable, Protocol, TypeVar

T = TypeVar("T")

SCOPE_MAP = "scope_map"
TOKEN = "token"
CONNECTED_REGISTRY = "connected_registry"
SETTING = "setting"


class ControlTxn(Protocol):
    """Reads and writes inside one transaction (all or nothing)."""

    def get(self, kind: str, name: str) -> dict | None: ...
    def list(self, kind: str) -> list[dict]: ...
    def count(self, kind: str) -> int: ...
    def put(self, kind: str, doc: dict) -> None: ...
    def delete(self, kind: str, name: str) -> bool: ...


class ControlStore(Protocol):
    # Bumped by every committed transaction; caches derived from documents key on it.
    generation: int

    def get(self, kind: str, name: str) -> dict | None: ...
    def list(self, kind: str) -> list[dict]: ...
    def count(self, kind: str) -> int: ...
    async def transact(self, fn: Callable[[ControlTxn], T]) -> T: ...
    def close(self) -> None: ...
