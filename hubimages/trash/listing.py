"""What the Trash holds, as pages, the API and `manage.py trash list` read it: each
deletion operation with what it kept, newest first. Selectors only: the states are what
the last check found (`states`), never asked of the registry here."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count, Exists, F, Min, OuterRef, Q, QuerySet, Sum, Window
from django.db.models.functions import Length, Now, RowNumber

from hubimages.lib.formatting import iso
from hubimages.models import Deletion, DeletionRecord, KeptManifest

RESTORED = "restored"
STATES = (
    KeptManifest.State.RESTORABLE,
    KeptManifest.State.PARTLY_LOST,
    KeptManifest.State.LOST,
    RESTORED,
)
STATE_LABELS = {**dict(KeptManifest.State.choices), RESTORED: "Restored"}
IN_TRASH = (DeletionRecord.State.DONE, DeletionRecord.State.RESTORED)
MAY_RESTORE = (KeptManifest.State.RESTORABLE, KeptManifest.State.UNCHECKED)
ALL_STATES = (*STATES, KeptManifest.State.UNCHECKED)


def kept_records(registry: str | None = None) -> QuerySet[DeletionRecord]:
    """Records the Trash holds: deleted (and maybe restored since) within
    `TRASH_KEEP_DAYS` of the database's clock, with their kept bytes. Older ones are no
    longer offered, whether or not the workers' housekeeping forgot them yet."""
    since = Now() - timedelta(days=settings.TRASH_KEEP_DAYS)
    records = DeletionRecord.objects.filter(
        kept__isnull=False, state__in=IN_TRASH, deleted_at__gte=since
    )
    return records.filter(registry=registry) if registry else records


def registries() -> list[str]:
    """The names of the registries whose Trash holds something."""
    names = kept_records().order_by().values_list("registry", flat=True).distinct()
    return sorted(names)


def operations(registry: str | None = None, *, within: Q | None = None) -> QuerySet[Deletion]:
    """The deletion operations the Trash holds something of, newest first; with `within`
    (a filter on `registry` and `repository`), only those it lets through: the deletions
    in repositories a user may see."""
    held = kept_records(registry).filter(operation=OuterRef("pk"))
    rows = Deletion.objects.filter(Exists(held))
    if within is not None:
        rows = rows.filter(within)
    return rows.select_related("retention_run").order_by("-started_at", "-pk")


@dataclass(frozen=True)
class Item:
    """One kept manifest as the Trash shows it."""

    record_id: int
    repository: str
    digest: str
    kind: str
    tags: tuple[str, ...]
    size: int
    kept_bytes: int
    state: str
    checked_at: datetime | None
    missing: tuple[str, ...]
    message: str
    restored_at: datetime | None
    restored_by: str
    conflicts: tuple[dict, ...] = ()  # tags its restore left naming another manifest

    @property
    def state_label(self) -> str:
        return STATE_LABELS[self.state]

    def as_dict(self) -> dict:
        """The shape of `manage.py trash list --json` (SPEC §12)."""
        return {
            "repository": self.repository,
            "digest": self.digest,
            "kind": self.kind,
            "tags": list(self.tags),
            "state": self.state,
        }


@dataclass(frozen=True)
class Summary:
    """An operation's items counted, whether shown or not."""

    counts: dict[str, int]  # items per state, `unchecked` too
    kept_bytes: int
    checked_at: datetime | None  # its least recently checked item not restored, if all were
    conflicts: int = 0  # restored items with a tag left naming another manifest

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class Operation:
    """A deletion operation and what the Trash holds of it: its first items, or all."""

    deletion: Deletion
    items: tuple[Item, ...]
    summary: Summary

    @property
    def pk(self) -> int:
        return self.deletion.pk

    @property
    def policy(self) -> str | None:
        return policy_of(self.deletion)

    @property
    def counts(self) -> dict[str, int]:
        return self.summary.counts

    @property
    def kept_bytes(self) -> int:
        return self.summary.kept_bytes

    @property
    def checked_at(self) -> datetime | None:
        return self.summary.checked_at

    @property
    def more(self) -> int:
        """Items not among `items`."""
        return self.summary.total - len(self.items)

    @property
    def conflicts(self) -> int:
        return self.summary.conflicts

    @property
    def may_restore(self) -> bool:
        """Something of it may come back: not restored yet, and not found lost when last
        checked (or not checked yet: a restore checks first)."""
        return any(self.counts[state] for state in MAY_RESTORE)

    def as_dict(self) -> dict:
        """The shape of `manage.py trash list --json` (SPEC §12)."""
        return {
            "id": self.deletion.pk,
            "registry": self.deletion.registry,
            "deleted_at": iso(self.deletion.started_at),
            "deleted_by": self.deletion.username,
            "policy": self.policy,
            "items": [item.as_dict() for item in self.items],
        }


def policy_of(deletion: Deletion) -> str | None:
    """The retention policy that made this deletion, if one did."""
    if deletion.retention_run is not None:
        return deletion.retention_run.policy_name
    name = deletion.username
    return name.removeprefix("policy:") if name.startswith("policy:") else None


def with_items(deletions: Iterable[Deletion], *, limit: int | None = None) -> list[Operation]:
    """Each deletion with its kept items in the order they were deleted (the first
    `limit` of each, or all) and their counts: three queries, the kept bytes left in the
    database."""
    deletions = list(deletions)
    held = kept_records().filter(operation_id__in=[d.pk for d in deletions])
    records = (
        held.select_related("kept")
        .defer("kept__body")
        .annotate(kept_bytes=Length("kept__body"))
        .order_by("deleted_at", "pk")
    )
    if limit is not None:
        number = Window(
            RowNumber(), partition_by=F("operation_id"), order_by=[F("deleted_at"), F("pk")]
        )
        records = records.annotate(number=number).filter(number__lte=limit)
    items: dict[int, list[Item]] = {}
    for record in records:
        items.setdefault(record.operation_id, []).append(item_of(record))
    summaries = _summaries(held)
    empty = Summary(dict.fromkeys(ALL_STATES, 0), 0, None)
    return [Operation(d, tuple(items.get(d.pk, ())), summaries.get(d.pk, empty)) for d in deletions]


def _summaries(records: QuerySet[DeletionRecord]) -> dict[int, Summary]:
    rows = (
        records.order_by()
        .values("operation_id", "state", "kept__state")
        .annotate(
            count=Count("pk"),
            kept_bytes=Sum(Length("kept__body")),
            oldest_check=Min("kept__checked_at"),
            conflicts=Count("pk", filter=~Q(kept__conflicts=[])),
        )
    )
    counts: dict[int, dict[str, int]] = {}
    kept: dict[int, int] = {}
    checks: dict[int, list] = {}
    conflicts: dict[int, int] = {}
    for row in rows:
        operation = row["operation_id"]
        conflicts[operation] = conflicts.get(operation, 0) + row["conflicts"]
        restored = row["state"] == DeletionRecord.State.RESTORED
        state = RESTORED if restored else row["kept__state"]
        counts.setdefault(operation, dict.fromkeys(ALL_STATES, 0))[state] += row["count"]
        kept[operation] = kept.get(operation, 0) + (row["kept_bytes"] or 0)
        if not restored:
            checks.setdefault(operation, []).append(row["oldest_check"])
    summaries = {}
    for operation, by_state in counts.items():
        times = checks.get(operation, [])
        unchecked = by_state[KeptManifest.State.UNCHECKED] or None in times
        oldest = None if unchecked or not times else min(times)
        summaries[operation] = Summary(by_state, kept[operation], oldest, conflicts[operation])
    return summaries


def item_of(record: DeletionRecord) -> Item:
    kept = record.kept
    restored = record.state == DeletionRecord.State.RESTORED
    return Item(
        record_id=record.pk,
        repository=record.repository,
        digest=record.digest,
        kind=record.kind,
        tags=tuple(record.tags),
        size=record.size,
        kept_bytes=getattr(record, "kept_bytes", None) or len(kept.body),
        state=RESTORED if restored else kept.state,
        checked_at=kept.checked_at,
        missing=tuple(kept.missing),
        message=kept.message,
        restored_at=record.restored_at,
        restored_by=record.restored_by,
        conflicts=tuple(kept.conflicts) if restored else (),
    )
