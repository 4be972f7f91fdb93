"""The Repositories page."""

from __future__ import annotations

from collections.abc import Iterable

from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from hubimages.inventory import repositories as inventory_repositories
from hubimages.models import Repository, SyncRun
from hubimages.storage import figures as storage_figures
from hubimages.web.access import rights, visible_registries
from hubimages.web.paging import neighbours, paginate
from hubimages.web.rendering import render_page, sort_columns, vary_on_htmx

REPOSITORIES_PER_PAGE = 50
REPOSITORY_COLUMNS = (
    ("name", "Name"),
    ("size", "Size"),
    ("reclaimable", "Reclaimable (stale)"),
    ("last_pushed", "Last pushed"),
)
# Reclaimable bytes come from the storage figures (the plan engine), not from SQL.
RECLAIMABLE_SORTS = ("reclaimable", "-reclaimable")


@require_GET
@vary_on_htmx
def repositories(request: HttpRequest) -> HttpResponse:
    search = request.GET.get("search", "").strip()[:200]
    sort = request.GET.get("sort", "name")
    if sort not in inventory_repositories.REPOSITORY_SORTS and sort not in RECLAIMABLE_SORTS:
        sort = "name"
    mine = rights(request)
    within = mine.within()
    registries = visible_registries(request)
    chosen = next((r for r in registries if r.name == request.GET.get("registry")), None)
    # Computed by the workers, never here: each registry's kept figures, read.
    kept = storage_figures.kept_together([chosen] if chosen else registries)
    reclaimable = {}
    # Each registry's figures as the user sees them (their repositories' rows, and the
    # sum of those when they do not see every repository of it).
    documents = {
        name: storage_figures.seen_through(document, mine.viewing(name))
        for name, document in kept.documents.items()
    }
    for registry_name, document in documents.items():
        for row in document["repositories"]:
            reclaimable[(registry_name, row["name"])] = row["stale_reclaimable_bytes"]
    rows = inventory_repositories.repository_overview(search, sort, chosen, within=within)
    if sort in RECLAIMABLE_SORTS:
        rows = _by_reclaimable(rows, reclaimable, descending=sort.startswith("-"))
    page = paginate(rows, REPOSITORIES_PER_PAGE, request.GET.get("page"))
    state = {
        "search": search or None,
        "registry": chosen.name if chosen else None,
        "sort": sort if sort != "name" else None,
    }
    context = {
        "page": page,
        **neighbours(page),
        "search": search,
        "sort": sort,
        "state": state,
        "columns": sort_columns(sort, REPOSITORY_COLUMNS, ascending_first=("name",)),
        "never_synced": not page.paginator.count and not SyncRun.objects.exists(),
        "reclaimable": reclaimable,
        "total_reclaimable": sum(d["stale_reclaimable_bytes"] for d in documents.values()),
        "kept": kept,
        "registries": registries,
        "registry": chosen,
        "totals": (
            inventory_repositories.repository_totals(chosen, within=within)
            if page.paginator.count
            else None
        ),
    }
    return render_page(request, "repositories.html", "table", context)


def _by_reclaimable(
    rows: Iterable[Repository], reclaimable: dict[tuple[str, str], int], *, descending: bool
) -> list[Repository]:
    """Repositories by their stale reclaimable bytes (then by name); those the figures do
    not know yet (pushed since the last sync) last either way."""
    rows = sorted(rows, key=lambda row: (row.name, row.registry.name))
    known = [row for row in rows if row.key in reclaimable]
    known.sort(key=lambda row: reclaimable[row.key], reverse=descending)
    return known + [row for row in rows if row.key not in reclaimable]
