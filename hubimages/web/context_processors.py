from hubimages.models import SyncRun
from hubimages.registries import rows
from hubimages.teams.rights import rights_of


def registry(request) -> dict:
    """The header's registries and last sync, on every page (lazily: a query or two): the
    registries where a grant lets the user see (staff: every one), as on the Registries
    page, and the last sync of those."""

    def shown() -> set[str] | None:
        """The names to show; None: every registry."""
        mine = rights_of(request)
        if request.user.is_staff or mine.sees_everything():
            return None
        return set(mine.registries())

    def last_sync():
        runs = SyncRun.objects.filter(finished_at__isnull=False)
        names = shown()
        if names is not None:
            runs = runs.filter(registry__name__in=names)
        return runs.order_by("-started_at").first()

    def registries():
        names = shown()
        return [config for config in rows.configured() if names is None or config.name in names]

    def none_granted() -> bool:
        return shown() == set()

    return {
        "registries_configured": registries,
        "registries_none_granted": none_granted,
        "last_sync": last_sync,
    }
