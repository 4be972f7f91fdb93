"""What the registry stores and what cleaning it up would free (SPEC §10), as the Storage
page shows it: computed by the plan engine in the workers, read here with its age."""

from __future__ import annotations

from django.http import HttpRequest
from ninja import Query, Router

from hubimages.api.errors import ApiError
from hubimages.api.paging import reject_unknown_parameters
from hubimages.api.schemas import RegistryQuery, StorageOut, error_responses
from hubimages.lib.formatting import iso
from hubimages.registries import rows
from hubimages.storage import figures
from hubimages.teams.rights import rights_of

router = Router(tags=["storage"])


@router.get(
    "/storage",
    response={200: StorageOut, **error_responses(404, 422, 503)},
    summary="Storage figures",
)
def get_storage(request: HttpRequest, query: Query[RegistryQuery]) -> dict:
    """Stored bytes (distinct blobs, each once), the bytes deleting every stale item would
    free, and the bytes untagged items hold — registry-wide (blobs shared between
    repositories counted once) and per repository; and stored bytes after each full sync.
    A repository's `stale_reclaimable_bytes` is what `delete-images` with all its stale
    top-level digests would report. One registry's (`?registry=`): each stores its own.
    The workers compute them after each sync or deletion: `computed_at` says when,
    `current` whether the registry's state has moved on since (then `computing` says
    whether new figures are being computed); 503 before the first.
    Only the repositories the caller may see: who sees every repository of the registry
    gets its totals (`complete` true); anyone else the sum of their repositories' figures
    (`complete` false; a layer two of them share counted in each) and no history."""
    reject_unknown_parameters(request, RegistryQuery)
    try:
        registry = rows.get(query.registry or None)
    except rows.UnknownRegistry as error:
        raise ApiError(404, "not_found", str(error)) from None
    kept = figures.kept(registry)
    if kept.document is None:
        raise ApiError(
            503,
            "not_computed",
            "the workers have not computed the storage figures yet: they do within a "
            "minute of each sync; try again then",
        )
    return {
        **figures.figures_of(
            figures.seen_through(kept.document, rights_of(request).viewing(registry.name))
        ),
        "computed_at": iso(kept.computed_at),
        "current": kept.current,
        "computing": kept.computing,
    }
