"""Active, Unknown or Stale (SPEC §2): the one rule, for a row, in SQL, and through the
cascade.

A top-level item (an index, an image no index holds) has a status of its own:
- Stale: last activity (the later of Last pushed and Last pulled) before the cutoff,
  `STALE_AFTER_MONTHS` calendar months ago;
- Unknown: otherwise, when no push or pull was seen and no plausible build time dates it:
  its Last pushed is only the time a sync first saw it (`PushedFrom.FIRST_SEEN`), which
  stays its Last pushed for sorting and retention, so it turns Stale once watched that
  long without a push or pull;
- Active: the rest.

Anything else (an index's images and attestations, a subject's signatures, SBOMs and
other referrers, at any depth) has the status of the top-level items it belongs to, the
most alive of them when several share it (Active, then Unknown, then Stale): a
signature is as stale as the image it signs, and an image an active index holds is
active. `statuses` finds those top-level items a level at a time, a few queries for any
number of items."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import UTC, datetime
from typing import NamedTuple

from dateutil.relativedelta import relativedelta
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from hubimages.lib.queries import as_parameter
from hubimages.models import IndexEntry, Manifest, PushedFrom

ACTIVE = "active"
UNKNOWN = "unknown"
STALE = "stale"
# Most alive first: a shared item takes the first its top-level items have.
BY_LIFE = (ACTIVE, UNKNOWN, STALE)


def stale_cutoff(now: datetime | None = None) -> datetime:
    """Activity before this instant is stale: calendar months, as SPEC §2 says. A `now`
    within those months of the first datetime (a retention run's, sent back by hand)
    has no cutoff before it: nothing is stale."""
    try:
        return (now or timezone.now()) - relativedelta(months=settings.STALE_AFTER_MONTHS)
    except (OverflowError, ValueError):
        return datetime.min.replace(tzinfo=UTC)


def last_activity(manifest: Manifest | _Row) -> datetime:
    if manifest.last_pulled_at and manifest.last_pulled_at > manifest.pushed_at:
        return manifest.last_pulled_at
    return manifest.pushed_at


def own_status(manifest: Manifest | _Row, now: datetime | None = None) -> str:
    """The row's own status, as if it were top-level: what `stale_q`, `unknown_q` and
    `active_q` select in SQL."""
    return status_from(
        manifest.pushed_at,
        manifest.pushed_at_source,
        manifest.last_pulled_at,
        now,
        estimated=manifest.pushed_at_estimated,
    )


def status_from(
    pushed: datetime,
    source: str,
    pulled: datetime | None,
    now: datetime | None = None,
    *,
    estimated: bool = True,
) -> str:
    """A top-level item's status from its Last pushed, how that was found (a Last pushed
    not `estimated` came from a push event, whatever `source` says) and Last pulled."""
    cutoff = stale_cutoff(now)
    if max(pushed, pulled or pushed) < cutoff:
        return STALE
    if estimated and source == PushedFrom.FIRST_SEEN and pulled is None:
        return UNKNOWN
    return ACTIVE


def stale_q(now: datetime | None = None) -> Q:
    """Last activity (the later of last pushed and last pulled) before the cutoff."""
    cutoff = stale_cutoff(now)
    return Q(pushed_at__lt=cutoff) & (Q(last_pulled_at__isnull=True) | Q(last_pulled_at__lt=cutoff))


def unknown_q(now: datetime | None = None) -> Q:
    """Dated only by when it was first seen, and not watched long enough to be stale."""
    return Q(
        pushed_at_estimated=True,
        pushed_at_source=PushedFrom.FIRST_SEEN,
        last_pulled_at__isnull=True,
        pushed_at__gte=stale_cutoff(now),
    )


def active_q(now: datetime | None = None) -> Q:
    return ~stale_q(now) & ~unknown_q(now)


def status_q(status: str, now: datetime | None = None) -> Q:
    """The rows of a top-level status."""
    return {ACTIVE: active_q, UNKNOWN: unknown_q, STALE: stale_q}[status](now)


def is_stale(manifest: Manifest, now: datetime | None = None) -> bool:
    return status_of(manifest, now) == STALE


def status_of(manifest: Manifest, now: datetime | None = None) -> str:
    """The item's status: as `annotate` set it, its own when top-level, else through the
    cascade (a few queries: pages of many items `annotate` them first)."""
    known = getattr(manifest, "status", None)
    if known in BY_LIFE:
        return known
    if manifest.is_top_level:
        return own_status(manifest, now)
    return statuses([manifest.pk], now).get(manifest.pk) or own_status(manifest, now)


def statuses(ids: Collection[int], now: datetime | None = None) -> dict[int, str]:
    """Manifest id → status, through the cascade (`resolve`)."""
    return {pk: state for pk, (state, _) in resolve(ids, now).items()}


class _Row(NamedTuple):
    pushed_at: datetime
    pushed_at_source: str
    last_pulled_at: datetime | None
    pushed_at_estimated: bool
    is_top_level: bool
    subject_id: int | None


_ROW_FIELDS = _Row._fields


def resolve(
    ids: Collection[int], now: datetime | None = None, *, loaded: Iterable[Manifest] = ()
) -> dict[int, tuple[str, datetime]]:
    """Manifest id → (status, since), through the cascade: each item's top-level items
    (`top_level_of`), the most alive of their own statuses; `since` is the last activity
    of the one that decided (an Unknown item's: the time it was first seen). `loaded`:
    manifests already read, which need no query again."""
    rows = {m.pk: _Row(*(getattr(m, name) for name in _ROW_FIELDS)) for m in loaded}
    roots = top_level_of(ids, rows)
    found = {}
    for pk in ids:
        candidates = [rows[root] for root in roots.get(pk, ()) if root in rows]
        if not candidates and pk in rows:
            candidates = [rows[pk]]  # reaches no top-level item: its own
        decided = [(own_status(r, now), last_activity(r)) for r in candidates]
        if decided:
            # The most alive, and of those the latest activity (the last to turn stale).
            found[pk] = min(decided, key=lambda d: (BY_LIFE.index(d[0]), -d[1].timestamp()))
    return found


def top_level_of(ids: Collection[int], rows: dict[int, _Row] | None = None) -> dict[int, set[int]]:
    """Manifest id → the top-level items above it (itself when it is one): up through
    index entries and subjects until nothing holds them. Per level, a query for the rows
    not in `rows` yet (which it fills) and one for the index entries of those not
    top-level. A manifest's digest is its content's, so no chain comes back to where it
    started; should one, it ends there."""
    rows = {} if rows is None else rows
    parents_of: dict[int, set[int]] = {}
    frontier = set(ids)
    while frontier:
        unread = frontier - rows.keys()
        if unread:
            for pk, *values in Manifest.objects.filter(pk__in=as_parameter(unread)).values_list(
                "pk", *_ROW_FIELDS
            ):
                rows[pk] = _Row(*values)
        below = {pk for pk in frontier if pk in rows and not rows[pk].is_top_level}
        entries = _indexes_of(below)
        for pk in frontier:
            ups = set(entries.get(pk, ()))
            if pk in below and rows[pk].subject_id is not None:
                ups.add(rows[pk].subject_id)
            parents_of[pk] = ups
        frontier = {up for ups in parents_of.values() for up in ups} - parents_of.keys()
    memo: dict[int, set[int]] = {}

    def roots(item: int, path: frozenset[int]) -> set[int]:
        if item not in memo:
            ups = parents_of.get(item, set())
            if not ups:
                return memo.setdefault(item, {item})
            found: set[int] = set()
            for up in ups - path:
                found |= roots(up, path | {item})
            memo[item] = found
        return memo[item]

    return {pk: roots(pk, frozenset()) for pk in ids}


def _indexes_of(ids: set[int]) -> dict[int, set[int]]:
    indexes: dict[int, set[int]] = {}
    if ids:
        entries = IndexEntry.objects.filter(child_id__in=as_parameter(ids))
        for child, index in entries.values_list("child_id", "index_id"):
            indexes.setdefault(child, set()).add(index)
    return indexes


def annotate(manifests: Iterable[Manifest], now: datetime | None = None) -> None:
    """Set `status` and `status_since` (see `since`) on each manifest and on its
    prefetched children and referrers (as `lists.with_details` and
    `details.manifest_detail` load them): a few queries."""
    everything: list[Manifest] = []
    for manifest in manifests:
        everything.append(manifest)
        prefetched = getattr(manifest, "_prefetched_objects_cache", {})
        everything += [entry.child for entry in prefetched.get("entries", ())]
        everything += list(prefetched.get("referrers", ()))
    found = resolve({m.pk for m in everything if not m.is_top_level}, now, loaded=everything)
    for manifest in everything:
        if manifest.pk in found:
            manifest.status, manifest.status_since = found[manifest.pk]
        elif manifest.is_top_level:
            manifest.status = own_status(manifest, now)
            manifest.status_since = last_activity(manifest)


def since(manifest: Manifest, now: datetime | None = None) -> datetime:
    """The last activity `status_of` went by: an Unknown item's is when it was first seen
    (its own, or its index's or subject's)."""
    if getattr(manifest, "status_since", None) is None:
        annotate([manifest], now)
    return getattr(manifest, "status_since", None) or last_activity(manifest)
