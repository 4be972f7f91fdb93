"""The Storage page (SPEC §10)."""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from hubimages.models import Registry
from hubimages.registries import rows as registry_rows
from hubimages.storage import collection
from hubimages.storage import figures as storage_figures
from hubimages.web import charts
from hubimages.web.access import rights, visible_registries
from hubimages.web.paging import neighbours, paginate
from hubimages.web.rendering import render_page, sort_columns, vary_on_htmx

STORAGE_COLUMNS = (
    ("name", "Repository"),
    ("stored", "Stored"),
    ("reclaimable", "Reclaimable (stale)"),
    ("untagged", "Untagged"),
)
STORAGE_SORT_FIELDS = {
    "stored": "stored_bytes",
    "reclaimable": "stale_reclaimable_bytes",
    "untagged": "untagged_bytes",
}
STORAGE_SORTS = ("name", "-name", *STORAGE_SORT_FIELDS, *(f"-{k}" for k in STORAGE_SORT_FIELDS))
STORAGE_DEFAULT_SORT = "-stored"
STORAGE_PER_PAGE = 20


@require_GET
@vary_on_htmx
def storage_insights(request: HttpRequest) -> HttpResponse:
    """The Storage page: the registry's storage, what cleaning up would free, where the
    bytes are and how they changed (SPEC §10). The bar chart draws the rows of the table's
    page, in the table's order."""
    registries = visible_registries(request)
    registry = _chosen(request, registries)
    # The deletions the user may read: those in repositories they may see.
    deletions = rights(request).within(registry_field="registry", field="repository")
    kept = storage_figures.kept(registry)  # computed by the workers, never here
    figures = storage_figures.seen_through(
        kept.document or storage_figures.NOT_COMPUTED, rights(request).viewing(registry.name)
    )
    sort = request.GET.get("sort", STORAGE_DEFAULT_SORT)
    if sort not in STORAGE_SORTS:
        sort = STORAGE_DEFAULT_SORT
    page = paginate(
        _storage_order(figures["repositories"], sort), STORAGE_PER_PAGE, request.GET.get("page")
    )
    points = [
        (datetime.fromisoformat(point["at"]), point["stored_bytes"]) for point in figures["history"]
    ]
    context = {
        "figures": figures,
        "kept": kept,
        "page": page,
        **neighbours(page),
        "sort": sort,
        "state": {
            "registry": registry.name if len(registries) > 1 else None,
            "sort": sort if sort != STORAGE_DEFAULT_SORT else None,
        },
        "registry": registry,
        "registries": registries,
        "columns": sort_columns(sort, STORAGE_COLUMNS, ascending_first=("name",)),
        "chart": charts.repository_bars(page.object_list),
        "history_chart": charts.line_chart(points),
        "history_points": points,
        "waiting": collection.waiting_for_collection(registry, within=deletions),
        "reclaimed": collection.reclaimed(registry, within=deletions),
        "stale_months": settings.STALE_AFTER_MONTHS,
    }
    return render_page(request, "storage.html", "by-repository", context)


def _chosen(request: HttpRequest, registries: list[Registry]) -> Registry:
    """The registry asked for (`?registry=`): 404 unless the user sees it, the same answer
    as for one that does not exist, rather than another registry's figures under a name
    they did not ask for. Without one: the default registry if they see it, else the
    first they see (someone who sees none gets the first, with nothing of it)."""
    asked = request.GET.get("registry")
    if asked:
        chosen = next((registry for registry in registries if registry.name == asked), None)
        if chosen is None:
            raise Http404(f"no registry named {asked!r} that you may see")
        return chosen
    try:
        default = registry_rows.get()
    except registry_rows.UnknownRegistry:
        default = None
    if default is not None and default in registries:
        return default
    return registries[0] if registries else (registry_rows.known() or [registry_rows.get()])[0]


def _storage_order(rows: list[dict], sort: str) -> list[dict]:
    """Names A→Z, or a figure biggest first (names A→Z among equals), or reversed."""
    key = sort.lstrip("-")
    if key == "name":
        return sorted(rows, key=lambda row: row["name"], reverse=sort.startswith("-"))
    field = STORAGE_SORT_FIELDS[key]
    ordered = sorted(rows, key=lambda row: row["name"])
    ordered.sort(key=lambda row: row[field], reverse=sort.startswith("-"))
    return ordered
