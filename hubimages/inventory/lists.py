"""Query functions for the Image Management list (SPEC §2–3), computed in SQL."""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from datetime import datetime
from functools import reduce

from django.db import connection
from django.db.models import DateTimeField, F, OuterRef, Prefetch, Q, QuerySet, Subquery
from django.db.models.expressions import RawSQL
from django.db.models.functions import Lower
from django.db.models.lookups import IsNull

from hubimages.inuse import matching
from hubimages.inventory import status as statuses
from hubimages.inventory.status import stale_cutoff
from hubimages.lib.formatting import iso
from hubimages.models import IndexEntry, Manifest, Registry, Repository, Tag

FILTERS = ("all", "tagged", "untagged", "index", "image")
# Status is its own axis (the API's `status`, the list's Status filter): "" means any.
STATUSES = ("", statuses.ACTIVE, statuses.UNKNOWN, statuses.STALE)
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


def top_level(
    repository: Repository,
    query: ListQuery = ListQuery(),
    *,
    found: Search | None = None,
    among: list[int] | None = None,
) -> QuerySet[Manifest]:
    """The list's rows: every index, and every image no index of the repository holds.
    `found`: the query's search, if already resolved by `search`. `among`: ids of the
    list's rows (a sample) to keep only those of, read by primary key."""
    if among is None:
        rows = Manifest.objects.filter(repository=repository, is_top_level=True)
    else:
        rows = Manifest.objects.filter(pk__in=among)
    if query.filter == "tagged":
        rows = rows.filter(is_tagged=True)
    elif query.filter == "untagged":
        rows = rows.filter(is_tagged=False)
    elif query.filter == "index":
        rows = rows.filter(kind=Manifest.Kind.INDEX)
    elif query.filter == "image":
        rows = rows.filter(kind=Manifest.Kind.IMAGE)
    ordering = _ordering(query.sort)
    newest_pull_first = query.sort == "-last_pulled"
    if query.status == "stale" and newest_pull_first and connection.vendor == "postgresql":
        # Stale, newest pull first: "pulled before the cutoff or never" is one range of
        # an index in this very order (never pulled reads as -infinity), where the two
        # conditions of `stale_q` would walk past every recent pull to reach the first row.
        cutoff = stale_cutoff()
        rows = rows.alias(pulled_or_never=_PULLED_OR_NEVER).filter(
            pushed_at__lt=cutoff, pulled_or_never__lt=cutoff
        )
        ordering = [F("pulled_or_never").desc(), "-id"]
    elif query.status:
        rows = rows.filter(statuses.status_q(query.status))
    if query.search:
        rows = rows.filter((found or search(repository, query.search)).q)
    return rows.order_by(*ordering)


# The expression of the `manifest_*pulled_or_never` indexes (migration 0012), to the letter.
_PULLED_OR_NEVER = RawSQL(
    """COALESCE("hubimages_manifest"."last_pulled_at", '-infinity'::timestamptz)""",
    (),
    output_field=DateTimeField(),
)


# A search matching at most this many manifests is resolved to their ids first, so the
# page reads them by primary key instead of walking the sort index past every other row.
SEARCH_IDS_LIMIT = 2000


@dataclass(frozen=True)
class Search:
    """A search resolved once for a page and its count (`top_level`, `count_top_level`)."""

    q: Q
    broad: bool


def search(repository: Repository, text: str) -> Search:
    """Tag names by substring, any case; digests by prefix; a match on a child shows its
    index.

    Both databases find tags through a trigram index (`tag_matches`). A narrow search
    becomes the ids it matched (read by primary key, whatever the sort); a broad one a test
    each row takes while the page walks its sort index."""
    needle = text.lower()
    digest_prefix = needle if needle.startswith("sha256:") else f"sha256:{needle}"
    ids = _search_ids(repository.pk, text, digest_prefix)
    if ids is not None:
        return Search(Q(pk__in=ids), broad=False)
    # Each a query per row, through the index on the row's (or its children's) id: the
    # walk stops at a page's worth of rows. Asked as EXISTS, PostgreSQL would hash every
    # match in the database first; and the trigram index, asked once per row, would read
    # every tag the search matches each time.
    if connection.vendor == "postgresql" and text.isascii():
        tagged = Tag.objects.alias(lowered=Lower("name")).filter(lowered__contains=needle)
    else:
        tagged = Tag.objects.filter(tag_contains(text))
    found = [
        _any(tagged.filter(manifest=OuterRef("pk"))),
        _any(tagged.filter(manifest__parent_entries__index=OuterRef("pk"))),
    ]
    if _DIGEST_PREFIX.match(digest_prefix):
        children = IndexEntry.objects.filter(index=OuterRef("pk"))
        found = [
            Q(digest__startswith=digest_prefix),
            *found,
            _any(children.filter(child__digest__startswith=digest_prefix)),
        ]
    return Search(reduce(operator.or_, found), broad=True)


# What a digest can start with (an OCI registry's digests are `sha256:` and lowercase hex);
# other text is no digest's prefix, and is not looked for among them.
_DIGEST_PREFIX = re.compile(r"^sha256:[0-9a-f]*$")


def _any(rows: QuerySet) -> Q:
    """Whether `rows` (correlated to the outer row) holds a row: a subquery PostgreSQL
    runs for each row it reaches, where it would hash a whole EXISTS ahead of the walk."""
    return Q(IsNull(Subquery(rows.order_by().values("pk")[:1]), False))


def _search_ids(repository_id: int, text: str, digest_prefix: str) -> frozenset[int] | None:
    """The manifests a search matches and their indexes, or None past SEARCH_IDS_LIMIT."""
    by_tag = Tag.objects.filter(repository_id=repository_id).filter(tag_matches(text)).order_by()
    ids = list(by_tag.values_list("manifest_id", flat=True)[: SEARCH_IDS_LIMIT + 1])
    if _DIGEST_PREFIX.match(digest_prefix):
        by_digest = Manifest.objects.filter(
            repository_id=repository_id, digest__startswith=digest_prefix
        )
        ids += by_digest.values_list("pk", flat=True)[: SEARCH_IDS_LIMIT + 1]
    if len(ids) > SEARCH_IDS_LIMIT:
        return None
    parents = IndexEntry.objects.filter(child_id__in=ids).values_list("index_id", flat=True)
    return frozenset([*ids, *parents])


# The fewest characters a trigram index can look up; a shorter term is read row by row.
TRIGRAM = 3


def tag_contains(text: str) -> Q:
    """Tag names holding `text`, in any case, wildcards and quotes taken literally. Tag
    names are ASCII (the OCI grammar), so other text matches none: no database's own case
    folding (PostgreSQL's upper case of ſ is S, of ı is I) can then make the two differ."""
    if not text.isascii():
        return Q(pk__in=[])
    return Q(name__icontains=text)


def tag_matches(text: str) -> Q:
    """`tag_contains`, found through an index when `text` has TRIGRAM characters or more:
    PostgreSQL's `tag_name_trgm` (pg_trgm, migration 0011) answers `icontains` itself;
    on SQLite the FTS5 trigram table `hubimages_tag_search` (migration 0026) is asked for
    the phrase, and `icontains` checks what it finds. Shorter terms are read from the rows
    the rest of the query narrows to (a repository's tags, a manifest's)."""
    matches = tag_contains(text)
    if connection.vendor == "sqlite" and text.isascii() and len(text) >= TRIGRAM:
        phrase = '"' + text.replace('"', '""') + '"'
        matches &= Q(pk__in=RawSQL(_FTS_PHRASE, (phrase,)))
    return matches


_FTS_PHRASE = "SELECT rowid FROM hubimages_tag_search WHERE hubimages_tag_search MATCH %s"


# Counted exactly up to this many rows; past it, from the stored counts or an estimate.
COUNT_EXACTLY_UP_TO = 1000
# A status or a broad search estimated to keep more rows than this is not counted at all.
ESTIMATED_FROM = 10 * COUNT_EXACTLY_UP_TO
# Rows read to estimate the share of a big list that a status or a search keeps.
ESTIMATE_SAMPLE = 500


@dataclass(frozen=True)
class ListCount:
    value: int
    estimated: bool = False


def count_top_level(
    repository: Repository, query: ListQuery, *, found: Search | None = None
) -> ListCount:
    """How many rows `top_level(repository, query)` holds, without counting a million.

    A filter alone is answered by the counts `sync.rollups` keeps. With a status or a
    search, the count is first estimated from a sample of the filter's rows taken in
    digest order (digests are random, so the sample is not skewed towards old or new
    pushes); an estimate past ESTIMATED_FROM is shown rounded, and says so. Below it (or
    for a narrow search, a list of ids), rows are counted, up to COUNT_EXACTLY_UP_TO."""
    plain = not query.search and not query.status
    if plain and query.filter in repository.list_counts:
        return ListCount(repository.list_counts[query.filter])
    if query.search and found is None:
        found = search(repository, query.search)
    rows = top_level(repository, query, found=found).order_by()
    if plain:
        return ListCount(rows.count())
    narrow = found is not None and not found.broad
    base = repository.list_counts.get(query.filter)
    if not narrow and base is not None and base > ESTIMATED_FROM:
        estimate = _estimate(repository, query, found, base)
        if estimate > ESTIMATED_FROM:
            return ListCount(_round(estimate), estimated=True)
    exact = rows.values("pk")[: COUNT_EXACTLY_UP_TO + 1].count()
    if exact <= COUNT_EXACTLY_UP_TO:
        return ListCount(exact)
    estimate = _estimate(repository, query, found, base or exact)
    return ListCount(_round(max(estimate, COUNT_EXACTLY_UP_TO + 1)), estimated=True)


def _estimate(repository: Repository, query: ListQuery, found: Search | None, base: int) -> int:
    """`base` (the filter's count) × the share of a sample of the filter's rows kept. The
    sample is read by primary key: asked with the repository's conditions too, PostgreSQL
    would AND a bitmap of every row of the repository with it."""
    sample = list(
        top_level(repository, ListQuery(filter=query.filter))
        .order_by("digest")
        .values_list("pk", flat=True)[:ESTIMATE_SAMPLE]
    )
    if not sample:
        return 0
    kept = top_level(repository, query, found=found, among=sample).order_by().count()
    return round(base * kept / len(sample))


def _round(value: int) -> int:
    """Two significant figures: 183,456 -> 180,000."""
    digits = len(str(value)) - 2
    return round(value, -digits) if digits > 0 else value


def _ordering(sort: str) -> list:
    """Never-pulled items last, either way. Only Last pulled can be NULL: asking NULLS LAST
    of the other columns would keep PostgreSQL from reading their indexes backwards."""
    descending = sort.startswith("-")
    field = SORT_FIELDS[sort.lstrip("-")]
    nulls_last = True if field == "last_pulled_at" else None
    expression = (
        F(field).desc(nulls_last=nulls_last) if descending else F(field).asc(nulls_last=nulls_last)
    )
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


def rows_as_dicts(rows, registry: Registry, now: datetime | None = None) -> list[dict]:
    """`row_as_dict` of each row (loaded `with_details`), what the live in-use reports say
    of them read in one go."""
    rows = list(rows)
    matching.annotate(registry.pk, rows)
    statuses.annotate(rows, now)
    return [row_as_dict(row, now, registry=registry.name) for row in rows]


def row_as_dict(row: Manifest, now: datetime | None = None, *, registry: str) -> dict:
    """A list row in the stable JSON shape scripts rely on (`list_images --json`), naming
    its registry (SPEC §11), and where live in-use reports say it runs (SPEC §13): its own
    digest, its index's or one of its children's (`in_use`, each source once with
    the first of its places)."""
    if not hasattr(row, "in_use"):
        matching.annotate(row.repository.registry_id, [row])
    if not hasattr(row, "status"):
        statuses.annotate([row], now)
    return {
        "registry": registry,
        "digest": row.digest,
        "kind": row.kind,
        "media_type": row.media_type,
        "tags": [tag.name for tag in row.tags.all()],
        "platforms": platforms_of(row),
        "size": row.total_size,
        "last_pushed": iso(row.pushed_at),
        "last_pushed_estimated": row.pushed_at_estimated,
        "last_pulled": iso(row.last_pulled_at),
        "stale": statuses.status_of(row, now) == statuses.STALE,
        "status": statuses.status_of(row, now),
        "first_seen": iso(row.first_seen_at),
        "in_use": row.in_use.as_list(),
        "children": [
            {
                "digest": child.digest,
                "kind": child.kind,
                "platform": platform,
                "size": child.total_size,
                "tags": [tag.name for tag in child.tags.all()],
                "status": statuses.status_of(child, now),
            }
            for child, platform in children_of(row)
        ],
    }
