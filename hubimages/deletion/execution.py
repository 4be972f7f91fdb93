"""Executing a previewed plan (SPEC §4): exactly that plan or nothing, parents before
children, each manifest recorded PENDING before its DELETE and settled after."""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Exists, F, OuterRef
from django.utils import timezone

from hubimages.deletion.planning import DeletionPlan, PlannedItem, plan_deletion
from hubimages.lib.formatting import plural, short_digest
from hubimages.lib.leases import HeldLease, repository_lock
from hubimages.models import (
    Deletion,
    DeletionRecord,
    IndexEntry,
    Manifest,
    ManifestBlob,
    Repository,
)
from hubimages.sync import rollups
from hubimages.sync.service import sync_repository
from registry.client import RegistryClient
from registry.errors import RegistryError, UnsupportedOperation


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
        f"interrupted: the worker stopped; {plural(done, 'manifest')} "
        f"{'was' if done == 1 else 'were'} "
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
        with rollups.changing(repository.pk, ids):  # the deleted items' neighbourhood only
            Manifest.objects.filter(pk__in=ids).delete()
            rollups.unused_blobs(set(blob_ids)).delete()
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
