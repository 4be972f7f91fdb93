"""Noticing the registry's garbage collector: deleted bytes waiting for it, and the
deletions it has collected (asked of the registry, one probe blob per deletion)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, Exists, OuterRef, Q, QuerySet, Sum
from django.utils import timezone

from hubimages.models import Deletion, ManifestBlob, Registry
from hubimages.registries import rows
from registry.client import RegistryClient
from registry.errors import RegistryError

log = logging.getLogger("hubimages.storage")


# -- garbage collection ----------------------------------------------------------------------


@dataclass(frozen=True)
class Waiting:
    """Deleted, waiting for the garbage collector: what it will free, from how many
    deletions."""

    bytes: int
    deletions: int


def waiting_for_collection(registry: Registry | None = None, *, within: Q | None = None) -> Waiting:
    """Bytes that finished deletions freed and the registry (or every registry) still
    stores; with `within`, only the deletions it lets through (those in repositories a
    user may see). One query."""
    deletions = _uncollected(registry)
    if within is not None:
        deletions = deletions.filter(within)
    totals = deletions.aggregate(bytes=Sum("reclaimed_bytes"), deletions=Count("pk"))
    return Waiting(totals["bytes"] or 0, totals["deletions"])


@dataclass(frozen=True)
class Reclaimed:
    """Deleted and collected: what the garbage collector freed, from how many deletions."""

    bytes: int
    deletions: int


def reclaimed(registry: Registry | None = None, *, within: Q | None = None) -> Reclaimed:
    """Bytes that finished deletions freed and that the registry's (or every registry's)
    garbage collector was seen to collect (`note_collections`); with `within`, only the
    deletions it lets through (those in repositories a user may see). One query."""
    deletions = Deletion.objects.filter(collected_at__isnull=False, reclaimed_bytes__gt=0)
    if registry is not None:
        deletions = deletions.filter(registry=registry.name)
    if within is not None:
        deletions = deletions.filter(within)
    totals = deletions.aggregate(bytes=Sum("reclaimed_bytes"), deletions=Count("pk"))
    return Reclaimed(totals["bytes"] or 0, totals["deletions"])


def _uncollected(registry: Registry | None) -> QuerySet[Deletion]:
    deletions = Deletion.objects.filter(
        collected_at__isnull=True, finished_at__isnull=False, reclaimed_bytes__gt=0
    )
    return deletions.filter(registry=registry.name) if registry is not None else deletions


def note_collections(
    client: RegistryClient, registry: Registry, now: datetime | None = None
) -> int:
    """Find out whether the garbage collector ran since the deletions still waiting for it,
    and mark those it freed. Returns how many.

    The collector frees, each time it runs, everything deleted before. So among the
    waiting deletions, oldest first, those whose probe blob is gone from the registry come
    before those whose probe is still there: a binary search finds the last one gone in a
    few HEAD requests, and it and every deletion that finished before it were collected.
    A probe that a manifest uses again (pushed anew) proves nothing and is not asked."""
    registry = registry or rows.get()
    reused = ManifestBlob.objects.filter(
        blob__registry=registry, blob__digest=OuterRef("probe_digest")
    )
    witnesses = list(
        _uncollected(registry)
        .exclude(probe_digest="")
        .filter(~Exists(reused))
        .order_by("finished_at", "pk")
        .values_list("repository", "probe_digest", "finished_at")
    )
    low, high = 0, len(witnesses)  # witnesses[:low] are gone, witnesses[high:] are not
    try:
        while low < high:
            middle = (low + high) // 2
            repository, probe, _ = witnesses[middle]
            if client.has_blob(repository, probe):
                high = middle
            else:
                low = middle + 1
    except RegistryError as error:
        log.warning("could not ask the registry whether it collected garbage: %s", error)
        return 0
    if low == 0:
        return 0
    collected_before = witnesses[low - 1][2]
    return (
        _uncollected(registry)
        .filter(finished_at__lte=collected_before)
        .update(collected_at=now or timezone.now())
    )
