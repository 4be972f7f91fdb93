"""Executing a previewed plan (SPEC §4): exactly that plan or nothing, parents before
children, each manifest recorded PENDING (with its kept bytes, for the Trash: SPEC §12)
before its DELETE and settled after."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Exists, F, Max, OuterRef
from django.utils import timezone

from hubimages.deletion.planning import DeletionPlan, PlannedItem, plan_deletion
from hubimages.lib.formatting import plural, short_digest
from hubimages.lib.leases import (
    HeldLease,
    LeaseLost,
    acquire,
    holding,
    repository_lease_name,
    repository_lock,
)
from hubimages.lib.ordering import dependencies_first
from hubimages.models import (
    Deletion,
    DeletionRecord,
    IndexEntry,
    Job,
    KeptManifest,
    Manifest,
    ManifestBlob,
    RegistryEvent,
    Repository,
    RetentionRun,
)
from hubimages.sync import rollups
from hubimages.sync.service import sync_repository
from registry.client import RegistryClient
from registry.errors import ManifestNotFound, NotFound, RegistryError, UnsupportedOperation

log = logging.getLogger("hubimages.deletion")


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
    # What other clients' pushes during the deletion did (`ConcurrentPushes`).
    warnings: tuple[str, ...] = ()

    @property
    def deletes_disabled(self) -> bool:
        return any(item.deletes_disabled for item in self.failed)

    @property
    def succeeded(self) -> bool:
        return not self.stale and not self.failed and not self.skipped


class RecheckFailed(Exception):
    """The repository could not be re-read from the registry: nothing was deleted."""


class DeletionStopped(LeaseLost):
    """The repository's lease was taken over mid-way: no further DELETE was sent, and the
    operation's records say what went."""

    def __init__(self, message: str, operation_id: int) -> None:
        super().__init__(message)
        self.operation_id = operation_id


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
    allow_in_use: bool = False,
    retention_run: RetentionRun | None = None,
    job: Job | None = None,
) -> DeletionOutcome:
    """Delete exactly the plan previewed as `fingerprint`, or nothing if it changed.

    Under the repository's lease: re-read the repository from the registry, recompute the
    plan, then delete parents before children (indexes before their entries, subjects
    before their referrers) so a failure never leaves an index pointing at nothing. Each
    manifest's record is written PENDING before its DELETE is sent and DONE or FAILED
    after, so a worker killed mid-way leaves an exact history (`resolve_interrupted`).
    The PENDING record carries the manifest's exact bytes, fetched by digest right before
    and verified, in the same transaction (`KeptManifest`, the Trash's): no DELETE is sent
    for a manifest whose bytes could not be kept, and a worker killed between keeping and
    deleting leaves kept bytes for every DELETE it sent.
    `username` overrides the recorded name (the command line records `cli:<os user>`);
    `retention_run` is the run this deletion is part of, `job` the deletion job running it.
    `allow_in_use`: the person ticked "delete even though in use" (SPEC §13); what the plan
    deletes although a live report names it is recorded on the operation, under their name.
    Raises `leases.RepositoryBusy` or `RecheckFailed`, both before deleting anything, and
    `DeletionStopped` (a `leases.LeaseLost`) if the lease is taken over mid-way: the check
    right before each DELETE asks the database whether this holder's generation of the lease
    is still the current one, so nothing more is sent once another process took it over.
    """
    digests = list(digests)
    name = username or (user.get_username() if user is not None else "")
    report = progress or (lambda line: None)
    with repository_lock(repository, owner=f"delete:{name}") as lease:
        report(f"Re-reading {repository.name} from the registry")
        watch = ConcurrentPushes(client, repository)
        result = sync_repository(client, repository.name, registry=repository.registry)
        if result.error:
            raise RecheckFailed(
                f"could not re-check {repository.name} against the registry: {result.error}"
            )
        watch.rechecked(repository)
        plan = plan_deletion(repository=repository, digests=digests, allow_in_use=allow_in_use)
        operation = Deletion.objects.create(
            user=user,
            username=name,
            registry=repository.registry.name,
            repository=repository.name,
            selected=list(plan.selected),
            fingerprint=fingerprint,
            in_use_override=plan.in_use_deleted(),
            retention_run=retention_run,
            job=job,
        )
        if plan.fingerprint != fingerprint:
            _close(operation, Deletion.State.STALE, CHANGED_MESSAGE)
            return DeletionOutcome(plan=plan, stale=True, operation_id=operation.pk)
        deleted: list[PlannedItem] = []
        failed: list[NotDeleted] = []
        skipped: list[NotDeleted] = []
        reclaimed = 0
        try:
            _delete_in_order(
                plan, client, lease, operation, deleted, failed, skipped, report, watch
            )
            watch.finish(operation, deleted)
        except LeaseLost as lost:
            raise DeletionStopped(str(lost), operation.pk) from None
        finally:
            reclaimed = _record(repository, operation, deleted)
            state = Deletion.State.DONE if not (failed or skipped) else Deletion.State.PARTIAL
            if len(deleted) + len(failed) + len(skipped) < len(plan.delete):
                state = Deletion.State.FAILED  # interrupted: the lease was lost
            _close(operation, state, "; ".join(watch.warnings), reclaimed)
    return DeletionOutcome(
        plan=plan,
        stale=False,
        deleted=tuple(deleted),
        failed=tuple(failed),
        skipped=tuple(skipped),
        reclaimed_bytes=reclaimed,
        operation_id=operation.pk,
        warnings=tuple(watch.warnings),
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
    watch: ConcurrentPushes,
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
        if reason := watch.keeps(item):
            skipped.append(NotDeleted(item.digest, reason))
            not_done[item.manifest_id] = item.digest
            continue
        lease.check()  # fencing: no DELETE unless this generation still holds the repository
        report(f"Deleting {number} of {len(ordered)}: {short_digest(item.digest)}")
        try:
            kept = _keep(client, plan.repository, item)
        except RegistryError as error:
            reason = f"not deleted: its bytes could not be kept for the Trash first: {error}"
            failed.append(NotDeleted(item.digest, reason))
            not_done[item.manifest_id] = item.digest
            _settle(_pending_record(operation, item), DeletionRecord.State.FAILED, reason)
            continue
        record = _pending_record(operation, item, kept)
        if kept is None:  # nothing left to delete, nor to keep
            _settle(record, DeletionRecord.State.DONE, GONE_ALREADY)
            deleted.append(item)
            continue
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


GONE_ALREADY = "the registry no longer had it: nothing was sent"
KEPT_TIMES = (
    "pushed_at",
    "pushed_at_estimated",
    "pushed_at_source",
    "last_pulled_at",
    "first_seen_at",
)


def _keep(client: RegistryClient, repository: str, item: PlannedItem) -> KeptManifest | None:
    """What the Trash keeps of `item` (unsaved): its exact bytes, GET by digest now and
    verified against it, and its times as the database has them; None when the registry
    no longer has it (a manifest it no longer has counts as deleted, SPEC §4)."""
    try:
        fetched = client.get_manifest(repository, item.digest)
    except ManifestNotFound:
        return None
    times = Manifest.objects.filter(pk=item.manifest_id).values(*KEPT_TIMES).first() or {}
    return KeptManifest(media_type=fetched.media_type, body=fetched.body, **times)


def _delete_manifest(client: RegistryClient, repository: str, item: PlannedItem) -> None:
    """DELETE by digest (a 404 means gone already). A registry that refuses to delete a
    manifest its tags still name (4xx but 404/405) gets its tags deleted first, the
    order the OCI distribution spec's own conformance tests follow, then one more try.

    A tag is deleted by name, so each is HEADed right before: one that points elsewhere
    now (pushed again since the plan) is someone's newer image and is left alone."""
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
                head = client.head_manifest(repository, tag)
                if head is not None and head.digest == item.digest:
                    client.delete_tag(repository, tag)
        except UnsupportedOperation:
            raise error from None
        client.delete_manifest(repository, item.digest)


class ConcurrentPushes:
    """What other clients push while a deletion runs. The OCI API cannot delete "this
    manifest unless someone just tagged it", so the race cannot be closed, only narrowed
    and reported. Right before each DELETE (`keeps`): the push events recorded since the
    deletion's re-check are read (the registry's notifications), and the tag list is read
    again, each tag new since the re-check HEADed; a manifest pushed again, tagged, or
    listed by an index pushed meanwhile is kept. After the DELETEs (`finish`): tags pushed
    onto a manifest while its DELETE was under way went with it, and are added to its
    record; an index pushed meanwhile that lists a deleted manifest is reported (its child is
    gone from the registry; restoring it is what a Trash would do, from the manifests'
    kept bytes: `dangling` holds the pairs).

    "Since" is by event id, not by time: the mark is taken before the re-check, so events
    the re-check already saw are read again (harmless), and no host's clock is involved."""

    def __init__(self, client: RegistryClient, repository: Repository) -> None:
        self.client = client
        self.repository = repository.name
        self.registry_id = repository.registry_id
        self.mark = RegistryEvent.objects.aggregate(last=Max("pk"))["last"] or 0
        self.known_tags: set[str] = set()
        self.listed: set[str] = set()
        self.children: dict[str, list[str]] = {}  # digest -> children (content-addressed)
        self.warnings: list[str] = []
        self.dangling: list[tuple[str, str]] = []  # (index, deleted child)

    def rechecked(self, repository: Repository) -> None:
        """The tags the re-check found: others are new since."""
        self.known_tags = set(repository.tags.values_list("name", flat=True))

    def pushes(self):
        return RegistryEvent.objects.filter(
            pk__gt=self.mark,
            registry_id=self.registry_id,
            repository=self.repository,
            action="push",
        )

    def keeps(self, item: PlannedItem) -> str:
        """Why `item` must not be deleted now, or "" to go ahead."""
        again = sorted(self.pushes().filter(digest=item.digest).values_list("tag", flat=True))
        if again:
            how = f" as {', '.join(t for t in again if t)}" if any(again) else ""
            return f"kept: pushed again{how} during the deletion"
        try:
            self._list_tags()
            for digest, tag in self._pushed_since():
                if digest == item.digest:
                    return f"kept: tagged {tag} during the deletion"
                if item.digest in self._children(digest):
                    return f"kept: listed by index {digest}{_as(tag)}, pushed during the deletion"
        except RegistryError as error:
            return f"kept: could not check the registry for pushes during the deletion: {error}"
        return ""

    def finish(self, operation: Deletion, deleted: list[PlannedItem]) -> list[str]:
        """What the other clients' pushes did to this deletion, for people."""
        gone = {item.digest: item for item in deleted}
        try:
            self._list_tags()
            self._tags_pushed_onto(operation, gone)
            self._indexes_listing(gone)
        except RegistryError as error:
            self.warnings.append(f"could not check for pushes during the deletion: {error}")
        return self.warnings

    def _tags_pushed_onto(self, operation: Deletion, gone: dict[str, PlannedItem]) -> None:
        """A tag pushed onto a manifest while its DELETE was under way went with it: the
        push events say so (a tag list read before the DELETE cannot have seen it)."""
        records = {
            record.digest: record for record in operation.records.filter(digest__in=list(gone))
        }
        went: dict[str, set[str]] = defaultdict(set)
        for digest, tag in self.pushes().order_by("pk").values_list("digest", "tag"):
            if tag and digest in gone and tag not in gone[digest].tags:
                went[digest].add(tag)
        for digest, tags in went.items():
            self.warnings.append(
                f"tag {', '.join(sorted(tags))}, pushed during the deletion, went with {digest}"
            )
            if record := records.get(digest):
                DeletionRecord.objects.filter(pk=record.pk).update(
                    tags=sorted({*record.tags, *tags})
                )

    def _indexes_listing(self, gone: dict[str, PlannedItem]) -> None:
        """An index pushed meanwhile (by a new tag, or by an event) listing a deleted child."""
        for digest, tag in [*self._pushed_since(), *self._pushed_by_digest()]:
            if digest in gone:
                continue
            for child in self._children(digest):
                if child not in gone or (digest, child) in self.dangling:
                    continue
                if self.client.head_manifest(self.repository, child) is not None:
                    continue  # pushed again since
                self.dangling.append((digest, child))
                self.warnings.append(
                    f"index {digest}{_as(tag)}, pushed during the deletion, lists {child}, "
                    "which this deletion deleted: the index now points at a missing manifest "
                    "(push that manifest again, or delete the index)"
                )

    def _list_tags(self) -> None:
        self.listed = set(self.client.list_tags(self.repository))

    def _pushed_since(self) -> list[tuple[str, str]]:
        """(digest, tag) of each tag new since the re-check (a HEAD each)."""
        found = []
        for tag in sorted(self.listed - self.known_tags):
            head = self.client.head_manifest(self.repository, tag)
            if head is not None:
                found.append((head.digest, tag))
        return found

    def _pushed_by_digest(self) -> list[tuple[str, str]]:
        return [(digest, "") for digest in self.pushes().values_list("digest", flat=True)]

    def _children(self, digest: str) -> list[str]:
        if digest not in self.children:
            try:
                fetched = self.client.get_manifest(self.repository, digest)
            except NotFound:
                return []
            self.children[digest] = [child.digest for child in fetched.parsed.manifests]
        return self.children[digest]


def _as(tag: str) -> str:
    return f" (tag {tag})" if tag else ""


def _pending_record(
    operation: Deletion, item: PlannedItem, kept: KeptManifest | None = None
) -> DeletionRecord:
    """The PENDING record, and with it (one transaction) what the Trash keeps."""
    with transaction.atomic():
        record = DeletionRecord.objects.create(
            operation=operation,
            user_id=operation.user_id,
            username=operation.username,
            registry=operation.registry,
            repository=operation.repository,
            digest=item.digest,
            kind=item.kind,
            tags=list(item.tags),
            size=item.size,
            state=DeletionRecord.State.PENDING,
        )
        if kept is not None:
            kept.record = record
            kept.save(force_insert=True)
    return record


def _settle(record: DeletionRecord, state: str, message: str = "") -> None:
    DeletionRecord.objects.filter(pk=record.pk).update(state=state, message=message[:512])


def settle_interrupted(
    client_for: Callable[[str], RegistryClient], operations: Iterable[Deletion]
) -> list[int]:
    """Settle the deletions a process left running when it stopped (SIGKILL, a lost host,
    a database that went away before it could close them). A deletion holds its
    repository's lease from its start to its end, so one still running whose repository's
    lease is free was interrupted. Each repository's are settled holding that lease:
    nobody deletes there meanwhile, and a holder that was only stalled is fenced out (its
    next check fails). A repository whose lease is held, or whose registry does not answer,
    waits for the next call. `client_for(registry)` reads each deletion's registry.
    Returns the ids of the deletions settled."""
    settled = []
    for registry, repository in sorted({(o.registry, o.repository) for o in operations}):
        taken = acquire(repository_lease_name(repository, registry), owner="recovery")
        if taken is None:
            continue  # held: a live deletion, or a sync; the next call tries again
        with holding(taken):
            for operation in Deletion.objects.filter(
                registry=registry, repository=repository, state=Deletion.State.RUNNING
            ):
                try:
                    resolve_interrupted(client_for(registry), operation)
                except RegistryError as error:
                    log.warning("could not settle deletion %s yet: %s", operation.pk, error)
                    break
                settled.append(operation.pk)
    return settled


def resolve_interrupted(client: RegistryClient, operation: Deletion) -> int:
    """A deletion whose process stopped mid-way: a PENDING record's DELETE may or may not
    have reached the registry, so ask it (a HEAD by digest) and record what is true. The
    manifests that went leave the database as a finished deletion's would, their freed
    bytes credited to them. Call it holding the repository's lease (`settle_interrupted`).
    Returns how many records were resolved."""
    resolved = 0
    for record in operation.records.filter(state=DeletionRecord.State.PENDING):
        present = client.head_manifest(operation.repository, record.digest) is not None
        _settle(
            record,
            DeletionRecord.State.FAILED if present else DeletionRecord.State.DONE,
            "interrupted before the registry deleted it" if present else "",
        )
        resolved += 1
    done = list(
        operation.records.filter(state=DeletionRecord.State.DONE)
        .order_by("pk")
        .values_list("digest", flat=True)
    )
    repository = Repository.objects.filter(
        registry__name=operation.registry, name=operation.repository
    ).first()
    if repository is not None and done:
        _record(repository, operation, _still_stored(repository, done))
    reclaimed = sum(operation.records.values_list("reclaimed_bytes", flat=True))
    _close(
        operation,
        Deletion.State.FAILED,
        f"interrupted: the process running it stopped; {plural(len(done), 'manifest')} "
        f"{'was' if len(done) == 1 else 'were'} deleted before it did (see the records)",
        reclaimed,
    )
    return resolved


def _still_stored(repository: Repository, digests: list[str]) -> list[PlannedItem]:
    """The deleted manifests the database still holds (the process stopped before it
    recorded them), in deletion order, as `_record` takes them."""
    rows = {
        digest: (pk, kind, size)
        for pk, digest, kind, size in Manifest.objects.filter(
            repository=repository, digest__in=digests
        ).values_list("pk", "digest", "kind", "size")
    }
    return [
        PlannedItem(
            manifest_id=rows[d][0],
            digest=d,
            kind=rows[d][1],
            platform="",
            tags=(),
            size=rows[d][2],
            because="",
            group="",
        )
        for d in digests
        if d in rows
    ]


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
    """Parents before children, otherwise plan order."""
    return dependencies_first(
        items,
        key=lambda item: item.manifest_id,
        after=lambda item: (parent for parent, _ in parents.get(item.manifest_id, [])),
    )


def _record(repository: Repository, operation: Deletion, deleted: list[PlannedItem]) -> int:
    """Make the database say what the registry now holds, and credit each freed blob to
    the first deleted manifest (in deletion order) that held it, so the records'
    `reclaimed_bytes` add up to what the deletion freed."""
    if not deleted:
        return 0
    ids = [item.manifest_id for item in deleted]
    freed, probe = _freed_blobs(ids)
    blob_ids = list(
        ManifestBlob.objects.filter(manifest_id__in=ids).values_list("blob_id", flat=True)
    )
    digests = {item.manifest_id: item.digest for item in deleted}
    with transaction.atomic():
        for manifest_id, blobs in freed.items():
            records = operation.records.filter(digest=digests[manifest_id])
            records.update(reclaimed_bytes=sum(size for _, size, _ in blobs))
            KeptManifest.objects.filter(record__in=records).update(freed=blobs)
        Deletion.objects.filter(pk=operation.pk).update(probe_digest=probe)
        with rollups.changing(repository.pk, ids):  # the deleted items' neighbourhood only
            Manifest.objects.filter(pk__in=ids).delete()
            rollups.unused_blobs(set(blob_ids)).delete()
        Repository.objects.filter(pk=repository.pk).update(revision=F("revision") + 1)
    return sum(size for blobs in freed.values() for _, size, _ in blobs)


def _freed_blobs(ids: list[int]) -> tuple[dict[int, list[list]], str]:
    """Each freed blob ([digest, size, role]) credited to the first deleted manifest
    holding it; and the largest freed layer or config, the operation's probe
    (`Deletion.probe_digest`: the registry serves it through the repository until its
    garbage collector runs, which a manifest's own blob, reachable only as a manifest,
    does not tell)."""
    position = {pk: i for i, pk in enumerate(ids)}
    used_elsewhere = ManifestBlob.objects.filter(blob_id=OuterRef("blob_id")).exclude(
        manifest_id__in=ids
    )
    owner: dict[int, tuple[int, list]] = {}  # blob id -> (manifest id, [digest, size, role])
    probe: tuple[int, str] = (-1, "")
    for blob_id, manifest_id, size, role, digest in (
        ManifestBlob.objects.filter(manifest_id__in=ids)
        .filter(~Exists(used_elsewhere))
        .order_by("blob__digest", "role")
        .values_list("blob_id", "manifest_id", "blob__size", "role", "blob__digest")
    ):
        if blob_id not in owner or position[manifest_id] < position[owner[blob_id][0]]:
            owner[blob_id] = (manifest_id, [digest, size, role])
        if role != ManifestBlob.Role.MANIFEST and (-size, digest) < (-probe[0], probe[1]):
            probe = (size, digest)
    freed: dict[int, list[list]] = defaultdict(list)
    for manifest_id, blob in owner.values():
        freed[manifest_id].append(blob)
    return dict(freed), probe[1]
