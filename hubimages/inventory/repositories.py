"""The Repositories page's figures: per repository and for all of them together."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, Exists, F, Max, OuterRef, Q, QuerySet, Subquery, Sum, Value
from django.db.models.functions import Coalesce

from hubimages.inventory.status import stale_q
from hubimages.models import Blob, Manifest, ManifestBlob, Registry, Repository, Tag
from hubimages.sync import rollups
from registry import media


def repository_overview(
    search: str = "",
    sort: str = "name",
    registry: Registry | None = None,
    *,
    within: Q | None = None,
) -> QuerySet[Repository]:
    """Repositories (of `registry`, or of every registry; only those `within` lets
    through, when given) with their counts, size, last push and stale share: one query."""
    top = Manifest.objects.filter(repository=OuterRef("pk"), is_top_level=True)
    rows = _repositories(registry, within).select_related("registry")
    rows = rows.annotate(
        tag_count=_count(pushed_tags(Tag.objects.filter(repository=OuterRef("pk")))),
        image_count=_count(top),
        stale_count=_count(top.filter(stale_q())),
        total_size=repository_stored_size(),
        last_pushed=_aggregate(top, Max("pushed_at")),
    )
    if search:
        rows = rows.filter(name__icontains=search)
    return rows.order_by(*REPOSITORY_SORTS.get(sort, REPOSITORY_SORTS["name"]))


def repository_stored_size() -> Coalesce:
    """A repository's storage as the registry keeps it, for `Repository` rows: every blob
    its manifests use (layers, configs, their own bytes), a base layer shared by many of
    its images once."""
    links = ManifestBlob.objects.filter(manifest__repository=OuterRef(OuterRef("pk")))
    return Coalesce(rollups.distinct_blob_size(links, roles=None), Value(0))


def pushed_tags(tags: QuerySet[Tag]) -> QuerySet[Tag]:
    """Tags people pushed: not the referrer-schema tags (`sha256-<hex>`, `.sig`, `.att`,
    `.sbom`) that signing tools and registries without a referrers API add. (The prefix
    test first: SQLite runs its regular expressions in Python, only for those tags.)"""
    return tags.exclude(Q(name__startswith="sha256-") & Q(name__regex=media.REFERRER_TAG_PATTERN))


@dataclass(frozen=True)
class Totals:
    """Every repository together, for the Repositories page's last row."""

    repositories: int
    tags: int
    images: int
    stale: int
    stored_bytes: int


def repository_totals(registry: Registry | None = None, *, within: Q | None = None) -> Totals:
    """Counts over all repositories (of `registry`, or of every registry; only those
    `within` lets through, when given), and their storage with every blob counted once per
    registry, however many repositories share it (so less than the sum of the rows). Four
    queries."""
    repositories = _repositories(registry, within)
    manifests, tags = Manifest.objects.all(), Tag.objects.all()
    if registry is not None:
        manifests = manifests.filter(repository__registry=registry)
        tags = tags.filter(repository__registry=registry)
    if within is not None:
        manifests = manifests.filter(repository__in=Repository.objects.filter(within))
        tags = tags.filter(repository__in=Repository.objects.filter(within))
    items = manifests.filter(is_top_level=True).aggregate(
        images=Count("pk"), stale=Count("pk", filter=stale_q())
    )
    return Totals(
        repositories=repositories.count(),
        tags=pushed_tags(tags.all()).count(),
        images=items["images"],
        stale=items["stale"],
        stored_bytes=stored_bytes(registry, within=within),
    )


def _repositories(registry: Registry | None, within: Q | None) -> QuerySet[Repository]:
    rows = Repository.objects.all()
    if registry is not None:
        rows = rows.filter(registry=registry)
    return rows.filter(within) if within is not None else rows


def stored_bytes(registry: Registry | None = None, *, within: Q | None = None) -> int:
    """What the registry (or every registry) stores for the manifests hubimages knows:
    every blob they use (layers, configs, the manifests' own bytes), once per registry;
    with `within`, only the blobs of the repositories it lets through. One query."""
    links = ManifestBlob.objects.filter(blob=OuterRef("pk"))
    if within is not None:
        links = links.filter(manifest__repository__in=Repository.objects.filter(within))
    linked = Blob.objects.filter(Exists(links))
    if registry is not None:
        linked = linked.filter(registry=registry)
    return linked.aggregate(total=Sum("size"))["total"] or 0


def _count(rows: QuerySet) -> Coalesce:
    return Coalesce(_aggregate(rows, Count("pk")), Value(0))


def _aggregate(rows: QuerySet, aggregate) -> Subquery:
    return Subquery(
        rows.order_by().annotate(group=Value(1)).values("group").annotate(v=aggregate).values("v")
    )


REPOSITORY_SORTS = {
    "name": ["name", "registry__name"],
    "-name": ["-name", "-registry__name"],
    "last_pushed": [F("last_pushed").asc(nulls_last=True), "name"],
    "-last_pushed": [F("last_pushed").desc(nulls_last=True), "name"],
    "size": ["total_size", "name"],
    "-size": ["-total_size", "name"],
}
