"""Image locking (ACR's changeable attributes): a repository, a tag or a manifest digest may be
made non-writable, non-deletable or non-readable. Locks are metadata of the repository: stored
in the metadata store's `locks` table, set at the root, carried down by sync to every tier
(change-log entries with op "lock", and reconciliation), and enforced by every node on its own
store, whether its parent is reachable or not (docs/locks.md)."""

from connreg.locks.model import LockRefused, RepositoryLock

__all__ = ["LockRefused", "RepositoryLock"]
