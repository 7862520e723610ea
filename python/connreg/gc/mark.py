"""The mark phase: from one snapshot of the metadata and the files, decide what is garbage.

Pure (no I/O), so every rule is visible here and testable on its own. Per repository:

- Manifests. Roots are kept: tagged ones, ones still in the outbox (a ReadWrite node has not
  pushed them up yet), ones younger than the grace period, and untagged ones younger than the
  untagged retention — except a referrer whose subject is gone, which only the grace period
  keeps (time for the subject to arrive). Whatever a kept manifest needs is kept too: the
  manifests an index lists, a referrer's subject, and a kept subject's referrers. The rest is
  garbage. An untagged retention of 0 keeps every manifest.
- Blob links. A repository's link to a blob is garbage when no manifest of that repository
  that stays references it, and it was last linked before the grace cut.
- Repositories left with no manifest, tag or blob link are forgotten (catalog, tag list).
- Blob files. A file is garbage when, once the above is gone, no repository links it, no
  manifest anywhere references it and none is stored as it (a manifest's own bytes), and it
  was written before the grace cut. The chunk index never keeps a blob: its rows go with it.

The sweep (collector.py) re-checks each decision in the transaction that carries it out.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from connreg.storage.interfaces import GcSnapshot


@dataclass(frozen=True)
class StoredBlob:
    size: int
    mtime: float


@dataclass
class GcPlan:
    # repo → digest → `created` as seen (the sweep deletes only if unchanged)
    manifests: dict[str, dict[str, float]] = field(default_factory=dict)
    # repo → those digests in the groups and order the sweep deletes them (see _deletion_groups)
    manifest_groups: dict[str, list[list[str]]] = field(default_factory=dict)
    reasons: dict[tuple[str, str], str] = field(default_factory=dict)
    links: dict[str, list[str]] = field(default_factory=dict)  # repo → digests to unlink
    blobs: dict[str, int] = field(default_factory=dict)  # digest → size of files to delete
    chunk_rows: dict[str, int] = field(default_factory=dict)  # digest → rows, of those blobs
    orphan_chunk_lists: dict[str, int] = field(default_factory=dict)  # file already gone
    repositories: list[str] = field(default_factory=list)  # left with nothing in them

    @property
    def manifest_count(self) -> int:
        return sum(len(m) for m in self.manifests.values())

    @property
    def link_count(self) -> int:
        return sum(len(d) for d in self.links.values())


def _kept_manifests(manifests: dict[str, tuple[float, str | None]], roots: set[str],
                    children: dict[str, list[str]], referrers: dict[str, list[str]]) -> set[str]:
    """Everything reachable from `roots` over index → child, referrer → subject and
    subject → referrer (the last two keep a signature and what it signs together)."""
    kept: set[str] = set()
    todo = list(roots)
    while todo:
        digest = todo.pop()
        if digest in kept:
            continue
        kept.add(digest)
        subject = manifests[digest][1]
        todo.extend(children.get(digest, ()))
        todo.extend(referrers.get(digest, ()))
        if subject is not None and subject in manifests:
            todo.append(subject)
    return kept


def _deletion_groups(doomed: set[str], manifests: dict[str, tuple[float, str | None]],
                     children: dict[str, list[str]]) -> list[list[str]]:
    """`doomed` in groups the sweep deletes together or in order: a subject with its
    referrers (each keeps the other while present), and indexes before the manifests they
    list (a listed manifest is deletable once its index is gone)."""
    def group_root(digest: str) -> str:
        seen = {digest}
        while (subject := manifests[digest][1]) in doomed and subject not in seen:
            digest = subject
            seen.add(digest)
        return digest

    rank = dict.fromkeys(doomed, 0)  # how many doomed indexes stand above a manifest
    for _ in range(8):  # index nesting is shallow; stop early once settled
        changed = False
        for parent in doomed:
            for child in children.get(parent, ()):
                if child in doomed and rank[child] <= rank[parent]:
                    rank[child] = rank[parent] + 1
                    changed = True
        if not changed:
            break
    groups: dict[str, list[str]] = {}
    for digest in sorted(doomed):
        groups.setdefault(group_root(digest), []).append(digest)
    return sorted(groups.values(), key=lambda g: (max(rank[d] for d in g), g[0]))


def _reason(digest: str, manifests: dict[str, tuple[float, str | None]], retention: float) -> str:
    subject = manifests[digest][1]
    if subject is not None and subject not in manifests:
        return f"referrer of {subject}, which is gone"
    if subject is not None:
        return f"referrer of {subject}, which is collected"
    return f"untagged for more than {retention:g} s and referenced by nothing kept"


def mark(snap: GcSnapshot, stored: dict[str, StoredBlob], now: float, grace: float,
         retention: float) -> GcPlan:
    """What to collect. `stored`: every blob file (digest → size, mtime); `now` and the
    periods in seconds (grace: links and files this young stay; retention: untagged
    manifests this young stay, 0 = always)."""
    cut = now - grace
    plan = GcPlan()

    by_repo: dict[str, dict[str, tuple[float, str | None]]] = defaultdict(dict)
    for repo, digest, created, subject in snap.manifests:
        by_repo[repo][digest] = (created, subject)
    tagged = set(snap.tags)
    outbox = set(snap.outbox)
    refs_by_parent: dict[tuple[str, str], list[str]] = defaultdict(list)
    for repo, parent, child in snap.refs:
        refs_by_parent[(repo, parent)].append(child)

    doomed: set[tuple[str, str]] = set()
    if retention > 0:
        for repo, manifests in by_repo.items():
            children = {d: [c for c in refs_by_parent.get((repo, d), ()) if c in manifests]
                        for d in manifests}
            referrers: dict[str, list[str]] = defaultdict(list)
            roots: set[str] = set()
            for digest, (created, subject) in manifests.items():
                if subject is not None:
                    referrers[subject].append(digest)
                age = now - created
                orphan = subject is not None and subject not in manifests
                if ((repo, digest) in tagged or (repo, digest) in outbox or age < grace
                        or (age < retention and not orphan)):
                    roots.add(digest)
            kept = _kept_manifests(manifests, roots, children, referrers)
            groups = _deletion_groups(manifests.keys() - kept, manifests, children)
            if groups:
                plan.manifest_groups[repo] = groups
                plan.manifests[repo] = {d: manifests[d][0] for group in groups for d in group}
            for digest in plan.manifests.get(repo, ()):
                doomed.add((repo, digest))
                plan.reasons[(repo, digest)] = _reason(digest, manifests, retention)

    referenced: set[tuple[str, str]] = set()  # (repo, digest) a staying manifest references
    for (repo, parent), children_ in refs_by_parent.items():
        if (repo, parent) not in doomed:
            referenced.update((repo, c) for c in children_)

    held: set[str] = {c for _, c in referenced}
    held.update(d for repo, d, _, _ in snap.manifests if (repo, d) not in doomed)
    for repo, digest, _size, linked in snap.links:
        if (repo, digest) in referenced or linked >= cut:
            held.add(digest)
        else:
            plan.links.setdefault(repo, []).append(digest)

    chunk_rows = dict(snap.chunked)
    for digest, blob in stored.items():
        if digest not in held and blob.mtime < cut:
            plan.blobs[digest] = blob.size
            if digest in chunk_rows:
                plan.chunk_rows[digest] = chunk_rows[digest]
    plan.orphan_chunk_lists = {d: n for d, n in chunk_rows.items() if d not in stored}

    occupied = {repo for repo, d, _, _ in snap.manifests if (repo, d) not in doomed}
    occupied.update(repo for repo, _ in snap.tags)
    occupied.update(repo for repo, digest, _, _ in snap.links
                    if digest not in plan.links.get(repo, ()))
    plan.repositories = sorted(set(snap.repositories) - occupied)
    return plan
