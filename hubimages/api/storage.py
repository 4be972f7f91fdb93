"""What the registry stores and what cleaning it up would free (SPEC §10), as the Storage
page shows it: computed by the plan engine, cached per sync."""

from __future__ import annotations

from django.http import HttpRequest
from ninja import Router

from hubimages.api.schemas import StorageOut, error_responses
from hubimages.storage import figures

router = Router(tags=["storage"])


@router.get("/storage", response={200: StorageOut, **error_responses()}, summary="Storage figures")
def get_storage(request: HttpRequest) -> dict:
    """Stored bytes (distinct blobs, each once), the bytes deleting every stale item would
    free, and the bytes untagged items hold — registry-wide (blobs shared between
    repositories counted once) and per repository; and stored bytes after each full sync.
    A repository's `stale_reclaimable_bytes` is what `delete-images` with all its stale
    top-level digests would report."""
    return figures.figures()
