"""Which items the live in-use reports name (SPEC §13), for the pages, the API, the
planner and retention.

An item is in use when a live report names its digest, its index's digest or one of its
children's digests, on its registry. A report is live while it is younger than its time to
live, by the database's clock (every host agrees on it).

Cheap by construction: the live sources are a handful of rows read once; references are
counted through their (registry, digest, source, place) index, for the digests asked about
only, and each digest brings back how many places name it per source and the first of
them, never all (a base image may run in ten thousand pods): one grouped query read from
the index alone. With no live report at all, one query.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Count, Min
from django.db.models.functions import Now

from hubimages.lib.formatting import ago, plural
from hubimages.lib.queries import as_parameter
from hubimages.models import IndexEntry, InUseReference, InUseSource, Manifest

PLACE_CHARACTERS = 80  # a place in a reason, clipped in the middle


@dataclass(frozen=True)
class SourceUse:
    """Where one source runs an item: `count` places, the first of them (by name) `place`."""

    source: str
    count: int
    place: str

    @property
    def more(self) -> int:
        return max(0, self.count - 1)


@dataclass(frozen=True)
class InUse:
    """What the live reports say of one item, source by source."""

    sources: tuple[SourceUse, ...]

    def __bool__(self) -> bool:
        return bool(self.sources)

    def reason(self) -> str:
        """`in use by prod: prod/default/pod/api-7d9f and 2 more places; by ci: ci/job-4`."""
        parts = []
        for use in self.sources:
            places = _clip(use.place) or "(no place given)"
            if use.more:
                places += f" and {plural(use.more, 'more place')}"
            parts.append(f"{use.source}: {places}")
        return "in use by " + "; by ".join(parts)

    def as_list(self) -> list[dict[str, str]]:
        """`[{"source", "where"}]`, a source and its first place each, as the JSON outputs
        carry them."""
        return [{"source": use.source, "where": use.place} for use in self.sources]


NOT_IN_USE = InUse(())


def _clip(text: str) -> str:
    if len(text) <= PLACE_CHARACTERS:
        return text
    tail = PLACE_CHARACTERS // 3
    return text[: PLACE_CHARACTERS - 1 - tail] + "…" + text[-tail:]


# -- the live sources ---------------------------------------------------------------------------


def _is_live(received_at: datetime, ttl_seconds: int, now: datetime) -> bool:
    return received_at + timedelta(seconds=ttl_seconds) > now


def live_sources() -> dict[int, str]:
    """Source id -> name, for the sources whose last report is live now."""
    rows = InUseSource.objects.annotate(now=Now()).values_list(
        "pk", "name", "received_at", "ttl_seconds", "now"
    )
    return {pk: name for pk, name, received, ttl, now in rows if _is_live(received, ttl, now)}


# -- references by digest -----------------------------------------------------------------------

Key = tuple[int, str]  # (registry id, digest)


def _uses(keys: Collection[Key], live: dict[int, str]) -> dict[Key, dict[str, SourceUse]]:
    """For each (registry, digest) a live report names: source name -> its places."""
    if not keys or not live:
        return {}
    rows = (
        InUseReference.objects.filter(
            source_id__in=list(live),
            registry_id__in={registry for registry, _ in keys},
            digest__in=as_parameter({digest for _, digest in keys}),
        )
        .values("registry_id", "digest", "source_id")
        .annotate(count=Count("pk"), first=Min("where"))
        .order_by()
        .values_list("registry_id", "digest", "source_id", "count", "first")
    )
    found: dict[Key, dict[str, SourceUse]] = defaultdict(dict)
    wanted = set(keys)
    for registry, digest, source_id, count, first in rows:
        if (registry, digest) in wanted:
            found[registry, digest][live[source_id]] = SourceUse(live[source_id], count, first)
    return found


def _combined(keys: Iterable[Key], uses: dict[Key, dict[str, SourceUse]]) -> InUse:
    """One item's uses from those of its related digests (its own, its index's, its
    children's): counts add up, the first place by name is shown."""
    by_source: dict[str, SourceUse] = {}
    for key in keys:
        for name, use in uses.get(key, {}).items():
            known = by_source.get(name)
            if known is None:
                by_source[name] = use
            else:
                first = min(known.place, use.place)
                by_source[name] = SourceUse(name, known.count + use.count, first)
    return InUse(tuple(by_source[name] for name in sorted(by_source)))


# -- pages: rows with their prefetched children -------------------------------------------------


def annotate(registry_id: int, manifests: Iterable[Manifest]) -> None:
    """Set `in_use` on each manifest and on the children of its prefetched index entries
    (as `lists.with_details` and `details.manifest_detail` load them), counting its parents
    too when `parent_entries` are prefetched: two queries, one when nothing is live."""
    manifests = list(manifests)
    live = live_sources()
    related: dict[int, set[str]] = {}
    children: list[tuple[Manifest, Manifest]] = []
    for manifest in manifests:
        digests = {manifest.digest}
        for entry in manifest.entries.all():
            digests.add(entry.child.digest)
            children.append((manifest, entry.child))
        prefetched = getattr(manifest, "_prefetched_objects_cache", {})
        for entry in prefetched.get("parent_entries", ()):
            digests.add(entry.index.digest)
        related[id(manifest)] = digests
    everything = {(registry_id, d) for digests in related.values() for d in digests}
    uses = _uses(everything, live)
    for manifest in manifests:
        manifest.in_use = _combined(((registry_id, d) for d in related[id(manifest)]), uses)
    for index, child in children:
        child.in_use = _combined(((registry_id, d) for d in (child.digest, index.digest)), uses)


# -- the planner and retention: by manifest id --------------------------------------------------


def of_manifests(ids: Collection[int], *, live: dict[int, str] | None = None) -> dict[int, InUse]:
    """Manifest id -> what the live reports say of it, for the ids in use (in any
    repository and registry); {} after one query when no report is live (none at all
    with `live`, the live sources already read)."""
    live = live_sources() if live is None else live
    if not live or not ids:
        return {}
    ids = list(ids)
    own = {
        pk: (registry, digest)
        for pk, registry, digest in Manifest.objects.filter(pk__in=as_parameter(ids)).values_list(
            "pk", "repository__registry_id", "digest"
        )
    }
    related: dict[int, set[Key]] = {pk: {key} for pk, key in own.items()}
    relatives = [
        *IndexEntry.objects.filter(index_id__in=as_parameter(ids)).values_list(
            "index_id", "child__digest"
        ),
        *IndexEntry.objects.filter(child_id__in=as_parameter(ids)).values_list(
            "child_id", "index__digest"
        ),
    ]
    for pk, digest in relatives:
        if pk in own:  # (not a manifest deleted between the two reads)
            related[pk].add((own[pk][0], digest))
    uses = _uses(set().union(*related.values()), live)
    found = {pk: _combined(keys, uses) for pk, keys in related.items()}
    return {pk: in_use for pk, in_use in found.items() if in_use}


# -- required sources ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Blocking:
    """A required source whose last report is out of date, and the registries it covers."""

    source: str
    received_at: datetime
    ttl_seconds: int
    registries: tuple[str, ...]
    now: datetime

    def message(self) -> str:
        """`the required in-use source prod last reported 3 h ago, longer ago than its
        time to live (1 hour): what it runs now is unknown`."""
        return (
            f"the required in-use source {self.source} last reported "
            f"{ago(self.received_at, self.now)}, longer ago than its time to live "
            f"({_duration(self.ttl_seconds)}): what it runs now is unknown"
        )


def blocking(registries: Collection[str] | None = None) -> list[Blocking]:
    """The required sources out of date that cover one of `registries` (names; None: any)."""
    found = []
    for name, received, ttl, covered, now in (
        InUseSource.objects.filter(required=True)
        .annotate(now=Now())
        .values_list("name", "received_at", "ttl_seconds", "registries", "now")
    ):
        if _is_live(received, ttl, now):
            continue
        covered = tuple(r for r in covered if registries is None or r in registries)
        if covered:
            found.append(Blocking(name, received, ttl, covered, now))
    return found


def _duration(seconds: int) -> str:
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds % size == 0:
            return plural(seconds // size, unit)
    return plural(seconds, "second")


# -- the In use page ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceRow:
    """A source as one user may see it: `registries` and `references` narrowed to what
    they see; `whole` when nothing was left out (then the unknown tags, which may name
    repositories they may not see, are shown too)."""

    source: InUseSource
    live: bool
    expires_at: datetime
    now: datetime
    registries: tuple[str, ...]
    references: int
    whole: bool


Sees = Callable[[str, str], bool]  # (registry, repository) -> whether the user sees it


def sources(
    *, registries: Collection[str] | None = None, sees: Sees | None = None
) -> list[SourceRow]:
    """Every source with whether its report is live, by the database's clock. For a user
    who sees everything, `registries` and `sees` are None; else only the sources naming
    one of `registries` (those where the user holds a grant), each narrowed to them, its
    references counted on the repositories `sees` lets through (one grouped query)."""
    rows = InUseSource.objects.annotate(now=Now()).order_by("name")
    if registries is None:
        return [_row(source, tuple(source.registries), source.size, True) for source in rows]
    shown = [source for source in rows if set(source.registries) & set(registries)]
    counted: dict[int, int] = defaultdict(int)
    for source_id, registry, repository, count in (
        InUseReference.objects.filter(
            source_id__in=[source.pk for source in shown], registry__name__in=list(registries)
        )
        .values("source_id", "registry__name", "repository")
        .annotate(count=Count("pk"))
        .order_by()
        .values_list("source_id", "registry__name", "repository", "count")
    ):
        if sees is None or sees(registry, repository):
            counted[source_id] += count
    return [
        _row(
            source,
            tuple(name for name in source.registries if name in registries),
            counted[source.pk],
            False,
        )
        for source in shown
    ]


def _row(source: InUseSource, registries: tuple[str, ...], references: int, whole: bool):
    expires = source.received_at + timedelta(seconds=source.ttl_seconds)
    return SourceRow(
        source, expires > source.now, expires, source.now, registries, references, whole
    )
