"""The action model of spec §4 and its mapping to registry (Docker token) scopes.

Actions are strings:

    repositories/<repo>/content/read|write|delete
    repositories/<repo>/metadata/read|write
    gateway/<connected-registry>/config/read|write
    gateway/<connected-registry>/message/read|write
    metrics/read          (this node's /metrics and dashboard, on every node it reaches)

`<repo>` is an exact repository name or a pattern `prefix/*` that matches every repository
under `prefix/` (at any depth). Registry scopes map onto them:

    pull   = content/read  + metadata/read
    push   = content/write + metadata/write
    delete = content/delete
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from connreg.references import MAX_NAME_LENGTH, NAME_RE

REPO_VERBS = ("content/read", "content/write", "content/delete", "metadata/read",
              "metadata/write")
GATEWAY_VERBS = ("config/read", "config/write", "message/read", "message/write")
READ_VERBS = ("content/read", "metadata/read")
WRITE_VERBS = ("content/write", "content/delete", "metadata/write")

DOCKER_ACTIONS = {
    "pull": ("content/read", "metadata/read"),
    "push": ("content/write", "metadata/write"),
    "delete": ("content/delete",),
}

_REPO_RE = re.compile(r"repositories/(?P<target>.+)/(?P<verb>content/(?:read|write|delete)"
                      r"|metadata/(?:read|write))")
_GATEWAY_RE = re.compile(r"gateway/(?P<target>[^/]+)/(?P<verb>(?:config|message)/(?:read|write))")
CR_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{4,39}")
# Node-wide actions: not about a repository or a connected registry.
METRICS_READ = "metrics/read"
NODE_ACTIONS = (METRICS_READ,)


@dataclass(frozen=True)
class Action:
    kind: str      # "repositories" | "gateway" | "node"
    target: str    # repository name or pattern, or connected-registry name ("" for node)
    verb: str      # e.g. "content/read", "metrics/read"

    def __str__(self) -> str:
        if self.kind == "node":
            return self.verb
        return f"{self.kind}/{self.target}/{self.verb}"


def is_repo_pattern(target: str) -> bool:
    return target.endswith("/*")


def valid_repo_target(target: str) -> bool:
    """An exact repository name, or `prefix/*` with a valid repository name as prefix."""
    name = target[:-2] if is_repo_pattern(target) else target
    return len(name) <= MAX_NAME_LENGTH and NAME_RE.fullmatch(name) is not None


def parse_action(text: str) -> Action:
    """Parse and validate one action string; ValueError says what is wrong."""
    if text in NODE_ACTIONS:
        return Action("node", "", text)
    m = _REPO_RE.fullmatch(text)
    if m:
        if not valid_repo_target(m["target"]):
            raise ValueError(f"invalid repository or pattern {m['target']!r} in action {text!r}"
                             " (exact name or prefix/*)")
        return Action("repositories", m["target"], m["verb"])
    m = _GATEWAY_RE.fullmatch(text)
    if m:
        if not CR_NAME_RE.fullmatch(m["target"]):
            raise ValueError(f"invalid connected-registry name in action {text!r}")
        return Action("gateway", m["target"], m["verb"])
    raise ValueError(f"invalid action {text!r}: expected repositories/<repo>/content/"
                     "read|write|delete, repositories/<repo>/metadata/read|write or "
                     "gateway/<name>/config|message/read|write, or metrics/read")


def repo_matches(target: str, repo: str) -> bool:
    if is_repo_pattern(target):
        return repo.startswith(target[:-1])
    return target == repo


def repo_actions(repo: str, verbs: Iterable[str]) -> list[str]:
    return [f"repositories/{repo}/{v}" for v in verbs]


def gateway_actions(cr: str) -> list[str]:
    return [f"gateway/{cr}/{v}" for v in GATEWAY_VERBS]


class Permissions:
    """A set of actions, queried by repository or connected registry."""

    def __init__(self, actions: Iterable[str] = (), everything: bool = False,
                 read_everything: bool = False):
        self.everything = everything
        self.read_everything = read_everything
        self._repo: list[Action] = []
        self._gateway: set[tuple[str, str]] = set()
        self._node: set[str] = set()
        for text in actions:
            try:
                action = parse_action(text)
            except ValueError:
                continue  # stored data is validated on write; ignore anything unexpected
            if action.kind == "repositories":
                self._repo.append(action)
            elif action.kind == "node":
                self._node.add(action.verb)
            else:
                self._gateway.add((action.target.lower(), action.verb))

    def allows(self, repo: str, verb: str) -> bool:
        if self.everything or (self.read_everything and verb in READ_VERBS):
            return True
        return any(a.verb == verb and repo_matches(a.target, repo) for a in self._repo)

    def docker_actions(self, repo: str) -> set[str]:
        """The registry scope actions (pull/push/delete) these permissions grant on `repo`."""
        return {name for name, verbs in DOCKER_ACTIONS.items()
                if all(self.allows(repo, v) for v in verbs)}

    def can_pull(self, repo: str) -> bool:
        return "pull" in self.docker_actions(repo)

    def allows_gateway(self, cr: str, verb: str) -> bool:
        return self.everything or (cr.lower(), verb) in self._gateway

    def allows_node(self, action: str) -> bool:
        """A node-wide action such as `metrics/read` (the admin has every one)."""
        return self.everything or action in self._node
