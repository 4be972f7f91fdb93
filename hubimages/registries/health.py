"""Each registry's health for the Registries page (SPEC §11): its last sync and how it
ended, its last notification, what its probes found, and its garbage collection. A fixed
number of queries whatever the number of registries."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, Max, OuterRef, Q, Subquery

from hubimages.models import Deletion, Registry, RegistryEvent, Repository, SyncRun
from hubimages.registries.rows import ensure_rows


@dataclass(frozen=True)
class RegistryHealth:
    registry: Registry
    last_sync: SyncRun | None
    last_success_at: datetime | None
    last_event_at: datetime | None
    last_collection_at: datetime | None
    repositories: int

    @property
    def capabilities(self) -> dict:
        return self.registry.capabilities or {}


def overview(
    within: Q | None = None, *, names: Collection[str] | None = None
) -> list[RegistryHealth]:
    """Every registry hubimages knows (only those `names` names, when given), configured
    ones first, each with how many repositories it holds (only those `within` lets
    through, when given: those a user may see)."""
    ensure_rows()
    last_run = SyncRun.objects.filter(registry=OuterRef("pk")).order_by("-started_at", "-pk")
    registries = list(
        Registry.objects.annotate(last_run_id=Subquery(last_run.values("pk")[:1])).order_by(
            "-configured", "name"
        )
    )
    runs = SyncRun.objects.in_bulk([r.last_run_id for r in registries if r.last_run_id])
    succeeded = dict(
        SyncRun.objects.filter(succeeded=True)
        .values("registry_id")
        .annotate(at=Max("finished_at"))
        .values_list("registry_id", "at")
    )
    events = dict(
        RegistryEvent.objects.values("registry_id")
        .annotate(at=Max("received_at"))
        .values_list("registry_id", "at")
    )
    collections = dict(
        Deletion.objects.filter(collected_at__isnull=False)
        .values("registry")
        .annotate(at=Max("collected_at"))
        .values_list("registry", "at")
    )
    repositories = Repository.objects.filter(within) if within is not None else Repository.objects
    counts = dict(
        repositories.values("registry_id")
        .annotate(count=Count("pk"))
        .values_list("registry_id", "count")
    )
    if names is not None:
        registries = [registry for registry in registries if registry.name in names]
    return [
        RegistryHealth(
            registry=registry,
            last_sync=runs.get(registry.last_run_id),
            last_success_at=succeeded.get(registry.pk),
            last_event_at=events.get(registry.pk),
            last_collection_at=collections.get(registry.name),
            repositories=counts.get(registry.pk, 0),
        )
        for registry in registries
    ]
