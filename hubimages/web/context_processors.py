from hubimages.models import SyncRun
from hubimages.registries import rows


def registry(request) -> dict:
    """The header's registries and last sync, on every page (lazily: a query or two)."""

    def last_sync():
        return SyncRun.objects.filter(finished_at__isnull=False).order_by("-started_at").first()

    def registries():
        return [config for config in rows.configured()]

    return {"registries_configured": registries, "last_sync": last_sync}
