from django.conf import settings

from hubimages.models import SyncRun


def registry(request) -> dict:
    """The header's registry address and last sync, on every page (lazily: one query)."""

    def last_sync():
        return SyncRun.objects.filter(finished_at__isnull=False).order_by("-started_at").first()

    return {"registry_url": settings.REGISTRY_URL, "last_sync": last_sync}
