"""Putting kept manifests back (SPEC §12): one item, a whole deletion operation, or the
operations of a whole retention run. Run by a worker (`jobs`), or `manage.py trash
restore` in the foreground.

Under the repository's lease, the items asked for (with the children of an index the same
deletion took, which the registry needs first) are checked against the registry anew: if
any of them can no longer be restored, nothing is sent and the refusal says which and why.
Otherwise each manifest's kept bytes are PUT by digest, children before their index and
subjects before their referrers, the digest the registry answers checked against the kept
one; then the tags. A tag that now names another manifest is left alone unless asked
(`move_tags`), and reported. The database then stores them as a push would, with their
kept Last pushed and Last pulled, and the records say who restored them when.

Safe to run twice: a manifest the registry has already is not sent again, and a second
run over what is back restores nothing more and says so."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from hubimages.lib.formatting import plural, short_digest
from hubimages.lib.leases import HeldLease, repository_lock
from hubimages.lib.ordering import dependencies_first
from hubimages.models import (
    Deletion,
    DeletionRecord,
    KeptManifest,
    Manifest,
    ManifestBlob,
    Registry,
    Repository,
)
from hubimages.sync import store
from hubimages.trash import states
from hubimages.trash.listing import kept_records
from registry import media
from registry.client import RegistryClient
from registry.errors import RegistryError

LOCK_WAIT_SECONDS = 30.0  # a sync or a deletion holds the repository meanwhile
READ_CONCURRENCY = 4


class RestoreRefused(Exception):
    """Nothing was restored: what was asked cannot be, and the message says why."""


@dataclass
class RestoreOutcome:
    """What a restore did, for the job's outcome, the API and the command line."""

    restored: list[dict] = field(default_factory=list)  # {"digest", "kind", "repository"}
    already: list[dict] = field(default_factory=list)  # back before this run
    failed: list[dict] = field(default_factory=list)  # {"digest", "repository", "reason"}
    tags: list[dict] = field(default_factory=list)  # put back: {"tag", "digest", "repository"}
    conflicts: list[dict] = field(default_factory=list)  # {"tag", "digest", "now", "moved"}

    @property
    def complete(self) -> bool:
        """Every manifest asked for is back."""
        return not self.failed

    def message(self) -> str:
        parts = []
        if self.restored:
            moved = sum(1 for c in self.conflicts if c["moved"])
            parts.append(
                f"Restored {plural(len(self.restored), 'manifest')} and "
                f"{plural(len(self.tags) + moved, 'tag')}"
            )
        if self.already:
            were = "was" if len(self.already) == 1 else "were"
            parts.append(
                f"{plural(len(self.already), 'manifest')} {were} back already"
                + ("" if self.restored else ": nothing more to restore")
            )
        if self.failed:
            parts.append(f"{plural(len(self.failed), 'manifest')} could not be restored")
        left = [c for c in self.conflicts if not c["moved"]]
        if left:
            parts.append(
                f"{plural(len(left), 'tag')} now naming another manifest left alone "
                f"({', '.join(c['tag'] for c in left)}): tick “move tags back” to move them"
            )
        return "; ".join(parts) + "." if parts else "Nothing to restore."

    def as_dict(self) -> dict:
        return {
            "restored": self.restored,
            "already": self.already,
            "failed": self.failed,
            "tags": self.tags,
            "conflicts": self.conflicts,
            "message": self.message(),
        }


Progress = Callable[[str], None]


def restore_operations(
    operations: Iterable[Deletion],
    *,
    digests: Iterable[str] | None = None,
    move_tags: bool = False,
    client_for: Callable[[str], RegistryClient],
    username: str,
    progress: Progress | None = None,
) -> RestoreOutcome:
    """Restore each operation (a retention run has one per repository it cleaned), with
    `client_for(registry name)`; `digests` narrows to those items. Raises RestoreRefused,
    before sending anything, when something asked for cannot be restored."""
    operations = list(operations)
    digests = list(digests) if digests else None
    asked = {op.pk: _asked(op, digests) for op in operations}
    if digests:
        known = {record.digest for records in asked.values() for record in records}
        unknown = [d for d in digests if d not in known]
        if unknown:
            raise RestoreRefused(
                f"not in the Trash of deletion {', '.join(str(op.pk) for op in operations)}: "
                + ", ".join(unknown)
            )
    if len(operations) > 1:
        # A whole retention run: refuse it all before any repository is touched.
        for operation in operations:
            waiting = [r for r in asked[operation.pk] if r.state == DeletionRecord.State.DONE]
            if waiting:
                _refuse_unless_restorable(operation, waiting, client_for(operation.registry))
    outcome = RestoreOutcome()
    for operation in operations:
        if asked[operation.pk]:
            _restore_one(
                operation,
                asked[operation.pk],
                move_tags=move_tags,
                client=client_for(operation.registry),
                username=username,
                progress=progress or (lambda line: None),
                outcome=outcome,
            )
    return outcome


def _asked(operation: Deletion, digests: list[str] | None) -> list[DeletionRecord]:
    """The operation's kept records asked for, with (recursively) the children of an
    asked index that the same deletion took: the registry refuses an index whose
    children it lacks."""
    records = list(
        kept_records().filter(operation=operation).select_related("kept").order_by("deleted_at")
    )
    by_digest = {record.digest: record for record in records}
    wanted = [d for d in (digests or by_digest) if d in by_digest]
    chosen: dict[str, DeletionRecord] = {}
    while wanted:
        digest = wanted.pop()
        if digest in chosen:
            continue
        chosen[digest] = by_digest[digest]
        wanted += [c for c in states.needs(by_digest[digest].kept).children if c in by_digest]
    return sorted(chosen.values(), key=lambda r: (r.deleted_at, r.pk))


def _restore_one(
    operation: Deletion,
    records: list[DeletionRecord],
    *,
    move_tags: bool,
    client: RegistryClient,
    username: str,
    progress: Progress,
    outcome: RestoreOutcome,
) -> None:
    repository = operation.repository
    with repository_lock(
        repository,
        owner=f"restore:{username}",
        wait=LOCK_WAIT_SECONDS,
        registry=operation.registry,
    ) as lease:
        progress(f"Checking {repository} in the registry")
        back, todo = [], []
        for record in records:
            restored = record.state == DeletionRecord.State.RESTORED
            present = restored and client.head_manifest(repository, record.digest) is not None
            (back if present else todo).append(record)
        if todo:
            _refuse_unless_restorable(operation, todo, client)
        ordered = _in_order(todo)
        failed = _put_manifests(operation, ordered, client, lease, progress, outcome)
        put = [record for record in ordered if record.digest not in failed]
        outcome.already += [_item(record) for record in back]
        tags, left = _put_tags(repository, put + back, client, move_tags, lease, outcome)
        _store(operation, put, back, tags, client, username, failed, left)
    outcome.restored += [_item(record) for record in put]


def _item(record: DeletionRecord) -> dict:
    return {"repository": record.repository, "digest": record.digest, "kind": record.kind}


def _refuse_unless_restorable(
    operation: Deletion, records: list[DeletionRecord], client: RegistryClient
) -> None:
    """Check the items against the registry now; refuse them all unless all can come back,
    so nothing is ever half restored."""
    states.check(records, client)
    lost = [r for r in records if r.kept.state != KeptManifest.State.RESTORABLE]
    if not lost:
        return
    reasons = "; ".join(_why_not(record) for record in lost[:5])
    more = f"; and {len(lost) - 5} more" if len(lost) > 5 else ""
    raise RestoreRefused(
        f"nothing was restored from deletion {operation.pk}: "
        f"{plural(len(lost), 'manifest')} can no longer be restored: {reasons}{more}"
    )


def _why_not(record: DeletionRecord) -> str:
    kept = record.kept
    what = f"{short_digest(record.digest)} ({record.kind})"
    gone = ", ".join(short_digest(d) for d in kept.missing[:3])
    if kept.state == KeptManifest.State.LOST:
        return (
            f"{what} is lost: the garbage collector removed what it needs "
            f"({plural(len(kept.missing), 'blob or manifest')}, {gone})"
        )
    return f"{what} is partly lost: the registry no longer has {gone}"


def _put_manifests(
    operation: Deletion,
    records: list[DeletionRecord],
    client: RegistryClient,
    lease: HeldLease,
    progress: Progress,
    outcome: RestoreOutcome,
) -> dict[str, str]:
    """PUT each kept manifest the registry lacks, in the order given (`_in_order`);
    returns digest -> why, for those not put back."""
    failed: dict[str, str] = {}
    for number, record in enumerate(records, start=1):
        lease.check()  # never write to a repository someone else took over
        blocking = [d for d in _before(record) if d in failed]
        if blocking:
            failed[record.digest] = f"not restored: {short_digest(blocking[0])} could not be"
        else:
            progress(f"Restoring {number} of {len(records)}: {short_digest(record.digest)}")
            try:
                if client.head_manifest(operation.repository, record.digest) is None:
                    client.put_manifest(
                        operation.repository,
                        record.digest,
                        bytes(record.kept.body),
                        record.kept.media_type,
                    )
            except RegistryError as error:
                failed[record.digest] = f"not restored: {error}"
        if record.digest in failed:
            outcome.failed.append({**_item(record), "reason": failed[record.digest]})
    return failed


def _in_order(records: list[DeletionRecord]) -> list[DeletionRecord]:
    """Children before their index, subjects before their referrers, otherwise in the
    order they were deleted."""
    return dependencies_first(records, key=lambda record: record.digest, after=_before)


def _before(record: DeletionRecord) -> tuple[str, ...]:
    """What must be back before `record`: an index's children, a referrer's subject (its
    `subject` field, or the one its tag names in the tag schema of registries without a
    referrers API: cosign's `sha256-<hex>.sig`, the fallback index's `sha256-<hex>`)."""
    needs = states.needs(record.kept)
    subjects = [needs.subject] + [media.referrer_tag_subject(tag) for tag in record.tags]
    return (*needs.children, *dict.fromkeys(s for s in subjects if s))


def _put_tags(
    repository: str,
    records: list[DeletionRecord],
    client: RegistryClient,
    move_tags: bool,
    lease: HeldLease,
    outcome: RestoreOutcome,
) -> tuple[dict[str, set[str]], dict[str, list[dict]]]:
    """Point each record's tags at it again, unless a tag now names another manifest (moved
    only with `move_tags`); returns digest -> the tags that name it now, and digest -> the
    conflicts left ({"tag", "now"}), which the Trash shows until a restore moves them."""
    naming: dict[str, set[str]] = {record.digest: set() for record in records}
    left: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        for tag in record.tags:
            lease.check()
            try:
                head = client.head_manifest(repository, tag)
                if head is not None and head.digest == record.digest:
                    naming[record.digest].add(tag)
                    continue
                if head is not None:
                    conflict = {"tag": tag, "digest": record.digest, "now": head.digest}
                    outcome.conflicts.append({**conflict, "moved": move_tags})
                    if not move_tags:
                        left[record.digest].append({"tag": tag, "now": head.digest})
                        continue
                body, media_type = bytes(record.kept.body), record.kept.media_type
                client.put_manifest(repository, tag, body, media_type)
            except RegistryError as error:
                reason = f"its tag {tag} could not be put back: {error}"
                outcome.failed.append({**_item(record), "reason": reason})
                continue
            naming[record.digest].add(tag)
            if head is None:
                outcome.tags.append({"tag": tag, "digest": record.digest})
    return naming, dict(left)


def _store(
    operation: Deletion,
    put: list[DeletionRecord],
    back: list[DeletionRecord],
    tags: dict[str, set[str]],
    client: RegistryClient,
    username: str,
    failed: dict[str, str],
    left: dict[str, list[dict]],
) -> None:
    """Store what came back as a push would, with the kept times; mark the records
    restored, with the tag conflicts left; and take what came back into use off "deleted,
    awaiting collection"."""
    if not (put or back):
        for digest, reason in failed.items():
            KeptManifest.objects.filter(record__operation=operation, record__digest=digest).update(
                message=reason[:512]
            )
        return
    registry = Registry.objects.get(name=operation.registry)
    present = {record.digest: tags.get(record.digest, set()) for record in put + back}
    with ThreadPoolExecutor(READ_CONCURRENCY, thread_name_prefix="restore") as pool:
        snapshot = store.read_pushed(client, pool, registry, operation.repository, present)
    try:
        with transaction.atomic():
            # Stored as pushes are: the list's columns and counts of what came back only
            # (`rollups.changing`), never the whole repository's.
            repository = store.write_pushed(registry, snapshot)
            _kept_times(repository, put)
            Repository.objects.filter(pk=repository.pk).update(revision=F("revision") + 1)
            DeletionRecord.objects.filter(pk__in=[r.pk for r in put]).update(
                state=DeletionRecord.State.RESTORED,
                restored_at=timezone.now(),
                restored_by=username[:150],
            )
            for record in put + back:
                KeptManifest.objects.filter(pk=record.pk).update(
                    message="", conflicts=left.get(record.digest, [])
                )
            for digest, reason in failed.items():
                KeptManifest.objects.filter(
                    record__operation=operation, record__digest=digest
                ).update(message=reason[:512])
            take_back_freed(operation)
    finally:
        snapshot.close()


def _kept_times(repository: Repository, records: list[DeletionRecord]) -> None:
    """Last pushed and first seen as they were; Last pulled the latest of the kept one
    and any pull recorded since."""
    current = dict(
        Manifest.objects.filter(
            repository=repository, digest__in=[r.digest for r in records]
        ).values_list("digest", "last_pulled_at")
    )
    for record in records:
        kept = record.kept
        if record.digest not in current:
            continue
        pulled = [t for t in (kept.last_pulled_at, current[record.digest]) if t is not None]
        values = {"last_pulled_at": max(pulled) if pulled else None}
        if kept.pushed_at is not None:
            values |= {
                "pushed_at": kept.pushed_at,
                "pushed_at_estimated": kept.pushed_at_estimated,
                "pushed_at_source": kept.pushed_at_source,
            }
        if kept.first_seen_at is not None:
            values["first_seen_at"] = kept.first_seen_at
        Manifest.objects.filter(repository=repository, digest=record.digest).update(**values)


def take_back_freed(operation: Deletion) -> None:
    """A restored manifest's blobs are in use again: take them off what the operation
    frees (its records' and its own `reclaimed_bytes`), so "deleted, awaiting collection"
    counts only what still waits; and choose another probe if its own is in use again."""
    kept = list(KeptManifest.objects.filter(record__operation=operation).select_related("record"))
    digests = {blob[0] for k in kept for blob in k.freed}
    in_use = set(
        ManifestBlob.objects.filter(
            blob__registry__name=operation.registry, blob__digest__in=digests
        ).values_list("blob__digest", flat=True)
    )
    if not in_use:
        return
    total, probe = 0, (-1, "")
    for item in kept:
        freed = [blob for blob in item.freed if blob[0] not in in_use]
        if len(freed) != len(item.freed):
            KeptManifest.objects.filter(pk=item.pk).update(freed=freed)
            DeletionRecord.objects.filter(pk=item.pk).update(
                reclaimed_bytes=sum(size for _, size, _ in freed)
            )
        for digest, size, role in freed:
            total += size
            if role != ManifestBlob.Role.MANIFEST and (-size, digest) < (-probe[0], probe[1]):
                probe = (size, digest)
    # Records from before the Trash kept nothing to count from: theirs stay as they were.
    others = operation.records.filter(kept__isnull=True).values_list("reclaimed_bytes", flat=True)
    total += sum(others)
    changes = {"reclaimed_bytes": total}
    if operation.probe_digest in in_use:
        changes["probe_digest"] = probe[1]
    Deletion.objects.filter(pk=operation.pk).update(**changes)
