"""What the Trash holds, as pages, the API and `manage.py trash list` read it: each
deletion operation with what it kept, newest first. Selectors only: the states are what
the last check found (`states`), never asked of the registry here."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Exists, OuterRef, QuerySet
from django.db.models.functions import Length, Now

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


def operations(registry: str | None = None) -> QuerySet[Deletion]:
    """The deletion operations the Trash holds something of, newest first."""
    held = kept_records(registry).filter(operation=OuterRef("pk"))
    return (
        Deletion.objects.filter(Exists(held))
        .select_related("retention_run")
        .order_by("-started_at", "-pk")
    )


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
class Operation:
    """A deletion operation and what the Trash holds of it."""

    deletion: Deletion
    items: tuple[Item, ...]

    @property
    def pk(self) -> int:
        return self.deletion.pk

    @property
    def policy(self) -> str | None:
        return policy_of(self.deletion)

    @property
    def kept_bytes(self) -> int:
        return sum(item.kept_bytes for item in self.items)

    @property
    def checked_at(self) -> datetime | None:
        """When its least recently checked item not restored was checked."""
        times = [item.checked_at for item in self.items if item.state != RESTORED]
        return None if not times or None in times else min(times)  # type: ignore[type-var]

    @property
    def counts(self) -> dict[str, int]:
        """How many items are in each state (`unchecked` too)."""
        counts = dict.fromkeys([*STATES, KeptManifest.State.UNCHECKED], 0)
        for item in self.items:
            counts[item.state] += 1
        return counts

    @property
    def may_restore(self) -> bool:
        """Something of it may come back: not restored yet, and not found lost when last
        checked (or not checked yet: a restore checks first)."""
        return any(item.state in MAY_RESTORE for item in self.items)

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


def with_items(deletions: Iterable[Deletion]) -> list[Operation]:
    """Each deletion with its kept items in the order they were deleted: two queries, the
    kept bytes left in the database."""
    deletions = list(deletions)
    records = (
        kept_records()
        .filter(operation_id__in=[d.pk for d in deletions])
        .select_related("kept")
        .defer("kept__body")
        .annotate(kept_bytes=Length("kept__body"))
        .order_by("deleted_at", "pk")
    )
    items: dict[int, list[Item]] = {}
    for record in records:
        items.setdefault(record.operation_id, []).append(item_of(record))
    return [Operation(d, tuple(items.get(d.pk, ()))) for d in deletions]


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
    )
