"""What the registry stores and what cleaning it up would free (SPEC §10), as the Storage
page shows it: computed by the plan engine in the workers, read here with its age."""

from __future__ import annotations

from django.http import HttpRequest
from ninja import Router

from hubimages.api.errors import ApiError
from hubimages.api.schemas import StorageOut, error_responses
from hubimages.lib.formatting import iso
from hubimages.storage import figures

router = Router(tags=["storage"])


@router.get(
    "/storage", response={200: StorageOut, **error_responses(503)}, summary="Storage figures"
)
def get_storage(request: HttpRequest) -> dict:
    """Stored bytes (distinct blobs, each once), the bytes deleting every stale item would
    free, and the bytes untagged items hold — registry-wide (blobs shared between
    repositories counted once) and per repository; and stored bytes after each full sync.
    A repository's `stale_reclaimable_bytes` is what `delete-images` with all its stale
    top-level digests would report. The workers compute them after each sync or deletion:
    `computed_at` says when, `current` whether the registry's state has moved on since
    (then `computing` says whether new figures are being computed); 503 before the first."""
    kept = figures.kept()
    if kept.document is None:
        raise ApiError(
            503,
            "not_computed",
            "the workers have not computed the storage figures yet: they do within a "
            "minute of each sync; try again then",
        )
    return {
        **figures.figures_of(kept.document),
        "computed_at": iso(kept.computed_at),
        "current": kept.current,
        "computing": kept.computing,
    }
