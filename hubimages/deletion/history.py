"""The deletion history as people read it: one row per deletion operation (who, when,
which repository, what they selected, how many manifests and tags went, the bytes freed),
opening onto its manifests.

Records written before operations existed have none: each of them is a row of its own,
so the history never loses them. Both kinds are read in one UNION query, newest first.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import CharField, Count, F, Func, IntegerField, Q, Sum, Value, Window
from django.db.models.functions import RowNumber

from hubimages.lib.formatting import iso
from hubimages.models import Deletion, DeletionRecord

OPERATION = "operation"
RECORD = "record"  # a manifest deleted before operations existed
MANIFESTS_SHOWN = 100  # an operation opens onto its first manifests; the CSV has them all
SELECTION_SHOWN = 3
CSV_CHUNK = 200
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
CSV_HEADER = (
    "deletion",  # its number: "Deletion #12" on every page
    "started_at",
    "who",
    "registry",
    "repository",
    "deletion_state",
    "selected",
    "digest",
    "kind",
    "tags",
    "size",
    "reclaimed_bytes",
    "state",
    "message",
    "deleted_at",
    "garbage_collected_at",
    "restored_at",
    "restored_by",
    "in_use_override",
)


class JSONArrayLength(Func):
    """How many elements a JSON array column holds (a record's tags)."""

    function = "JSON_ARRAY_LENGTH"
    output_field = IntegerField()

    def as_postgresql(self, compiler, connection, **extra):
        return super().as_sql(compiler, connection, function="JSONB_ARRAY_LENGTH", **extra)


@dataclass(frozen=True)
class Selected:
    """A selected digest and the tags it had, when its record says."""

    digest: str
    tags: tuple[str, ...]


@dataclass
class HistoryRow:
    """One operation, or one record from before operations."""

    source: str
    pk: int
    at: datetime
    username: str
    registry: str
    repository: str
    state: str
    state_label: str
    deleted: int
    failed: int
    pending: int
    restored: int
    tags: int
    reclaimed_bytes: int
    waiting_for_collection: bool
    collected_at: datetime | None
    message: str = ""
    selected: list[Selected] = field(default_factory=list)
    records: list[DeletionRecord] = field(default_factory=list)
    records_more: int = 0
    # Digest -> the places live in-use reports named when `username` chose to delete it
    # even though in use (SPEC §13).
    in_use_override: dict[str, list[dict]] = field(default_factory=dict)

    @property
    def manifests(self) -> int:
        return self.deleted + self.failed + self.pending + self.restored

    @property
    def in_use_sources(self) -> list[str]:
        """The sources whose live reports named what was deleted on the override."""
        return sorted({u["source"] for uses in self.in_use_override.values() for u in uses})

    @property
    def selected_shown(self) -> list[Selected]:
        return self.selected[:SELECTION_SHOWN]

    @property
    def selected_more(self) -> int:
        return max(0, len(self.selected) - SELECTION_SHOWN)


def entries(
    repository: str = "",
    registry: str = "",
    *,
    within: Q | None = None,
    deletion: int | None = None,
) -> Sequence:
    """(source, pk, time) of every operation and every record without one, newest first;
    `repository` matches repository names by substring, `registry` names one registry,
    `within` (a filter on `registry` and `repository`: what a user may see) narrows both;
    `deletion` keeps that one operation alone."""
    operations = Deletion.objects.all()
    legacy = DeletionRecord.objects.filter(operation__isnull=True)
    if deletion is not None:
        operations = operations.filter(pk=deletion)
        legacy = legacy.none()
    if within is not None:
        operations = operations.filter(within)
        legacy = legacy.filter(within)
    if registry:
        operations = operations.filter(registry=registry)
        legacy = legacy.filter(registry=registry)
    if repository:
        operations = operations.filter(repository__icontains=repository)
        legacy = legacy.filter(repository__icontains=repository)
    operations = operations.annotate(
        source=Value(OPERATION, output_field=CharField()), at=F("started_at")
    ).values_list("source", "pk", "at")
    legacy = legacy.annotate(
        source=Value(RECORD, output_field=CharField()), at=F("deleted_at")
    ).values_list("source", "pk", "at")
    return operations.order_by().union(legacy.order_by(), all=True).order_by("-at", "-pk")


def rows(page: Iterable[tuple[str, int, datetime]], *, every_record: bool = False) -> list:
    """The history rows for a page of `entries`: three queries whatever its length. An
    operation carries its first `MANIFESTS_SHOWN` records, or all of them."""
    page = list(page)
    operation_ids = [pk for source, pk, _ in page if source == OPERATION]
    record_ids = [pk for source, pk, _ in page if source == RECORD]
    records = _records_of(operation_ids, None if every_record else MANIFESTS_SHOWN)
    operations = {
        operation.pk: _operation_row(operation, records.get(operation.pk, []))
        for operation in Deletion.objects.filter(pk__in=operation_ids).annotate(
            deleted=Count("records", filter=Q(records__state=DeletionRecord.State.DONE)),
            failed=Count("records", filter=Q(records__state=DeletionRecord.State.FAILED)),
            pending=Count("records", filter=Q(records__state=DeletionRecord.State.PENDING)),
            restored=Count("records", filter=Q(records__state=DeletionRecord.State.RESTORED)),
            tag_count=Sum(
                JSONArrayLength("records__tags"),
                filter=Q(records__state=DeletionRecord.State.DONE),
            ),
        )
    }
    legacy = {row.pk: _record_row(row) for row in DeletionRecord.objects.filter(pk__in=record_ids)}
    return [
        operations[pk] if source == OPERATION else legacy[pk]
        for source, pk, _ in page
        if pk in (operations if source == OPERATION else legacy)
    ]


def _records_of(operation_ids: list[int], limit: int | None) -> dict[int, list]:
    """Each operation's records in the order they were written, the first `limit` of each."""
    records = DeletionRecord.objects.filter(operation_id__in=operation_ids)
    if limit is not None:
        number = Window(
            RowNumber(), partition_by=F("operation_id"), order_by=[F("deleted_at"), F("pk")]
        )
        records = records.annotate(number=number).filter(number__lte=limit)
    grouped: dict[int, list] = {}
    for record in records.order_by("deleted_at", "pk"):
        grouped.setdefault(record.operation_id, []).append(record)
    return grouped


def _operation_row(operation: Deletion, records: list[DeletionRecord]) -> HistoryRow:
    tags_of = {record.digest: tuple(record.tags) for record in records}
    selected = [Selected(d, tags_of.get(d, ())) for d in operation.selected]
    manifests = operation.deleted + operation.failed + operation.pending + operation.restored
    return HistoryRow(
        source=OPERATION,
        pk=operation.pk,
        at=operation.started_at,
        username=operation.username,
        registry=operation.registry,
        repository=operation.repository,
        state=operation.state,
        state_label=operation.get_state_display(),
        deleted=operation.deleted,
        failed=operation.failed,
        pending=operation.pending,
        restored=operation.restored,
        tags=operation.tag_count or 0,
        reclaimed_bytes=operation.reclaimed_bytes,
        waiting_for_collection=_waits(operation),
        collected_at=operation.collected_at,
        message=operation.message,
        selected=selected,
        records=records,
        records_more=max(0, manifests - len(records)),
        in_use_override={
            item["digest"]: item["in_use"]
            for item in operation.in_use_override
            if isinstance(item, dict) and "digest" in item
        },
    )


def _waits(operation: Deletion) -> bool:
    """The same test as `storage.waiting_for_collection`, for one operation."""
    return (
        operation.collected_at is None
        and operation.finished_at is not None
        and operation.reclaimed_bytes > 0
    )


def _record_row(record: DeletionRecord) -> HistoryRow:
    return HistoryRow(
        source=RECORD,
        pk=record.pk,
        at=record.deleted_at,
        username=record.username,
        registry=record.registry,
        repository=record.repository,
        state=record.state,
        state_label=record.get_state_display(),
        deleted=int(record.state == DeletionRecord.State.DONE),
        failed=int(record.state == DeletionRecord.State.FAILED),
        pending=int(record.state == DeletionRecord.State.PENDING),
        restored=int(record.state == DeletionRecord.State.RESTORED),
        tags=len(record.tags) if record.state == DeletionRecord.State.DONE else 0,
        reclaimed_bytes=record.reclaimed_bytes,
        waiting_for_collection=False,  # unknown: recorded before hubimages watched for it
        collected_at=None,
        message=record.message,
        selected=[Selected(record.digest, tuple(record.tags))],
        records=[record],
    )


# -- CSV -------------------------------------------------------------------------------------


def csv_rows(
    repository: str = "",
    registry: str = "",
    *,
    within: Q | None = None,
    deletion: int | None = None,
) -> Iterator[list]:
    """The history as CSV rows, one per manifest (an operation that deleted nothing has
    one row without a manifest), newest operation first; with `deletion`, that operation's
    alone. What to export is read once, so a deletion made meanwhile shifts nothing; the
    details are read in chunks."""
    yield list(CSV_HEADER)
    everything = list(entries(repository, registry, within=within, deletion=deletion))
    for start in range(0, len(everything), CSV_CHUNK):
        for row in rows(everything[start : start + CSV_CHUNK], every_record=True):
            yield from _csv_lines(row)


def _csv_lines(row: HistoryRow) -> Iterator[list]:
    operation = [
        row.pk if row.source == OPERATION else "",
        _time(row.at),
        row.username,
        row.registry,
        row.repository,
        row.state if row.source == OPERATION else "",
        " ".join(s.digest for s in row.selected) if row.source == OPERATION else "",
    ]
    collected = _time(row.collected_at)
    if not row.records:
        yield _inert(operation + ["", "", "", "", "", "", row.message, "", collected, "", "", ""])
    for record in row.records:
        uses = row.in_use_override.get(record.digest, [])
        yield _inert(
            operation
            + [
                record.digest,
                record.kind,
                " ".join(record.tags),
                record.size,
                record.reclaimed_bytes,
                record.state,
                record.message,
                _time(record.deleted_at),
                collected,
                _time(record.restored_at),
                record.restored_by,
                "; ".join(f"{use['source']}: {use['where']}" for use in uses),
            ]
        )


def _time(value: datetime | None) -> str:
    return iso(value) if value else ""


def _inert(line: list) -> list:
    """Text from people or the registry, made inert for spreadsheets: a cell that starts
    with `=`, `+`, `-`, `@` or a control character would be read as a formula."""
    return [
        f"'{value}" if isinstance(value, str) and value[:1] in FORMULA_STARTS else value
        for value in line
    ]
