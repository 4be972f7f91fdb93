"""Query functions for the Image Management list (SPEC §2–3), computed in SQL."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from dateutil.relativedelta import relativedelta
from django.conf import settings
from django.db.models import (
    Count,
    Exists,
    F,
    Max,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
)
from django.db.models.functions import Coalesce
from django.utils import timezone

from hubimages import rollups
from hubimages.formatting import iso
from hubimages.models import Blob, IndexEntry, Manifest, ManifestBlob, Repository, Tag
from registry import media

FILTERS = ("all", "tagged", "untagged", "index", "image")
# Status is its own axis (the API's `status`, the list's Stale filter): "" means any.
STATUSES = ("", "active", "stale")
SORT_FIELDS = {"size": "total_size", "last_pushed": "pushed_at", "last_pulled": "last_pulled_at"}
SORTS = tuple(SORT_FIELDS) + tuple(f"-{key}" for key in SORT_FIELDS)
DEFAULT_FILTER = "all"
DEFAULT_SORT = "-last_pushed"


@dataclass(frozen=True)
class ListQuery:
    """The list's search, filter and sort, checked against the allowed values."""

    search: str = ""
    filter: str = DEFAULT_FILTER
    sort: str = DEFAULT_SORT
    status: str = ""

    @classmethod
    def from_params(cls, params) -> ListQuery:
        search = (params.get("search") or params.get("q") or "").strip()[:200]
        filter_ = params.get("filter", DEFAULT_FILTER)
        sort = params.get("sort", DEFAULT_SORT)
        status = params.get("status", "")
        return cls(
            search=search,
            filter=filter_ if filter_ in FILTERS else DEFAULT_FILTER,
            sort=sort if sort in SORTS else DEFAULT_SORT,
            status=status if status in STATUSES else "",
        )


def stale_cutoff(now: datetime | None = None) -> datetime:
    """Activity before this instant is stale: calendar months, as SPEC §2 says."""
    return (now or timezone.now()) - relativedelta(months=settings.STALE_AFTER_MONTHS)


def is_stale(manifest: Manifest, now: datetime | None = None) -> bool:
    return last_activity(manifest) < stale_cutoff(now)


def last_activity(manifest: Manifest) -> datetime:
    if manifest.last_pulled_at and manifest.last_pulled_at > manifest.pushed_at:
        return manifest.last_pulled_at
    return manifest.pushed_at


def top_level(repository: Repository, query: ListQuery = ListQuery()) -> QuerySet[Manifest]:
    """The list's rows: every index, and every image no index of the repository holds."""
    rows = Manifest.objects.filter(repository=repository, is_top_level=True)
    if query.filter == "tagged":
        rows = rows.filter(is_tagged=True)
    elif query.filter == "untagged":
        rows = rows.filter(is_tagged=False)
    elif query.filter == "index":
        rows = rows.filter(kind=Manifest.Kind.INDEX)
    elif query.filter == "image":
        rows = rows.filter(kind=Manifest.Kind.IMAGE)
    if query.status == "stale":
        rows = rows.filter(stale_q())
    elif query.status == "active":
        rows = rows.exclude(stale_q())
    if query.search:
        rows = rows.filter(_search(repository, query.search))
    return rows.order_by(*_ordering(query.sort))


def _search(repository: Repository, text: str) -> Q:
    """Tag names by substring, digests by prefix; a match on a child shows its index."""
    needle = text.lower()
    digest_prefix = needle if needle.startswith("sha256:") else f"sha256:{needle}"
    own = Q(digest__startswith=digest_prefix) | Exists(
        Tag.objects.filter(manifest=OuterRef("pk"), name__icontains=text)
    )
    child_matches = IndexEntry.objects.filter(index=OuterRef("pk")).filter(
        Q(child__digest__startswith=digest_prefix)
        | Exists(Tag.objects.filter(manifest=OuterRef("child"), name__icontains=text))
    )
    return own | Exists(child_matches)


def _ordering(sort: str) -> list:
    descending = sort.startswith("-")
    field = SORT_FIELDS[sort.lstrip("-")]
    expression = F(field).desc(nulls_last=True) if descending else F(field).asc(nulls_last=True)
    return [expression, "-id" if descending else "id"]


# Config history, labels and annotations can be large and no list row shows them.
_HEAVY_FIELDS = ("history", "labels", "annotations")


def with_details(rows: QuerySet[Manifest]) -> QuerySet[Manifest]:
    """Prefetch what a row shows (tags, children with their tags, referrers): a fixed
    number of queries whatever the page size."""
    child_entries = (
        IndexEntry.objects.select_related("child")
        .defer(*(f"child__{name}" for name in _HEAVY_FIELDS))
        .prefetch_related(Prefetch("child__tags", queryset=Tag.objects.order_by("name")))
    )
    referrers = (
        Manifest.objects.defer(*_HEAVY_FIELDS)
        .prefetch_related(Prefetch("tags", queryset=Tag.objects.order_by("name")))
        .order_by("pushed_at", "id")
    )
    return rows.defer(*_HEAVY_FIELDS).prefetch_related(
        Prefetch("tags", queryset=Tag.objects.order_by("name")),
        Prefetch("entries", queryset=child_entries),
        Prefetch("referrers", queryset=referrers),
    )


def matching_children(manifest: Manifest, text: str) -> set[str]:
    """The digests of an index's children and referrers that a search matches by themselves
    (digest prefix, tag substring), from the prefetched rows: the list opens the index on
    them, so a search for a platform image's digest shows where it lives."""
    if not text:
        return set()
    needle = text.lower()
    prefix = needle if needle.startswith("sha256:") else f"sha256:{needle}"
    return {
        child.digest
        for child, _ in children_of(manifest)
        if child.digest.startswith(prefix)
        or any(needle in t.name.lower() for t in child.tags.all())
    }


def platforms_of(manifest: Manifest) -> list[str]:
    """An image's own platform; an index's images' platforms (attestations left out).
    Uses the prefetched entries."""
    if manifest.kind == Manifest.Kind.INDEX:
        seen: list[str] = []
        for entry in manifest.entries.all():
            if entry.child.kind == Manifest.Kind.ATTESTATION:
                continue
            platform = entry.child_platform
            if platform and platform not in seen:
                seen.append(platform)
        return seen
    return [manifest.platform] if manifest.platform else []


def children_of(manifest: Manifest) -> list[tuple[Manifest, str]]:
    """(child, platform) for an index's entries, then the manifest's referrers."""
    children = [(entry.child, entry.child_platform) for entry in manifest.entries.all()]
    children += [(referrer, referrer.platform) for referrer in manifest.referrers.all()]
    return children


def repository_overview(search: str = "", sort: str = "name") -> QuerySet[Repository]:
    """Repositories with their counts, size, last push and stale share: one query."""
    top = Manifest.objects.filter(repository=OuterRef("pk"), is_top_level=True)
    rows = Repository.objects.annotate(
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


def repository_totals() -> Totals:
    """Counts over all repositories, and their storage with every blob counted once, however
    many repositories share it (so less than the sum of the rows). Four queries."""
    items = Manifest.objects.filter(is_top_level=True).aggregate(
        images=Count("pk"), stale=Count("pk", filter=stale_q())
    )
    return Totals(
        repositories=Repository.objects.count(),
        tags=pushed_tags(Tag.objects.all()).count(),
        images=items["images"],
        stale=items["stale"],
        stored_bytes=stored_bytes(),
    )


def stored_bytes() -> int:
    """What the registry stores for the manifests hubimages knows: every blob they use
    (layers, configs, the manifests' own bytes), once. One query."""
    linked = Blob.objects.filter(Exists(ManifestBlob.objects.filter(blob=OuterRef("pk"))))
    return linked.aggregate(total=Sum("size"))["total"] or 0


def stale_q(now: datetime | None = None) -> Q:
    """Last activity (the later of last pushed and last pulled) before the cutoff."""
    cutoff = stale_cutoff(now)
    return Q(pushed_at__lt=cutoff) & (Q(last_pulled_at__isnull=True) | Q(last_pulled_at__lt=cutoff))


def _count(rows: QuerySet) -> Coalesce:
    return Coalesce(_aggregate(rows, Count("pk")), Value(0))


def _aggregate(rows: QuerySet, aggregate) -> Subquery:
    return Subquery(
        rows.order_by().annotate(group=Value(1)).values("group").annotate(v=aggregate).values("v")
    )


REPOSITORY_SORTS = {
    "name": ["name"],
    "-name": ["-name"],
    "last_pushed": [F("last_pushed").asc(nulls_last=True), "name"],
    "-last_pushed": [F("last_pushed").desc(nulls_last=True), "name"],
    "size": ["total_size", "name"],
    "-size": ["-total_size", "name"],
}


def row_as_dict(row: Manifest, now: datetime | None = None) -> dict:
    """A list row in the stable JSON shape scripts rely on (`list_images --json`)."""
    return {
        "digest": row.digest,
        "kind": row.kind,
        "media_type": row.media_type,
        "tags": [tag.name for tag in row.tags.all()],
        "platforms": platforms_of(row),
        "size": row.total_size,
        "last_pushed": iso(row.pushed_at),
        "last_pushed_estimated": row.pushed_at_estimated,
        "last_pulled": iso(row.last_pulled_at),
        "stale": is_stale(row, now),
        "children": [
            {
                "digest": child.digest,
                "kind": child.kind,
                "platform": platform,
                "size": child.total_size,
                "tags": [tag.name for tag in child.tags.all()],
            }
            for child, platform in children_of(row)
        ],
    }


# -- one manifest (the Image details page) ----------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """A layer with the build step that made it (None for squashed or hand-made images)."""

    position: int
    digest: str
    size: int
    media_type: str
    created_by: str | None


def manifest_detail(repository: Repository, digest: str) -> Manifest:
    """One manifest with everything its page shows, in a fixed number of queries.

    Raises Manifest.DoesNotExist."""
    by_name = Prefetch("tags", queryset=Tag.objects.order_by("name"))
    child_entries = IndexEntry.objects.select_related("child").prefetch_related(
        Prefetch("child__tags", queryset=Tag.objects.order_by("name"))
    )
    return (
        Manifest.objects.select_related("repository", "subject")
        .prefetch_related(
            by_name,
            Prefetch("entries", queryset=child_entries),
            Prefetch(
                "blob_links",
                queryset=ManifestBlob.objects.select_related("blob").order_by("role", "position"),
            ),
            Prefetch(
                "referrers",
                queryset=Manifest.objects.prefetch_related(by_name).order_by("pushed_at", "id"),
            ),
            Prefetch("parent_entries", queryset=IndexEntry.objects.select_related("index")),
        )
        .get(repository=repository, digest=digest)
    )


def layers_of(manifest: Manifest) -> list[Layer]:
    """Layers in order, each paired with its `created_by` line: history entries marked
    `empty_layer` (ENV, CMD…) made no layer, the others map onto the layers in order.
    Uses the blob links prefetched by `manifest_detail`."""
    producing = [
        entry
        for entry in manifest.history
        if isinstance(entry, dict) and not entry.get("empty_layer")
    ]
    layers = [link for link in manifest.blob_links.all() if link.role == ManifestBlob.Role.LAYER]
    layers.sort(key=lambda link: link.position)
    return [
        Layer(
            position=i + 1,
            digest=link.blob.digest,
            size=link.blob.size,
            media_type=link.blob.media_type,
            created_by=_created_by(producing[i]) if i < len(producing) else None,
        )
        for i, link in enumerate(layers)
    ]


def layer_users(manifest: Manifest) -> dict[str, int]:
    """Layer digest -> how many other manifests, in any repository, use that layer too.
    One query; a layer missing from the answer is this manifest's alone."""
    layer_ids = [link.blob_id for link in manifest.blob_links.all() if link.role == "layer"]
    rows = (
        ManifestBlob.objects.filter(blob_id__in=layer_ids)
        .exclude(manifest_id=manifest.pk)
        .values("blob__digest")
        .annotate(users=Count("manifest_id", distinct=True))
        .values_list("blob__digest", "users")
    )
    return dict(rows)


def _created_by(entry: dict) -> str | None:
    value = entry.get("created_by")
    return value if isinstance(value, str) and value else None
