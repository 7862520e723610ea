"""What a lock is, and the refusal a locked operation raises."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RepositoryLock:
    """The attributes of one repository, tag or manifest digest (a repository-level lock has
    neither `tag` nor `digest`). Only rows that disable something are stored."""

    repo: str
    tag: str | None
    digest: str | None
    write_enabled: bool = True
    delete_enabled: bool = True
    read_enabled: bool = True
    updated: float = 0.0

    @property
    def kind(self) -> str:
        return "tag" if self.tag else "digest" if self.digest else "repository"

    @property
    def ref(self) -> str:
        return self.tag or self.digest or ""

    @property
    def unlocked(self) -> bool:
        return self.write_enabled and self.delete_enabled and self.read_enabled

    def describe(self) -> str:
        """`tag team/app:v1`, `manifest team/app@sha256:…`, `repository team/app`."""
        if self.tag:
            return f"tag {self.repo}:{self.tag}"
        if self.digest:
            return f"manifest {self.repo}@{self.digest}"
        return f"repository {self.repo}"

    def to_json(self) -> dict:
        return {"repository": self.repo, "tag": self.tag, "digest": self.digest,
                "writeEnabled": self.write_enabled, "deleteEnabled": self.delete_enabled,
                "readEnabled": self.read_enabled, "updated": self.updated}

    @classmethod
    def from_json(cls, repo: str, doc: dict) -> "RepositoryLock":
        """From a parent's /connreg/v1/sync/locks answer (validated: bools, strings)."""
        def flag(key: str) -> bool:
            value = doc.get(key, True)
            if not isinstance(value, bool):
                raise ValueError(f"lock field {key} must be a boolean")
            return value

        tag, digest = doc.get("tag"), doc.get("digest")
        if tag is not None and not isinstance(tag, str) or \
                digest is not None and not isinstance(digest, str):
            raise ValueError("lock tag/digest must be strings")
        updated = doc.get("updated", 0.0)
        return cls(repo, tag or None, digest or None, flag("writeEnabled"),
                   flag("deleteEnabled"), flag("readEnabled"),
                   float(updated) if isinstance(updated, (int, float)) else 0.0)


class LockRefused(Exception):
    """A write, delete or read refused by a lock; `operation` is write, delete or read.

    Writes and deletes answer 405 UNSUPPORTED (the resource exists and may be read, but this
    operation is switched off on it); reads answer 403 DENIED (docs/locks.md)."""

    def __init__(self, operation: str, lock: RepositoryLock, what: str):
        attribute = {"write": "writeEnabled", "delete": "deleteEnabled",
                     "read": "readEnabled"}[operation]
        super().__init__(f"{what} refused: {lock.describe()} is locked ({attribute}=false; "
                         f"`connreg repository update` at the root changes it)")
        self.operation = operation
        self.lock = lock
        self.attribute = attribute

    def registry_error(self):
        """The OCI answer: 405 UNSUPPORTED for a write or delete, 403 DENIED for a read."""
        from connreg import errors
        from connreg.errors import RegistryError

        code = errors.DENIED if self.operation == "read" else errors.UNSUPPORTED
        detail = {"lock": self.lock.kind, "repository": self.lock.repo,
                  "attribute": self.attribute}
        if self.lock.ref:
            detail[self.lock.kind] = self.lock.ref
        return RegistryError(code, message=str(self), detail=detail)
