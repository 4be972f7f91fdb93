"""Preview and delete (SPEC §4): what goes, what stays and why, the bytes it frees.

`plan_deletion` reads; `execute_deletion` deletes exactly a previewed plan or nothing.

The cascade is a fixed point computed in a few set queries per round: from what is being
deleted, follow index entries down to children and `subject` links to referrers (the
referrers-fallback index tagged `sha256-<hex>` and cosign's `.sig`/`.att`/`.sbom` manifests
carry their subject too, see `hubimages.sync._classify`). A manifest reached that way goes
too, unless an index that stays lists it or it has a tag of its own (a referrer-schema tag
naming its own subject is not "its own"). What is kept waits in case its blocking index
joins later; the loop ends when a round adds nothing.

Reclaimable bytes follow distribution's garbage collector (SPEC §6): it marks, for every
manifest revision left in any repository, the manifest's own blob, its config and layers,
and for an index its children's manifest blobs; a `subject` marks nothing. We never leave
an index pointing at a deleted child, so "referenced by no remaining manifest anywhere"
(ManifestBlob, every role, every repository) is exactly what it frees.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from django.db import connection, transaction
from django.db.models import Exists, F, OuterRef, Sum
from django.db.models.expressions import RawSQL
from django.utils import timezone

from hubimages import rollups
from hubimages.formatting import short_digest
from hubimages.locks import HeldLease, repository_lock
from hubimages.models import (
    Blob,
    Deletion,
    DeletionRecord,
    IndexEntry,
    Manifest,
    ManifestBlob,
    Repository,
    Tag,
    platform_label,
)
from hubimages.sync import sync_repository
from registry.client import RegistryClient
from registry.errors import RegistryError, UnsupportedOperation
from registry.media import referrer_tag_subject

SELECTED = "selected"
MANY = 64  # more ids than this go to the database as one parameter (`as_parameter`)


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


@dataclass(frozen=True)
class KeptItem:
    """A manifest the cascade reached but keeps, and why."""

    digest: str
    kind: str
    reason: str
    group: str


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


@dataclass(frozen=True)
class NotDeleted:
    digest: str
    reason: str
    # The registry answered 405 UNSUPPORTED: it has deletes turned off (or, like Docker
    # Hub, deletes only through its own site).
    deletes_disabled: bool = False


DELETES_DISABLED = "not sent: the registry answered 405 to an earlier DELETE, it does not delete"


@dataclass(frozen=True)
class DeletionOutcome:
    """What `execute_deletion` did. `stale`: the plan changed, nothing was deleted and
    `plan` is the fresh one to show; otherwise `plan` is the plan that was executed."""

    plan: DeletionPlan
    stale: bool
    deleted: tuple[PlannedItem, ...] = ()
    failed: tuple[NotDeleted, ...] = ()
    skipped: tuple[NotDeleted, ...] = ()
    reclaimed_bytes: int = 0
    operation_id: int | None = None

    @property
    def deletes_disabled(self) -> bool:
        return any(item.deletes_disabled for item in self.failed)

    @property
    def succeeded(self) -> bool:
        return not self.stale and not self.failed and not self.skipped


class RecheckFailed(Exception):
    """The repository could not be re-read from the registry: nothing was deleted."""


def can_delete(user) -> bool:
    return user.has_perm("hubimages.delete_manifest")


def normalize_digest(text: str) -> str:
    """`sha256:<hex>` from a digest given with or without its algorithm."""
    text = text.strip().lower()
    return text if ":" in text else f"sha256:{text}"


# -- the plan ------------------------------------------------------------------------------


@dataclass
class _Closure:
    members: dict[int, tuple[str, int, int]]  # id -> (because, seed id, round)
    kept: dict[int, tuple[str, int]]  # id -> (reason, seed id)


@dataclass(frozen=True)
class PlanSet:
    """The plans of several repositories, made together by `plan_deletions`."""

    plans: dict[int, DeletionPlan]  # by repository id
    reclaimable_bytes: int  # what deleting every plan frees, all together


def plan_deletion(*, repository: Repository, digests: Iterable[str]) -> DeletionPlan:
    """What deleting `digests` from `repository` takes with it, keeps, refuses and frees."""
    return plan_deletions({repository: digests}).plans[repository.pk]


def plan_deletions(selections: Mapping[Repository, Iterable[str]]) -> PlanSet:
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
    while True:
        closure = _cascade(seeds)
        blocked = _staying_parents(seeds, closure.members)
        if not blocked:
            break
        for manifest_id, indexes in blocked.items():
            refused[owner[manifest_id]][seeds.pop(manifest_id)] = (
                f"used by index {short_digest(indexes[0])}, which stays — "
                "delete the index instead or remove it from the index first"
            )
    return _assemble(repositories, selected, seeds, closure, refused)


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


def as_parameter(values: Collection) -> Collection | RawSQL:
    """Many ids or digests for an `__in` lookup, as one query parameter.

    Django prepares an IN list value by value, a few microseconds each: for a retention
    run's thousands of manifests that was most of the plan's time. A JSON array (SQLite)
    or an array (PostgreSQL) is one parameter, unpacked by the database."""
    values = list(values)
    if len(values) <= MANY:
        return values
    if connection.vendor == "postgresql":
        kind = "bigint" if isinstance(values[0], int) else "text"
        return RawSQL(f"SELECT unnest(%s::{kind}[])", (values,))
    return RawSQL("SELECT value FROM json_each(%s)", (json.dumps(values),))


def _cascade(seeds: dict[int, str]) -> _Closure:
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
        addable = [pk for pk in pending if pk not in staying and not own_tags.get(pk)]
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
        offer(pk, subject_id, 0, f"referrer of {short_digest(subject_digest)}")
    children = IndexEntry.objects.filter(index_id__in=as_parameter(frontier)).values_list(
        "child_id", "index_id", "index__digest"
    )
    for pk, index_id, index_digest in children:
        offer(pk, index_id, 1, f"only used by index {short_digest(index_digest)}")
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
) -> PlanSet:
    members = closure.members
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
        )
        delete[repo].append((order[repo][group], round_, digest, item))
    keep: dict[int, list] = defaultdict(list)
    for pk, repo, digest, kind in Manifest.objects.filter(
        pk__in=as_parameter(closure.kept)
    ).values_list("pk", "repository_id", "digest", "kind"):
        reason, seed = closure.kept[pk]
        group = seeds[seed]
        keep[repo].append((order[repo][group], digest, KeptItem(digest, kind, reason, group)))
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


def reclaimable_bytes(manifest_ids: Collection[int]) -> int:
    """Total size of the distinct blobs these manifests reference and no other manifest
    of any repository does: what the registry's garbage collector frees once they are gone.
    One query."""
    if not manifest_ids:
        return 0
    ids = as_parameter(manifest_ids)
    used_elsewhere = ManifestBlob.objects.filter(blob_id=OuterRef("pk")).exclude(
        manifest_id__in=ids
    )
    total = (
        Blob.objects.filter(
            pk__in=ManifestBlob.objects.filter(manifest_id__in=ids).values("blob_id")
        )
        .filter(~Exists(used_elsewhere))
        .aggregate(total=Sum("size"))["total"]
    )
    return total or 0


def _fingerprint(
    delete: tuple[PlannedItem, ...],
    keep: tuple[KeptItem, ...],
    refused: tuple[RefusedItem, ...],
    reclaimable: int,
) -> str:
    """Stable for the same state: the same manifests, tags, reasons and bytes."""
    document = {
        "delete": sorted([i.digest, i.kind, sorted(i.tags), i.size] for i in delete),
        "keep": sorted([i.digest, i.reason] for i in keep),
        "refused": sorted([i.digest, i.reason] for i in refused),
        "bytes": reclaimable,
    }
    encoded = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
    return hashlib.sha256(encoded).hexdigest()


# -- execution -----------------------------------------------------------------------------


def execute_deletion(
    *,
    repository: Repository,
    digests: Iterable[str],
    fingerprint: str,
    user,
    client: RegistryClient,
    username: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> DeletionOutcome:
    """Delete exactly the plan previewed as `fingerprint`, or nothing if it changed.

    Under the repository's lease: re-read the repository from the registry, recompute the
    plan, then delete parents before children (indexes before their entries, subjects
    before their referrers) so a failure never leaves an index pointing at nothing. Each
    manifest's record is written PENDING before its DELETE is sent and DONE or FAILED
    after, so a worker killed mid-way leaves an exact history (`resolve_interrupted`).
    `username` overrides the recorded name (the command line records `cli:<os user>`).
    Raises `locks.RepositoryBusy` or `RecheckFailed`, both before deleting anything, and
    `locks.LeaseLost` if the lease is taken over mid-way (what went is recorded).
    """
    digests = list(digests)
    name = username or (user.get_username() if user is not None else "")
    report = progress or (lambda line: None)
    with repository_lock(repository, owner=f"delete:{name}") as lease:
        report(f"Re-reading {repository.name} from the registry")
        result = sync_repository(client, repository.name)
        if result.error:
            raise RecheckFailed(
                f"could not re-check {repository.name} against the registry: {result.error}"
            )
        plan = plan_deletion(repository=repository, digests=digests)
        operation = Deletion.objects.create(
            user=user,
            username=name,
            repository=repository.name,
            selected=list(plan.selected),
            fingerprint=fingerprint,
        )
        if plan.fingerprint != fingerprint:
            _close(operation, Deletion.State.STALE, CHANGED_MESSAGE)
            return DeletionOutcome(plan=plan, stale=True, operation_id=operation.pk)
        deleted: list[PlannedItem] = []
        failed: list[NotDeleted] = []
        skipped: list[NotDeleted] = []
        reclaimed = 0
        try:
            _delete_in_order(plan, client, lease, operation, deleted, failed, skipped, report)
        finally:
            reclaimed = _record(repository, operation, deleted)
            state = Deletion.State.DONE if not (failed or skipped) else Deletion.State.PARTIAL
            if len(deleted) + len(failed) + len(skipped) < len(plan.delete):
                state = Deletion.State.FAILED  # interrupted: the lease was lost
            _close(operation, state, "", reclaimed)
    return DeletionOutcome(
        plan=plan,
        stale=False,
        deleted=tuple(deleted),
        failed=tuple(failed),
        skipped=tuple(skipped),
        reclaimed_bytes=reclaimed,
        operation_id=operation.pk,
    )


CHANGED_MESSAGE = "the registry changed since the preview: nothing was deleted"


def _close(operation: Deletion, state: str, message: str, reclaimed: int = 0) -> None:
    Deletion.objects.filter(pk=operation.pk).update(
        state=state, message=message, reclaimed_bytes=reclaimed, finished_at=timezone.now()
    )


def _delete_in_order(
    plan: DeletionPlan,
    client: RegistryClient,
    lease: HeldLease,
    operation: Deletion,
    deleted: list[PlannedItem],
    failed: list[NotDeleted],
    skipped: list[NotDeleted],
    report: Callable[[str], None],
) -> None:
    parents = _parents_within(plan)
    not_done: dict[int, str] = {}  # manifest id -> digest, failed or skipped
    disabled = False
    ordered = _topological(plan.delete, parents)
    for number, item in enumerate(ordered, start=1):
        blocking = [(p, how) for p, how in parents.get(item.manifest_id, []) if p in not_done]
        if blocking:
            parent, how = blocking[0]
            what = "its subject" if how == "subject" else "index"
            reason = f"kept because {what} {short_digest(not_done[parent])} could not be deleted"
            skipped.append(NotDeleted(item.digest, reason))
            not_done[item.manifest_id] = item.digest
            continue
        if disabled:
            skipped.append(NotDeleted(item.digest, DELETES_DISABLED))
            not_done[item.manifest_id] = item.digest
            continue
        lease.check()  # never send a DELETE without holding the repository
        report(f"Deleting {number} of {len(ordered)}: {short_digest(item.digest)}")
        record = _pending_record(operation, item)
        try:
            _delete_manifest(client, plan.repository, item)
        except RegistryError as error:
            # 405: the registry does not delete at all; the other DELETEs would fail alike.
            disabled = isinstance(error, UnsupportedOperation) and error.status == 405
            failed.append(NotDeleted(item.digest, str(error), deletes_disabled=disabled))
            not_done[item.manifest_id] = item.digest
            _settle(record, DeletionRecord.State.FAILED, str(error))
            continue
        _settle(record, DeletionRecord.State.DONE)
        deleted.append(item)


def _delete_manifest(client: RegistryClient, repository: str, item: PlannedItem) -> None:
    """DELETE by digest (a 404 means gone already). A registry that refuses to delete a
    manifest its tags still name (4xx but 404/405) gets its tags deleted first, the
    order the OCI distribution spec's own conformance tests follow, then one more try."""
    try:
        client.delete_manifest(repository, item.digest)
    except RegistryError as error:
        if (
            not item.tags
            or error.status in (401, 403, 404, 405)
            or not 400 <= (error.status or 0) < 500
        ):
            raise
        try:
            for tag in item.tags:
                client.delete_tag(repository, tag)
        except UnsupportedOperation:
            raise error from None
        client.delete_manifest(repository, item.digest)


def _pending_record(operation: Deletion, item: PlannedItem) -> DeletionRecord:
    return DeletionRecord.objects.create(
        operation=operation,
        user_id=operation.user_id,
        username=operation.username,
        repository=operation.repository,
        digest=item.digest,
        kind=item.kind,
        tags=list(item.tags),
        size=item.size,
        state=DeletionRecord.State.PENDING,
    )


def _settle(record: DeletionRecord, state: str, message: str = "") -> None:
    DeletionRecord.objects.filter(pk=record.pk).update(state=state, message=message[:512])


def resolve_interrupted(client: RegistryClient, operation: Deletion) -> int:
    """After a worker died mid-deletion: a PENDING record's DELETE may or may not have
    reached the registry, so ask it (a HEAD by digest) and record what is true. Returns how
    many were resolved."""
    resolved = 0
    for record in operation.records.filter(state=DeletionRecord.State.PENDING):
        present = client.head_manifest(operation.repository, record.digest) is not None
        _settle(
            record,
            DeletionRecord.State.FAILED if present else DeletionRecord.State.DONE,
            "interrupted before the registry deleted it" if present else "",
        )
        resolved += 1
    done = operation.records.filter(state=DeletionRecord.State.DONE).count()
    _close(
        operation,
        Deletion.State.FAILED,
        f"interrupted: the worker stopped; {done} manifest{'s' if done != 1 else ''} were "
        "deleted before it did (see the records)",
    )
    return resolved


def _parents_within(plan: DeletionPlan) -> dict[int, list[tuple[int, str]]]:
    """For each planned manifest, its planned parents: the indexes listing it, its subject."""
    ids = [item.manifest_id for item in plan.delete]
    parents: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for index_id, child_id in IndexEntry.objects.filter(
        index_id__in=ids, child_id__in=ids
    ).values_list("index_id", "child_id"):
        parents[child_id].append((index_id, "index"))
    for pk, subject_id in Manifest.objects.filter(pk__in=ids, subject_id__in=ids).values_list(
        "pk", "subject_id"
    ):
        parents[pk].append((subject_id, "subject"))
    return parents


def _topological(
    items: tuple[PlannedItem, ...], parents: dict[int, list[tuple[int, str]]]
) -> list[PlannedItem]:
    """Parents before children, otherwise plan order (Kahn's algorithm); anything caught
    in a cycle, which content addressing rules out, comes last in plan order."""
    position = {item.manifest_id: i for i, item in enumerate(items)}
    waiting = {pk: len({p for p, _ in parents.get(pk, [])}) for pk in position}
    children: dict[int, list[int]] = defaultdict(list)
    for pk in position:
        for parent in {p for p, _ in parents.get(pk, [])}:
            children[parent].append(pk)
    ready = [position[pk] for pk, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    ordered: list[PlannedItem] = []
    while ready:
        item = items[heapq.heappop(ready)]
        ordered.append(item)
        for child in children[item.manifest_id]:
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, position[child])
    placed = {item.manifest_id for item in ordered}
    return ordered + [item for item in items if item.manifest_id not in placed]


def _record(repository: Repository, operation: Deletion, deleted: list[PlannedItem]) -> int:
    """Make the database say what the registry now holds, and credit each freed blob to
    the first deleted manifest (in deletion order) that held it, so the records'
    `reclaimed_bytes` add up to what the deletion freed."""
    if not deleted:
        return 0
    ids = [item.manifest_id for item in deleted]
    shares, probe = _reclaimed_shares(ids)
    blob_ids = list(
        ManifestBlob.objects.filter(manifest_id__in=ids).values_list("blob_id", flat=True)
    )
    digests = {item.manifest_id: item.digest for item in deleted}
    with transaction.atomic():
        for manifest_id, share in shares.items():
            operation.records.filter(digest=digests[manifest_id]).update(reclaimed_bytes=share)
        Deletion.objects.filter(pk=operation.pk).update(probe_digest=probe)
        Manifest.objects.filter(pk__in=ids).delete()
        Blob.objects.filter(pk__in=set(blob_ids), manifest_links__isnull=True).delete()
        rollups.refresh(repository)
        Repository.objects.filter(pk=repository.pk).update(revision=F("revision") + 1)
    return sum(shares.values())


def _reclaimed_shares(ids: list[int]) -> tuple[dict[int, int], str]:
    """Each freed blob's bytes credited to the first deleted manifest holding it; and the
    largest freed layer or config, the operation's probe (`Deletion.probe_digest`: the
    registry serves it through the repository until its garbage collector runs, which
    a manifest's own blob, reachable only as a manifest, does not tell)."""
    position = {pk: i for i, pk in enumerate(ids)}
    used_elsewhere = ManifestBlob.objects.filter(blob_id=OuterRef("blob_id")).exclude(
        manifest_id__in=ids
    )
    owner: dict[int, tuple[int, int]] = {}  # blob id -> (manifest id, size)
    probe: tuple[int, str] = (-1, "")
    for blob_id, manifest_id, size, role, digest in (
        ManifestBlob.objects.filter(manifest_id__in=ids)
        .filter(~Exists(used_elsewhere))
        .values_list("blob_id", "manifest_id", "blob__size", "role", "blob__digest")
    ):
        if blob_id not in owner or position[manifest_id] < position[owner[blob_id][0]]:
            owner[blob_id] = (manifest_id, size)
        if role != ManifestBlob.Role.MANIFEST and (-size, digest) < (-probe[0], probe[1]):
            probe = (size, digest)
    shares: dict[int, int] = defaultdict(int)
    for manifest_id, size in owner.values():
        shares[manifest_id] += size
    return dict(shares), probe[1]
