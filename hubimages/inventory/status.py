"""Active or Stale (SPEC §2): the cutoff and the test, for one row or in SQL."""

from __future__ import annotations

from datetime import datetime

from dateutil.relativedelta import relativedelta
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from hubimages.models import Manifest


def stale_cutoff(now: datetime | None = None) -> datetime:
    """Activity before this instant is stale: calendar months, as SPEC §2 says."""
    return (now or timezone.now()) - relativedelta(months=settings.STALE_AFTER_MONTHS)


def is_stale(manifest: Manifest, now: datetime | None = None) -> bool:
    return last_activity(manifest) < stale_cutoff(now)


def last_activity(manifest: Manifest) -> datetime:
    if manifest.last_pulled_at and manifest.last_pulled_at > manifest.pushed_at:
        return manifest.last_pulled_at
    return manifest.pushed_at


def stale_q(now: datetime | None = None) -> Q:
    """Last activity (the later of last pushed and last pulled) before the cutoff."""
    cutoff = stale_cutoff(now)
    return Q(pushed_at__lt=cutoff) & (Q(last_pulled_at__isnull=True) | Q(last_pulled_at__lt=cutoff))
