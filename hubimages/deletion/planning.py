"""Preview and delete (SPEC §4): what goes, what stays and why, the bytes it frees.

`plan_deletion` reads; `execute_deletion` deletes exactly a previewed plan or nothing.

The cascade is a fixed point computed in a few set queries per round: from what is being
deleted, follow index entries down to children and `subject` links to referrers (the
referrers-fallback index tagged `sha256-<hex>` and cosign's `.sig`/`.att`/`.sbom` manifests
carry their subject too, see `hubimages.sync.store._classify`). A manifest reached that way goes
too, unless an index that stays lists it or it has a tag of its own (a referrer-schema tag
naming its own subject is not "its own"). What is kept waits in case its blocking index
joins later; the loop ends when a round adds nothing.

Nothing a live in-use report names is deleted (SPEC §13): a selected item that is in use
(its digest, its index's or one of its children's in a live report, `inuse.matching`) is
kept with the reason "in use by SOURCE: PLACE", and so is any manifest the cascade reaches
that is; an index whose image is in use stays, and keeps its images with it. Only
`allow_in_use` (a person's explicit second tick) deletes them, and the plan then marks
each such item, so its fingerprint changes if what is in use does.

Reclaimable bytes follow distribution's garbage collector (SPEC §6): it marks, for every
manifest revision left in any repository, the manifest's own blob, its config and layers,
and for an index its children's manifest blobs; a `subject` marks nothing. We never leave
an index pointing at a deleted child, so "referenced by no remaining manifest anywhere"
(ManifestBlob, every role, every repository) is exactly what it frees.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Exists, OuterRef

from hubimages.inuse import matching
from hubimages.inuse.matching import InUse
from hubimages.lib.formatting import short_digest
from hubimages.lib.queries import as_parameter
from hubimages.models import (
    IndexEntry,
    Manifest,
    ManifestBlob,
    Repository,
    Tag,
    platform_label,
)
from registry.media import referrer_tag_subject

SELECTED = "selected"
REFERRER_OF = "referrer of "  # then the subject's short digest
ONLY_IN_INDEX = "only used by index "  # then the index's short digest


@dataclass(frozen=True)
class PlannedItem:
    """One manifest the plan deletes; `group` is the selected digest it comes with."""

    manifest_id: int
    digest: str
    kind: str
    platform: str
    tags: tuple[str, ...]
    size: int
    because: str
    group: str
    last_pulled_at: datetime | None = None
    pushed_at: datetime | None = None
    artifact_type: str = ""
    # What live in-use reports say of it: only with `allow_in_use`, else it would be kept.
    in_use: InUse | None = None


@dataclass(frozen=True)
class KeptItem:
    """A manifest the cascade reached but keeps, or a selected one in use, and why: `why`
    (a tag, an index that stays), `in_use` (what the live reports say)."""

    digest: str
    kind: str
    why: str
    group: str
    in_use: InUse | None = None

    @property
    def reason(self) -> str:
        """In words: "in use by prod: prod/shop/pod/api-7d9f; has its own tag v1"."""
        return "; ".join(filter(None, (self.in_use.reason() if self.in_use else "", self.why)))

    @property
    def steady_reason(self) -> str:
        """The reason without the places, which change with every pod restart: what the
        fingerprint takes, so a new report naming other places changes no plan."""
        return "; ".join(filter(None, ("in use" if self.in_use else "", self.why)))


@dataclass(frozen=True)
class RefusedItem:
    """A selected digest that cannot be deleted, and why."""

    digest: str
    reason: str


@dataclass(frozen=True)
class DeletionPlan:
    repository: str
    selected: tuple[str, ...]
    delete: tuple[PlannedItem, ...]
    keep: tuple[KeptItem, ...]
    refused: tuple[RefusedItem, ...]
    tags_removed: tuple[str, ...]
    reclaimable_bytes: int
    fingerprint: str

    @property
    def manifest_count(self) -> int:
        return len(self.delete)

    @property
    def tag_count(self) -> int:
        return len(self.tags_removed)

    def in_use_deleted(self) -> list[dict]:
        """What it deletes although a live report names it (only with `allow_in_use`):
        `[{"digest", "in_use": [{"source", "where"}]}]`, as the history and the audit log
        record the override."""
        return [
            {"digest": item.digest, "in_use": item.in_use.as_list()}
            for item in self.delete
            if item.in_use
        ]

    def same_items_as(self, other: DeletionPlan) -> bool:
        """Deletes, keeps and refuses the same manifests, tags and reasons as `other`,
        whatever the bytes: a retention run's earlier repositories may free some of this
        one's shared blobs before it runs, which changes its bytes and nothing else."""
        return _items_document(self.delete, self.keep, self.refused) == _items_document(
            other.delete, other.keep, other.refused
        )

    def groups(self) -> list[tuple[str, list[PlannedItem]]]:
        """The deleted items under the selected digest each comes with, in selection order."""
        grouped: dict[str, list[PlannedItem]] = {}
        for item in self.delete:
            grouped.setdefault(item.group, []).append(item)
        return list(grouped.items())

    def as_dict(self) -> dict:
        """The stable JSON shape of `delete_images --dry-run --json`."""
        return {
            "delete": [
                {
                    "digest": item.digest,
                    "kind": item.kind,
                    "tags": list(item.tags),
                    "size": item.size,
                    "because": item.because,
                }
                for item in self.delete
            ],
            "keep": [{"digest": item.digest, "reason": item.reason} for item in self.keep],
            "tags_removed": list(self.tags_removed),
            "reclaimable_bytes": self.reclaimable_bytes,
        }


def normalize_digest(text: str) -> str:
    """`sha256:<hex>` from a digest given with or without its algorithm."""
    text = text.strip().lower()
    return text if ":" in text else f"sha256:{text}"


# -- the plan ------------------------------------------------------------------------------


@dataclass
class _Closure:
    members: dict[int, tuple[str, int, int]]  # id -> (because, seed id, round)
    kept: dict[int, tuple[str, int]]  # id -> (reason, seed id)


class _InUse:
    """What the live in-use reports say of the manifests a plan reaches, asked once each:
    the live sources read once per plan, nothing more when none is live."""

    def __init__(self, allow: bool) -> None:
        self.allow = allow
        self.live = matching.live_sources()
        self.found: dict[int, InUse] = {}
        self.asked: set[int] = set()

    def of(self, ids: Iterable[int]) -> dict[int, InUse]:
        ids = list(ids)
        new = [pk for pk in ids if pk not in self.asked]
        if new and self.live:
            self.found.update(matching.of_manifests(new, live=self.live))
        self.asked.update(new)
        return {pk: self.found[pk] for pk in ids if pk in self.found}

    def kept(self, ids: Iterable[int]) -> set[int]:
        """The ids that stay because they are in use (none when allowed to delete them)."""
        return set() if self.allow else set(self.of(ids))


@dataclass(frozen=True)
class PlanSet:
    """The plans of several repositories, made together by `plan_deletions`."""

    plans: dict[int, DeletionPlan]  # by repository id
    reclaimable_bytes: int  # what deleting every plan frees, all together


def plan_deletion(
    *, repository: Repository, digests: Iterable[str], allow_in_use: bool = False
) -> DeletionPlan:
    """What deleting `digests` from `repository` takes with it, keeps, refuses and frees;
    in-use items stay unless `allow_in_use`."""
    return plan_deletions({repository: digests}, allow_in_use=allow_in_use).plans[repository.pk]


def plan_deletions(
    selections: Mapping[Repository, Iterable[str]], *, allow_in_use: bool = False
) -> PlanSet:
    """`plan_deletion` for each repository, in a fixed number of queries however many
    repositories and digests there are (a retention run plans every repository it covers).

    Each plan is its repository's own, exactly as if planned alone. A blob that only the
    deleted manifests of two repositories use is therefore in neither plan's bytes, and in
    the set's `reclaimable_bytes`, which is the whole deletion's."""
    repositories = {repository.pk: repository for repository in selections}
    selected = {
        repository.pk: tuple(dict.fromkeys(normalize_digest(d) for d in digests))
        for repository, digests in selections.items()
    }
    found = _found(selected)
    refused: dict[int, dict[str, str]] = {
        pk: {d: f"not in repository {repositories[pk].name}" for d in ds if (pk, d) not in found}
        for pk, ds in selected.items()
    }
    seeds = {found[pk, d]: d for pk, ds in selected.items() for d in ds if (pk, d) in found}
    owner = {found[key]: key[0] for key in found}
    group_of = dict(seeds)  # every found selection's digest, the in-use ones included
    in_use = _InUse(allow_in_use)
    running = {pk: seeds.pop(pk) for pk in in_use.kept(seeds)}
    while True:
        closure = _cascade(seeds, in_use)
        blocked = _staying_parents(seeds, closure.members)
        if not blocked:
            break
        for manifest_id, indexes in blocked.items():
            refused[owner[manifest_id]][seeds.pop(manifest_id)] = (
                f"used by index {short_digest(indexes[0])}, which stays — "
                "delete the index instead or remove it from the index first"
            )
    for pk in running:
        closure.kept[pk] = ("", pk)
    return _assemble(repositories, selected, group_of, closure, refused, in_use)


def _found(selected: dict[int, tuple[str, ...]]) -> dict[tuple[int, str], int]:
    """(repository id, digest) -> manifest id, for the selected digests that exist."""
    wanted = {(pk, digest) for pk, digests in selected.items() for digest in digests}
    rows = Manifest.objects.filter(digest__in=as_parameter({digest for _, digest in wanted}))
    if len(selected) == 1:
        rows = rows.filter(repository_id__in=list(selected))
    # With several repositories, by digest alone: SQLite would otherwise probe every
    # repository × digest pair of its (repository, digest) index.
    return {
        (repo, digest): pk
        for repo, digest, pk in rows.values_list("repository_id", "digest", "pk")
        if (repo, digest) in wanted
    }


def _cascade(seeds: dict[int, str], in_use: _InUse) -> _Closure:
    members: dict[int, tuple[str, int, int]] = {pk: (SELECTED, pk, 0) for pk in seeds}
    rank = {pk: position for position, pk in enumerate(seeds)}
    pending: dict[int, tuple[str, int]] = {}
    own_tags: dict[int, list[str]] = {}
    staying: dict[int, list[str]] = {}
    frontier: Collection[int] = list(seeds)
    round_ = 0
    while frontier:
        round_ += 1
        reached = _reached_from(frontier, members, rank)
        for pk, how in reached.items():
            pending.setdefault(pk, how)
        own_tags.update(_own_tags([pk for pk in reached if pk not in own_tags]))
        staying = _staying_parents(pending, members)
        running = in_use.kept(pending)
        addable = [
            pk for pk in pending if pk not in staying and not own_tags.get(pk) and pk not in running
        ]
        for pk in addable:
            because, seed = pending.pop(pk)
            members[pk] = (because, seed, round_)
        frontier = addable
    kept = {
        pk: (_kept_reason(own_tags.get(pk, []), staying.get(pk, [])), seed)
        for pk, (_, seed) in pending.items()
    }
    return _Closure(members=members, kept=kept)


def _reached_from(
    frontier: Collection[int], members: dict[int, tuple[str, int, int]], rank: dict[int, int]
) -> dict[int, tuple[str, int]]:
    """Referrers and index children of `frontier` not yet deleted: id -> (because, seed).

    Reached several ways, an item goes with the earliest selection, as a referrer first."""
    best: dict[int, tuple[tuple, tuple[str, int]]] = {}

    def offer(pk: int, via_id: int, priority: int, because: str) -> None:
        seed = members[via_id][1]
        key = (rank[seed], priority, because)
        if pk not in members and (pk not in best or key < best[pk][0]):
            best[pk] = (key, (because, seed))

    referrers = Manifest.objects.filter(subject_id__in=as_parameter(frontier)).values_list(
        "pk", "subject_id", "subject__digest"
    )
    for pk, subject_id, subject_digest in referrers:
        offer(pk, subject_id, 0, REFERRER_OF + short_digest(subject_digest))
    children = IndexEntry.objects.filter(index_id__in=as_parameter(frontier)).values_list(
        "child_id", "index_id", "index__digest"
    )
    for pk, index_id, index_digest in children:
        offer(pk, index_id, 1, ONLY_IN_INDEX + short_digest(index_digest))
    return {pk: how for pk, (_, how) in best.items()}


def _own_tags(manifest_ids: list[int]) -> dict[int, list[str]]:
    """Tags that keep a manifest: all but the referrer-schema tags naming its subject."""
    tags: dict[int, list[str]] = {}
    if not manifest_ids:
        return tags
    rows = (
        Tag.objects.filter(manifest_id__in=as_parameter(manifest_ids))
        .values_list("manifest_id", "name", "manifest__subject_digest")
        .order_by("name")
    )
    for manifest_id, name, subject_digest in rows:
        subject = referrer_tag_subject(name)
        if subject is None or subject != subject_digest:
            tags.setdefault(manifest_id, []).append(name)
    return tags


def _staying_parents(manifest_ids: Collection[int], leaving: Collection[int]) -> dict[int, list]:
    """Indexes outside `leaving` that list one of `manifest_ids`: id -> their digests."""
    parents: dict[int, list[str]] = {}
    if not manifest_ids:
        return parents
    rows = (
        IndexEntry.objects.filter(child_id__in=as_parameter(manifest_ids))
        .exclude(index_id__in=as_parameter(leaving))
        .values_list("child_id", "index__digest")
        .order_by("index__digest")
    )
    for child_id, index_digest in rows:
        if index_digest not in parents.setdefault(child_id, []):
            parents[child_id].append(index_digest)
    return parents


def _kept_reason(tags: list[str], indexes: list[str]) -> str:
    reasons = []
    if tags:
        reasons.append(f"has its own tag{'s' if len(tags) > 1 else ''} {', '.join(tags)}")
    if len(indexes) == 1:
        reasons.append(f"used by index {short_digest(indexes[0])}, which stays")
    elif indexes:
        reasons.append(
            f"used by index {short_digest(indexes[0])} and {len(indexes) - 1} more, which stay"
        )
    return "; ".join(reasons)


def _assemble(
    repositories: dict[int, Repository],
    selected: dict[int, tuple[str, ...]],
    seeds: dict[int, str],
    closure: _Closure,
    refused: dict[int, dict[str, str]],
    in_use: _InUse,
) -> PlanSet:
    members = closure.members
    uses = in_use.of([*members, *closure.kept])
    tags: dict[int, list[str]] = defaultdict(list)
    for manifest_id, name in (
        Tag.objects.filter(manifest_id__in=as_parameter(members))
        .values_list("manifest_id", "name")
        .order_by("name")
    ):
        tags[manifest_id].append(name)
    order = {pk: {d: i for i, d in enumerate(digests)} for pk, digests in selected.items()}
    delete: dict[int, list] = defaultdict(list)
    repository_of: dict[int, int] = {}
    for (
        pk,
        repo,
        digest,
        kind,
        os,
        architecture,
        variant,
        size,
        pulled,
        pushed,
        artifact_type,
    ) in Manifest.objects.filter(pk__in=as_parameter(members)).values_list(
        "pk",
        "repository_id",
        "digest",
        "kind",
        "os",
        "architecture",
        "variant",
        "total_size",
        "last_pulled_at",
        "pushed_at",
        "artifact_type",
    ):
        because, seed, round_ = members[pk]
        group = seeds[seed]
        repository_of[pk] = repo
        platform = platform_label(os, architecture, variant)
        item = PlannedItem(
            pk,
            digest,
            kind,
            platform,
            tuple(tags[pk]),
            size,
            because,
            group,
            pulled,
            pushed,
            artifact_type,
            uses.get(pk),
        )
        delete[repo].append((order[repo][group], round_, digest, item))
    keep: dict[int, list] = defaultdict(list)
    for pk, repo, digest, kind in Manifest.objects.filter(
        pk__in=as_parameter(closure.kept)
    ).values_list("pk", "repository_id", "digest", "kind"):
        reason, seed = closure.kept[pk]
        group = seeds[seed]
        kept = KeptItem(digest, kind, reason, group, uses.get(pk))
        keep[repo].append((order[repo][group], digest, kept))
    by_repository, total = _reclaimable_by_repository(repository_of)
    plans = {
        pk: _plan(
            repository,
            selected[pk],
            delete[pk],
            keep[pk],
            refused[pk],
            by_repository.get(pk, 0),
        )
        for pk, repository in repositories.items()
    }
    return PlanSet(plans=plans, reclaimable_bytes=total)


def _plan(
    repository: Repository,
    selected: tuple[str, ...],
    delete: list,
    keep: list,
    refused: dict[str, str],
    reclaimable: int,
) -> DeletionPlan:
    items = tuple(entry[-1] for entry in sorted(delete, key=lambda e: e[:3]))
    kept = tuple(entry[-1] for entry in sorted(keep, key=lambda e: e[:2]))
    refusals = tuple(RefusedItem(d, refused[d]) for d in selected if d in refused)
    tags_removed = tuple(sorted(name for item in items for name in item.tags))
    return DeletionPlan(
        repository=repository.name,
        selected=selected,
        delete=items,
        keep=kept,
        refused=refusals,
        tags_removed=tags_removed,
        reclaimable_bytes=reclaimable,
        fingerprint=_fingerprint(items, kept, refusals, reclaimable),
    )


def _reclaimable_by_repository(repository_of: dict[int, int]) -> tuple[dict[int, int], int]:
    """What deleting these manifests (id -> repository id) frees, per repository and all
    together, in one query: the blobs they reference that no other manifest of any
    repository does (the predicate of `reclaimable_bytes`, over their union). A
    repository's figure is the blobs only its own manifests among them use: what its plan
    alone would free."""
    if not repository_of:
        return {}, 0
    ids = as_parameter(repository_of)
    used_elsewhere = ManifestBlob.objects.filter(blob_id=OuterRef("blob_id")).exclude(
        manifest_id__in=ids
    )
    sizes: dict[int, int] = {}
    holder: dict[int, int | None] = {}  # blob id -> its one repository, None if several
    for blob_id, manifest_id, size in (
        ManifestBlob.objects.filter(manifest_id__in=ids)
        .filter(~Exists(used_elsewhere))
        .order_by()
        .values_list("blob_id", "manifest_id", "blob__size")
    ):
        repository = repository_of[manifest_id]
        if blob_id not in sizes:
            sizes[blob_id], holder[blob_id] = size, repository
        elif holder[blob_id] != repository:
            holder[blob_id] = None
    by_repository: dict[int, int] = defaultdict(int)
    for blob_id, repository in holder.items():
        if repository is not None:
            by_repository[repository] += sizes[blob_id]
    return dict(by_repository), sum(sizes.values())


def _items_document(
    delete: tuple[PlannedItem, ...], keep: tuple[KeptItem, ...], refused: tuple[RefusedItem, ...]
) -> dict:
    """What a plan deletes (kinds, tags, sizes), keeps and refuses, and why: the part of its
    fingerprint that is not bytes."""
    return {
        "delete": sorted(
            [i.digest, i.kind, sorted(i.tags), i.size] + (["in use"] if i.in_use else [])
            for i in delete
        ),
        "keep": sorted([i.digest, i.steady_reason] for i in keep),
        "refused": sorted([i.digest, i.reason] for i in refused),
    }


def _fingerprint(
    delete: tuple[PlannedItem, ...],
    keep: tuple[KeptItem, ...],
    refused: tuple[RefusedItem, ...],
    reclaimable: int,
) -> str:
    """Stable for the same state: the same manifests, tags, reasons and bytes."""
    document = {**_items_document(delete, keep, refused), "bytes": reclaimable}
    encoded = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
    return hashlib.sha256(encoded).hexdigest()
