"""The pages: repositories, a repository's Image Management list, one image's details.

Views stay thin: `inventory` computes the data in SQL; each view renders its page, or only
the page's refreshable partial when htmx asks for it. A history restore (Back with htmx)
gets the whole page, since htmx swaps it into the body.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.core.paginator import Page, Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET
from django.views.decorators.vary import vary_on_headers

from hubimages import inventory
from hubimages.models import Manifest, Repository, SyncRun
from registry import media

PAGE_SIZES = (10, 25, 50, 100)
REPOSITORIES_PER_PAGE = 50
FILTER_LABELS = (("all", "All"), ("tagged", "Tagged"), ("index", "Image index"), ("image", "Image"))
# The list's columns that sort, in the order shown; a first click sorts biggest/newest first.
SORTABLE_COLUMNS = (
    ("size", "Size"),
    ("last_pushed", "Last pushed"),
    ("last_pulled", "Last pulled"),
)
REPOSITORY_COLUMNS = (("name", "Name"), ("size", "Size"), ("last_pushed", "Last pushed"))


@dataclass(frozen=True)
class Column:
    """A sortable column title: its link's sort value and its `aria-sort`."""

    key: str
    title: str
    next_sort: str
    aria_sort: str


def _wants_partial(request: HttpRequest) -> bool:
    """htmx swaps a partial; on a history miss (Back) it swaps what we send into <body>."""
    return bool(request.htmx) and not request.htmx.history_restore_request


def _columns(
    current: str, choices: tuple[tuple[str, str], ...], ascending_first: tuple[str, ...] = ()
) -> list[Column]:
    """Each column's link sorts by it (biggest/newest first, names A→Z) or reverses it."""
    columns = []
    for key, title in choices:
        if current == key:
            columns.append(Column(key, title, f"-{key}", "ascending"))
        elif current == f"-{key}":
            columns.append(Column(key, title, key, "descending"))
        else:
            first = key if key in ascending_first else f"-{key}"
            columns.append(Column(key, title, first, "none"))
    return columns


def _page_number(raw: str | None, num_pages: int) -> int:
    """The nearest valid page: junk means the first, beyond the end means the last."""
    try:
        number = int(raw or 1)
    except ValueError:
        return 1
    return min(max(number, 1), num_pages)


def _page_size(raw: str | None) -> int:
    default = settings.PAGE_SIZE if settings.PAGE_SIZE in PAGE_SIZES else 25
    try:
        size = int(raw or default)
    except ValueError:
        return default
    return size if size in PAGE_SIZES else default


def _paginate(rows, per_page: int, raw_page: str | None) -> Page:
    paginator = Paginator(rows, per_page)
    return paginator.page(_page_number(raw_page, paginator.num_pages))


def _neighbours(page: Page) -> dict:
    """Previous and next page numbers for links; page 1 is the bare URL (None drops it)."""
    previous = page.number - 1 if page.has_previous() else 0
    return {
        "previous_page": previous if previous > 1 else None,
        "next_page": page.number + 1 if page.has_next() else None,
    }


@require_GET
@vary_on_headers("HX-Request", "HX-History-Restore-Request")
def repositories(request: HttpRequest) -> HttpResponse:
    search = request.GET.get("search", "").strip()[:200]
    sort = request.GET.get("sort", "name")
    if sort not in inventory.REPOSITORY_SORTS:
        sort = "name"
    page = _paginate(
        inventory.repository_overview(search, sort), REPOSITORIES_PER_PAGE, request.GET.get("page")
    )
    state = {"search": search or None, "sort": sort if sort != "name" else None}
    context = {
        "page": page,
        **_neighbours(page),
        "search": search,
        "sort": sort,
        "state": state,
        "columns": _columns(sort, REPOSITORY_COLUMNS, ascending_first=("name",)),
        "never_synced": not page.paginator.count and not SyncRun.objects.exists(),
    }
    template = "repositories.html#table" if _wants_partial(request) else "repositories.html"
    return render(request, template, context)


@require_GET
@vary_on_headers("HX-Request", "HX-History-Restore-Request")
def image_management(request: HttpRequest, name: str) -> HttpResponse:
    repository = get_object_or_404(Repository, name=name)
    if _wants_partial(request) and request.GET.get("since") == str(repository.revision):
        # The list's poll: nothing changed since it was drawn, so htmx swaps nothing.
        return HttpResponse(status=204)
    query = inventory.ListQuery.from_params(request.GET)
    per_page = _page_size(request.GET.get("per_page"))
    rows = inventory.with_details(inventory.top_level(repository, query))
    page = _paginate(rows, per_page, request.GET.get("page"))
    state = {
        "search": query.search or None,
        "filter": query.filter if query.filter != inventory.DEFAULT_FILTER else None,
        "sort": query.sort if query.sort != inventory.DEFAULT_SORT else None,
        "per_page": per_page if per_page != _page_size(None) else None,
        "page": page.number if page.number != 1 else None,
    }
    context = {
        "repository": repository,
        "query": query,
        "page": page,
        "per_page": per_page,
        "page_sizes": PAGE_SIZES,
        "state": state,
        "filters": FILTER_LABELS,
        "columns": _columns(query.sort, SORTABLE_COLUMNS),
        **_neighbours(page),
        "stale_months": settings.STALE_AFTER_MONTHS,
    }
    template = "image_management.html#rows" if _wants_partial(request) else "image_management.html"
    return render(request, template, context)


@require_GET
@vary_on_headers("HX-Request", "HX-History-Restore-Request")
def image_detail(request: HttpRequest, name: str, digest: str) -> HttpResponse:
    if not media.is_digest(digest):
        raise Http404("not a digest")
    repository = get_object_or_404(Repository, name=name)
    try:
        manifest = inventory.manifest_detail(repository, digest)
    except Manifest.DoesNotExist:
        raise Http404("no such manifest in this repository") from None
    context = {
        "repository": repository,
        "manifest": manifest,
        "layers": inventory.layers_of(manifest),
        "children": [(e.child, e.platform or e.child.platform) for e in manifest.entries.all()],
        "referrers": list(manifest.referrers.all()),
        "parents": [entry.index for entry in manifest.parent_entries.all()],
        "platforms": inventory.platforms_of(manifest),
        "labels": sorted(manifest.labels.items()) if isinstance(manifest.labels, dict) else [],
        "annotations": sorted(manifest.annotations.items())
        if isinstance(manifest.annotations, dict)
        else [],
        "stale_months": settings.STALE_AFTER_MONTHS,
    }
    template = "image_detail.html#panel" if _wants_partial(request) else "image_detail.html"
    return render(request, template, context)
