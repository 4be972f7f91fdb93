"""Derived columns the list filters and sorts on, and the list's counts per filter.

`refresh` recomputes a whole repository (a sync, which may have changed anything);
`changing` keeps them right through a change that touches a few manifests (a registry
delete notification, a deletion, stored pushes), at a cost that depends on those manifests
and their neighbours only, never on the repository's size."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager

from django.db import transaction
from django.db.models import (
    Case,
    Count,
    Exists,
    F,
    Max,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
    When,
)
from django.db.models.functions import Coalesce

from hubimages.models import Blob, IndexEntry, Manifest, ManifestBlob, PushedFrom, Repository, Tag

COUNT_KEYS = ("all", "tagged", "untagged", "index", "image")
CHUNK = 1000  # ids per IN (...) list


def refresh(repository: Repository) -> None:
    """Recompute subjects, top-level, tagged, index sizes, estimated push times and the
    list's counts of the whole repository.

    A handful of UPDATE statements, each over every manifest of the repository: what a
    sync calls after writing what it read. Changes to a few manifests use `changing`."""
    with transaction.atomic():
        _lock(repository.pk)
        _recompute(Manifest.objects.filter(repository=repository), repository.pk)
        Repository.objects.filter(pk=repository.pk).update(list_counts=list_counts(repository))


class Change:
    """A change in progress; see `changing`."""

    def __init__(self, repository_id: int, known: set[int]) -> None:
        self.repository_id = repository_id
        self.known = known  # found before the change, counted as they stood then
        self.new: set[int] = set()

    def inserted(self, ids: Iterable[int]) -> None:
        """Manifests the change inserted: they and their neighbours are recomputed when
        it ends."""
        self.new |= set(ids)


@contextmanager
def changing(
    repository_id: int, ids: Collection[int] = (), *, digests: Collection[str] = ()
) -> Iterator[Change]:
    """Keep the repository's derived columns and per-filter counts right through a change
    of a few manifests, in the caller's transaction.

    Before the change, `ids` and `digests` (the manifests about to be deleted, re-tagged or
    stored, present or not yet) and their neighbourhood (their indexes and children, their
    referrers, linked or waiting for their digest) are found and counted: deleting a
    manifest takes its index entries with it. Manifests the change inserts are given to
    `Change.inserted`. Afterwards only those rows are computed again, and the counts move
    by the difference, so a change costs the same in a repository of a million manifests
    as in one of a thousand. The repository's row is locked first, so two changes of one
    repository adjust its counts one after the other. (`tests/test_rollups.py` checks
    every column and count against `refresh`.)"""
    with transaction.atomic():
        counts = _lock(repository_id)
        seeds = set(ids) | _ids_of(repository_id, digests)
        known = _neighbours(repository_id, seeds) | _waiting_for(repository_id, digests)
        before = _counts(known)
        change = Change(repository_id, known)
        yield change
        new = _neighbours(repository_id, change.new)
        late = new - known - change.new  # found only now: as they stood, unchanged
        before = _add(before, _counts(late))
        touched = known | new
        _recompute(Manifest.objects.filter(pk__in=touched), repository_id)
        after = _counts(touched)
        if set(COUNT_KEYS) <= set(counts):
            counts = {key: counts[key] + after[key] - before[key] for key in COUNT_KEYS}
        else:  # never counted yet: count once
            counts = list_counts(Repository(pk=repository_id))
        Repository.objects.filter(pk=repository_id).update(list_counts=counts)


def unused_blobs(blob_ids: Collection[int]) -> QuerySet[Blob]:
    """Those of these blobs no manifest uses any more. NOT EXISTS stops at a blob's first
    link; a LEFT JOIN would read every link of a base layer a million images share."""
    used = ManifestBlob.objects.filter(blob_id=OuterRef("pk"))
    return Blob.objects.filter(pk__in=list(blob_ids)).filter(~Exists(used))


def list_counts(repository: Repository) -> dict[str, int]:
    """The list's top-level items per filter (`inventory.FILTERS`), in one query."""
    return _count(Manifest.objects.filter(repository=repository, is_top_level=True))


def _count(top: QuerySet[Manifest]) -> dict[str, int]:
    return top.aggregate(
        all=Count("pk"),
        tagged=Count("pk", filter=Q(is_tagged=True)),
        untagged=Count("pk", filter=Q(is_tagged=False)),
        index=Count("pk", filter=Q(kind=Manifest.Kind.INDEX)),
        image=Count("pk", filter=Q(kind=Manifest.Kind.IMAGE)),
    )


def _counts(ids: set[int]) -> dict[str, int]:
    total = dict.fromkeys(COUNT_KEYS, 0)
    for chunk in _chunks(ids):
        total = _add(total, _count(Manifest.objects.filter(pk__in=chunk, is_top_level=True)))
    return total


def _add(one: dict[str, int], other: dict[str, int]) -> dict[str, int]:
    return {key: one[key] + other[key] for key in COUNT_KEYS}


def _lock(repository_id: int) -> dict:
    """Lock the repository's row until the transaction ends; its stored counts."""
    return (
        Repository.objects.select_for_update()
        .filter(pk=repository_id)
        .values_list("list_counts", flat=True)
        .first()
        or {}
    )


def _neighbours(repository_id: int, ids: set[int]) -> set[int]:
    """`ids` and the manifests whose derived columns depend on theirs: their children
    (top-level when no other index holds them), their indexes (sizes, estimated push
    times) and those indexes' other children (attestations take their push time), their
    referrers (by link, or waiting for their subject's digest). Each found by an index."""
    found = set(ids)
    if not ids:
        return found
    parents: set[int] = set()
    digests: set[str] = set()
    for chunk in _chunks(ids):
        entries = IndexEntry.objects.filter(Q(index_id__in=chunk) | Q(child_id__in=chunk))
        for index_id, child_id in entries.values_list("index_id", "child_id"):
            found |= {index_id, child_id}
            if child_id in ids:
                parents.add(index_id)
        found |= set(Manifest.objects.filter(subject_id__in=chunk).values_list("pk", flat=True))
        digests |= set(Manifest.objects.filter(pk__in=chunk).values_list("digest", flat=True))
    for chunk in _chunks(parents):
        found |= set(
            IndexEntry.objects.filter(index_id__in=chunk).values_list("child_id", flat=True)
        )
    return found | _waiting_for(repository_id, digests)


def _waiting_for(repository_id: int, digests: Collection[str]) -> set[int]:
    """Referrers whose subject has one of these digests, linked to it or not (yet)."""
    found: set[int] = set()
    for chunk in _chunks(digests):
        # `exclude` repeats the partial index's condition, so SQLite uses it too.
        referrers = Manifest.objects.filter(repository_id=repository_id, subject_digest__in=chunk)
        found |= set(referrers.exclude(subject_digest="").values_list("pk", flat=True))
    return found


def _ids_of(repository_id: int, digests: Collection[str]) -> set[int]:
    ids: set[int] = set()
    for chunk in _chunks(digests):
        ids |= set(
            Manifest.objects.filter(repository_id=repository_id, digest__in=chunk).values_list(
                "pk", flat=True
            )
        )
    return ids


def _chunks(items: Collection) -> Iterator[list]:
    items = list(items)
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def _recompute(manifests: QuerySet[Manifest], repository_id: int) -> None:
    """The derived columns of `manifests` (of one repository), in dependency order: the
    subject links, then top-level and tagged, then index sizes and push times, then the
    attestations' push times, which are their indexes'."""
    _link_subjects(repository_id, manifests)
    manifests.update(
        is_tagged=Exists(Tag.objects.filter(manifest=OuterRef("pk"))),
        is_top_level=~Exists(IndexEntry.objects.filter(child=OuterRef("pk")))
        & Q(subject__isnull=True),
    )
    indexes = manifests.filter(kind__in=[Manifest.Kind.INDEX, Manifest.Kind.ARTIFACT])
    indexes.filter(entries__isnull=False).update(total_size=Coalesce(_children_size(), Value(0)))
    newest_child_build = (
        IndexEntry.objects.filter(index=OuterRef("pk"))
        .values("index")
        .annotate(newest=Max("child__created_at"))
        .values("newest")
    )
    built_child = IndexEntry.objects.filter(index=OuterRef("pk"), child__created_at__isnull=False)
    indexes.filter(pushed_at_estimated=True, created_at__isnull=True).update(
        pushed_at=Coalesce(Subquery(newest_child_build), F("first_seen_at")),
        pushed_at_source=Case(
            When(Exists(built_child), then=Value(PushedFrom.BUILD)),
            default=Value(PushedFrom.FIRST_SEEN),
        ),
    )
    # Attestations carry no build time of their own: they were pushed with their index.
    latest_index = IndexEntry.objects.filter(child=OuterRef("pk")).order_by(
        "-index__pushed_at", "-index_id"
    )
    manifests.filter(
        kind=Manifest.Kind.ATTESTATION, pushed_at_estimated=True, created_at__isnull=True
    ).update(
        pushed_at=Coalesce(
            Subquery(latest_index.values("index__pushed_at")[:1]), F("first_seen_at")
        ),
        pushed_at_source=Coalesce(
            Subquery(latest_index.values("index__pushed_at_source")[:1]),
            Value(PushedFrom.FIRST_SEEN),
        ),
    )


def _children_size() -> Subquery:
    """The distinct config and layer blobs of an index's children, each counted once."""
    return distinct_blob_size(
        ManifestBlob.objects.filter(manifest__parent_entries__index=OuterRef(OuterRef("pk")))
    )


IMAGE_CONTENT = (ManifestBlob.Role.CONFIG, ManifestBlob.Role.LAYER)


def distinct_blob_size(links, roles: Collection[str] | None = IMAGE_CONTENT) -> Subquery:
    """The total size of the distinct blobs these ManifestBlob rows name: a layer shared by
    several manifests counts once, as the registry stores it once.

    By default the config and layer blobs, an image's size (SPEC §2); `roles=None` adds
    the manifests' own bytes, which the registry stores as blobs too (a repository's
    storage, which its garbage collector frees)."""
    blobs = links if roles is None else links.filter(role__in=list(roles))
    total = (
        Blob.objects.filter(pk__in=blobs.values("blob_id"))
        .annotate(group=Value(1))
        .values("group")
        .annotate(total=Sum("size"))
        .values("total")
    )
    return Subquery(total)


def _link_subjects(repository_id: int, manifests: QuerySet[Manifest]) -> None:
    subject = Manifest.objects.filter(
        repository_id=repository_id, digest=OuterRef("subject_digest")
    ).values("pk")[:1]
    manifests.exclude(subject_digest="").update(subject=Subquery(subject))
