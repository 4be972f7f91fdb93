"""Keeping each registry's capabilities current (SPEC §11): the workers probe every
registry after each of its full syncs, and the Registries page reads what they found."""

from __future__ import annotations

import logging

from django.db.models import Count
from django.utils import timezone

from hubimages.models import Registry
from registry import probes
from registry.client import RegistryClient

log = logging.getLogger("hubimages.registries")


def probe(registry: Registry, client: RegistryClient) -> dict[str, bool | None]:
    """Ask the registry what it can do (a few cheap requests) and keep the answer on its
    row; the repository with the most tags is what the per-repository questions ask about
    (a tag list pages only past one tag)."""
    repository = (
        registry.repositories.annotate(tag_count=Count("tags"))
        .order_by("-tag_count", "name")
        .values_list("name", flat=True)
        .first()
    )
    found = probes.capabilities(client, repository)
    Registry.objects.filter(pk=registry.pk).update(capabilities=found, probed_at=timezone.now())
    log.info("registry %s can: %s", registry.name, found)
    return found
