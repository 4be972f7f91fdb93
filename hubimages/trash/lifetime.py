"""How long the Trash keeps what deletions kept: `TRASH_KEEP_DAYS` (SPEC §12)."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db.models.functions import Now

from hubimages.models import KeptManifest


def forget_expired() -> int:
    """Forget the kept bytes of manifests deleted more than TRASH_KEEP_DAYS ago, by the
    database's clock (the workers' housekeeping); the deletion history keeps its records.
    Returns how many were forgotten."""
    since = Now() - timedelta(days=settings.TRASH_KEEP_DAYS)
    forgotten, _ = KeptManifest.objects.filter(record__deleted_at__lt=since).delete()
    return forgotten
