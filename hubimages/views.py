"""The pages: repositories, a repository's Image Management list, one image's details,
the preview and "Delete forever" of a selection, and the deletion history.

Views stay thin: `inventory` computes the data in SQL; each view renders its page, or only
the page's refreshable partial when htmx asks for it. A history restore (Back with htmx)
gets the whole page, since htmx swaps it into the body.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Page, Paginator
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    QueryDict,
    StreamingHttpResponse,
)
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils.dateparse import parse_datetime
from django.utils.functional import cached_property
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django.views.decorators.vary import vary_on_headers
from django_htmx.http import HttpResponseClientRedirect

from hubimages import charts, deletion, history, inventory, jobs, preview, retention, storage
from hubimages.formatting import human_size
from hubimages.models import (
    Job,
    Manifest,
    Repository,
    RetentionPolicy,
    SyncRun,
)
from hubimages.retention_form import KEEP_CHOICES, PolicyForm
from hubimages.templatetags.hubimages_tags import LONG_TEXT_LIMIT
from registry import media

REPOSITORIES_PER_PAGE = 50
# An image's labels and annotations on its page: the first ones, then how many more. A
# config may hold 20,000 labels or a megabyte key; the page stays small and readable.
KEY_VALUES_SHOWN = 100
KEY_VALUES_CHARACTERS = 50_000
FILTER_LABELS = (
    ("all", "All"),
    ("tagged", "Tagged"),
    ("untagged", "Untagged"),
    ("index", "Image index"),
    ("image", "Image"),
)
STATUS_LABELS = (("", "Any"), ("active", "Active"), ("stale", "Stale"))
# The list's columns that sort, in the order shown; a first click sorts biggest/newest first.
SORTABLE_COLUMNS = (
    ("size", "Size"),
    ("last_pushed", "Last pushed"),
    ("last_pulled", "Last pulled"),
)
REPOSITORY_COLUMNS = (
    ("name", "Name"),
    ("size", "Size"),
    ("reclaimable", "Reclaimable (stale)"),
    ("last_pushed", "Last pushed"),
)
# Reclaimable bytes come from the storage figures (the plan engine), not from SQL.
RECLAIMABLE_SORTS = ("reclaimable", "-reclaimable")
# A page shows at most 100 rows; more digests than this are not a selection but a misuse.
MAX_SELECTED = 1000
HISTORY_PER_PAGE = 50
JOBS_PER_PAGE = 50
SYNC_KINDS = (Job.Kind.SYNC, Job.Kind.SYNC_REPOSITORY)
CHANGED = "The registry changed since your preview: nothing was deleted. Check the new preview."
UNCONFIRMED = "Tick the box to confirm that you understand what will be deleted."
ACTIVE_UNCONFIRMED = (
    "Some of these items are still in use (not stale): tick the second box to delete them too."
)


@dataclass(frozen=True)
class Column:
    """A sortable column title: its link's sort value and its `aria-sort`."""

    key: str
    title: str
    next_sort: str
    aria_sort: str


# Every view that answers with a whole page or one of its partials varies on these.
vary_on_htmx = vary_on_headers("HX-Request", "HX-History-Restore-Request")


def wants_partial(request: HttpRequest) -> bool:
    """htmx swaps a partial; on a history miss (Back) it swaps what we send into <body>."""
    return bool(request.htmx) and not request.htmx.history_restore_request


def render_page(
    request: HttpRequest, template: str, partial: str, context: dict, *, status: int = 200
) -> HttpResponse:
    """The whole page, or only its `partial` when htmx asks for a piece of it."""
    name = f"{template}#{partial}" if wants_partial(request) else template
    return render(request, name, context, status=status)


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


def _page_size(raw: str | None) -> int:
    default = settings.PAGE_SIZE
    try:
        size = int(raw or default)
    except ValueError:
        return default
    return size if size in settings.PAGE_SIZES else default


def _paginate(rows, per_page: int, raw_page: str | None) -> Page:
    """Junk means the first page, beyond the end the last (`Paginator.get_page`)."""
    return Paginator(rows, per_page).get_page(raw_page)


@dataclass(frozen=True)
class PageLink:
    """One entry of the numbered pages: a number (its link's `page`, None for page 1, which
    is the bare URL) or the ellipsis between distant numbers (number 0)."""

    number: int
    param: int | None
    current: bool


class ListPaginator(Paginator):
    """Pages of the Image Management list, counted by `inventory.count_top_level`: a
    list of a million rows costs no more to page than one of a hundred. `estimated` says
    the count is an estimate (the page then says "about")."""

    estimated = False

    def __init__(
        self, rows, per_page: int, repository: Repository, query, found: inventory.Search | None
    ) -> None:
        super().__init__(rows, per_page)
        self._repository = repository
        self._query = query
        self._found = found

    @cached_property
    def count(self) -> int:
        counted = inventory.count_top_level(self._repository, self._query, found=self._found)
        self.estimated = counted.estimated
        return counted.value

    def validate_number(self, number) -> int:
        """An estimated count is no end: a page past it is there if it has rows (`page`),
        up to twice the estimate."""
        if self.count and self.estimated:
            return self._validate_number(number, 2 * self.num_pages)
        return super().validate_number(number)

    def page(self, number) -> Page:
        """With an estimated count, a page reads one row more than it shows, so that Next
        follows the rows themselves rather than an estimate that may fall short."""
        if not (self.count and self.estimated):
            return super().page(number)
        number = self.validate_number(number)
        bottom = (number - 1) * self.per_page
        rows = list(self.object_list[bottom : bottom + self.per_page + 1])
        return EstimatedPage(rows[: self.per_page], number, self, more=len(rows) > self.per_page)


class EstimatedPage(Page):
    """A page of a list whose count is estimated: whether there is a next page, and where
    this one ends, come from its rows."""

    def __init__(self, object_list, number: int, paginator: Paginator, *, more: bool) -> None:
        super().__init__(object_list, number, paginator)
        self.more = more

    def has_next(self) -> bool:
        return self.more

    def end_index(self) -> int:
        return self.start_index() + len(self.object_list) - 1


def _neighbours(page: Page) -> dict:
    """Previous, next and numbered page links; page 1 is the bare URL (None drops it)."""
    previous = page.number - 1 if page.has_previous() else 0
    numbers = [
        PageLink(0, None, False)
        if number == page.paginator.ELLIPSIS
        else PageLink(number, number if number != 1 else None, number == page.number)
        for number in page.paginator.get_elided_page_range(page.number, on_each_side=2, on_ends=1)
    ]
    return {
        "previous_page": previous if previous > 1 else None,
        "next_page": page.number + 1 if page.has_next() else None,
        "page_links": numbers,
    }


@require_GET
@vary_on_htmx
def repositories(request: HttpRequest) -> HttpResponse:
    search = request.GET.get("search", "").strip()[:200]
    sort = request.GET.get("sort", "name")
    if sort not in inventory.REPOSITORY_SORTS and sort not in RECLAIMABLE_SORTS:
        sort = "name"
    figures = storage.insights()
    reclaimable = {row["name"]: row["stale_reclaimable_bytes"] for row in figures["repositories"]}
    rows = inventory.repository_overview(search, sort)
    if sort in RECLAIMABLE_SORTS:
        rows = _by_reclaimable(rows, reclaimable, descending=sort.startswith("-"))
    page = _paginate(rows, REPOSITORIES_PER_PAGE, request.GET.get("page"))
    state = {"search": search or None, "sort": sort if sort != "name" else None}
    context = {
        "page": page,
        **_neighbours(page),
        "search": search,
        "sort": sort,
        "state": state,
        "columns": _columns(sort, REPOSITORY_COLUMNS, ascending_first=("name",)),
        "never_synced": not page.paginator.count and not SyncRun.objects.exists(),
        "reclaimable": reclaimable,
        "figures": figures,
        "totals": inventory.repository_totals() if page.paginator.count else None,
    }
    return render_page(request, "repositories.html", "table", context)


def _by_reclaimable(
    rows: Iterable[Repository], reclaimable: dict[str, int], *, descending: bool
) -> list[Repository]:
    """Repositories by their stale reclaimable bytes (then by name); those the figures do
    not know yet (pushed since the last sync) last either way."""
    rows = sorted(rows, key=lambda row: row.name)
    known = [row for row in rows if row.name in reclaimable]
    known.sort(key=lambda row: reclaimable[row.name], reverse=descending)
    return known + [row for row in rows if row.name not in reclaimable]


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
    figures = storage.insights()
    sort = request.GET.get("sort", STORAGE_DEFAULT_SORT)
    if sort not in STORAGE_SORTS:
        sort = STORAGE_DEFAULT_SORT
    page = _paginate(
        _storage_order(figures["repositories"], sort), STORAGE_PER_PAGE, request.GET.get("page")
    )
    points = [
        (datetime.fromisoformat(point["at"]), point["stored_bytes"]) for point in figures["history"]
    ]
    context = {
        "figures": figures,
        "page": page,
        **_neighbours(page),
        "sort": sort,
        "state": {"sort": sort if sort != STORAGE_DEFAULT_SORT else None},
        "columns": _columns(sort, STORAGE_COLUMNS, ascending_first=("name",)),
        "chart": charts.repository_bars(page.object_list),
        "history_chart": charts.line_chart(points),
        "history_points": points,
        "waiting": storage.waiting_for_collection(),
        "stale_months": settings.STALE_AFTER_MONTHS,
        "as_of": datetime.fromisoformat(figures["as_of"]) if figures["as_of"] else None,
    }
    return render_page(request, "storage.html", "by-repository", context)


def _storage_order(rows: list[dict], sort: str) -> list[dict]:
    """Names A→Z, or a figure biggest first (names A→Z among equals), or reversed."""
    key = sort.lstrip("-")
    if key == "name":
        return sorted(rows, key=lambda row: row["name"], reverse=sort.startswith("-"))
    field = STORAGE_SORT_FIELDS[key]
    ordered = sorted(rows, key=lambda row: row["name"])
    ordered.sort(key=lambda row: row[field], reverse=sort.startswith("-"))
    return ordered


def _encode(state: dict) -> str:
    return urlencode({key: value for key, value in state.items() if value is not None})


def _list_state(query: inventory.ListQuery, per_page: int) -> dict:
    """The list's parameters that differ from the defaults (None for the others)."""
    return {
        "search": query.search or None,
        "filter": query.filter if query.filter != inventory.DEFAULT_FILTER else None,
        "status": query.status or None,
        "sort": query.sort if query.sort != inventory.DEFAULT_SORT else None,
        "per_page": per_page if per_page != _page_size(None) else None,
    }


def _same_query(params: QueryDict, encoded: str) -> bool:
    mine = sorted((k, v) for k, values in params.lists() for v in values)
    return mine == sorted((k, v) for k, values in QueryDict(encoded).lists() for v in values)


@require_GET
@vary_on_htmx
def image_management(request: HttpRequest, name: str) -> HttpResponse:
    """The list. Its URL is the truth: a URL that says the same view another way (an empty
    search, a default, junk, a page past the end) is redirected to the one way, so what
    people bookmark and share is short and always shows what it says."""
    repository = get_object_or_404(Repository, name=name)
    if wants_partial(request) and request.GET.get("since") == str(repository.revision):
        # The list's poll: nothing changed since it was drawn, so htmx swaps nothing.
        return HttpResponse(status=204)
    query = inventory.ListQuery.from_params(request.GET)
    per_page = _page_size(request.GET.get("per_page"))
    found = inventory.search(repository, query.search) if query.search else None
    rows = inventory.with_details(inventory.top_level(repository, query, found=found))
    paginator = ListPaginator(rows, per_page, repository, query, found)
    page = paginator.get_page(request.GET.get("page"))
    view = _list_state(query, per_page)
    state = {**view, "page": page.number if page.number != 1 else None}
    here = _url_with(request.path, _encode(state))
    if not request.htmx and not _same_query(request.GET, _encode(state)):
        return HttpResponseRedirect(here)
    context = {
        "repository": repository,
        "query": query,
        "page": page,
        "per_page": per_page,
        "page_sizes": settings.PAGE_SIZES,
        "default_page_size": _page_size(None),
        "state": state,
        # Carried through the delete preview, so the list comes back as the user left it.
        "back": _encode(view),
        "here": _encode(state),
        "filters": FILTER_LABELS,
        "statuses": STATUS_LABELS,
        "columns": _columns(query.sort, SORTABLE_COLUMNS),
        **_neighbours(page),
        **_selection_context(request, repository, {row.digest for row in page}),
        "matching": page.paginator.count,
        "stale_months": settings.STALE_AFTER_MONTHS,
        "sync_url": reverse("sync_repository", args=[repository.name]),
    }
    response = render_page(request, "image_management.html", "rows", context)
    if request.htmx and str(page.number) != request.GET.get("page", "1"):
        # A page past the end (the last rows went meanwhile): the address bar says where.
        response["HX-Replace-Url"] = here
    return response


def _url_with(path: str, encoded: str) -> str:
    return f"{path}?{encoded}" if encoded else path


# -- the selection, kept on the server across search, filter, sort and pages -----------------


def _selection_key(repository: Repository) -> str:
    return f"hubimages:selection:{repository.pk}"


def _selected(request: HttpRequest, repository: Repository) -> list[str]:
    """The session's selection in this repository, less what is no longer a row of it."""
    stored = request.session.get(_selection_key(repository), [])
    if not stored:
        return []
    present = set(
        Manifest.objects.filter(
            repository=repository, is_top_level=True, digest__in=stored
        ).values_list("digest", flat=True)
    )
    return [digest for digest in stored if digest in present]


def _selection_context(request: HttpRequest, repository: Repository, on_page: set[str]) -> dict:
    """The selection bar: how many are selected, what deleting them frees (the preview's
    own figure, from the plan engine), and the selected digests not on this page, which
    the form carries so the preview gets the whole selection."""
    if not deletion.can_delete(request.user):
        return {"selected": set(), "off_page": [], "selected_count": 0, "frees": None}
    selected = _selected(request, repository)
    frees = None
    if selected:
        plan = deletion.plan_deletion(repository=repository, digests=selected)
        frees = plan.reclaimable_bytes
    return {
        "selected": set(selected),
        "off_page": [digest for digest in selected if digest not in on_page],
        "selected_count": len(selected),
        "frees": frees,
        "select_limit": MAX_SELECTED,
    }


@require_POST
def selection(request: HttpRequest, name: str) -> HttpResponse:
    """Change the selection: `page` makes the digests `shown` on a page what was ticked
    there (the others stay selected), `all` selects every row matching the list's query,
    `clear` empties it. htmx gets the selection bar back; without JavaScript, the list."""
    repository = _repository_to_delete_from(request, name)
    key = _selection_key(repository)
    current = request.session.get(key, [])
    action = request.POST.get("action", "page")
    back = request.POST.get("back", "")[:1000]
    if action == "clear":
        chosen: list[str] = []
    elif action == "all":
        query = inventory.ListQuery.from_params(QueryDict(back.lstrip("?")))
        matching = inventory.top_level(repository, query).values_list("digest", flat=True)
        chosen = list(dict.fromkeys([*current, *matching[:MAX_SELECTED]]))
    else:
        shown = set(request.POST.getlist("shown"))
        ticked = request.POST.getlist("digest")
        chosen = list(dict.fromkeys([d for d in current if d not in shown] + ticked))
    request.session[key] = [d for d in chosen if media.is_digest(d)][:MAX_SELECTED]
    if request.htmx and action == "page":
        query = inventory.ListQuery.from_params(QueryDict(back.lstrip("?")))
        context = {
            "repository": repository,
            "back": back,
            "matching": inventory.top_level(repository, query).count(),
            **_selection_context(request, repository, set(request.POST.getlist("shown"))),
        }
        return render(request, "image_management.html#selection-bar", context)
    return HttpResponseRedirect(list_url(repository, request.POST.get("here", "")), status=303)


@require_GET
@vary_on_htmx
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
        "pull_command": f"docker pull {_pull_reference(repository.name, manifest.digest)}",
        "layers": inventory.layers_of(manifest),
        "layer_users": inventory.layer_users(manifest),
        "children": [(entry.child, entry.child_platform) for entry in manifest.entries.all()],
        "referrers": list(manifest.referrers.all()),
        "parents": [entry.index for entry in manifest.parent_entries.all()],
        "platforms": inventory.platforms_of(manifest),
        "labels": first_key_values(manifest.labels),
        "annotations": first_key_values(manifest.annotations),
        "stale_months": settings.STALE_AFTER_MONTHS,
    }
    return render_page(request, "image_detail.html", "panel", context)


def _pull_reference(repository: str, digest: str) -> str:
    """`host:port/name@digest` as docker pulls it: the registry's address without scheme."""
    host = (settings.REGISTRY_URL or "").split("://", 1)[-1].rstrip("/")
    return f"{host}/{repository}@{digest}" if host else f"{repository}@{digest}"


@dataclass(frozen=True)
class KeyValues:
    shown: list[tuple[str, str]]
    more: int


def first_key_values(mapping: object) -> KeyValues:
    """The first pairs by key, as many as fit KEY_VALUES_SHOWN and (counting each side up
    to the clipped text's cap) KEY_VALUES_CHARACTERS; `more` counts the rest."""
    if not isinstance(mapping, dict):
        return KeyValues([], 0)
    pairs = sorted((str(key), str(value)) for key, value in mapping.items())
    shown: list[tuple[str, str]] = []
    characters = 0
    for key, value in pairs[:KEY_VALUES_SHOWN]:
        characters += min(len(key), LONG_TEXT_LIMIT) + min(len(value), LONG_TEXT_LIMIT)
        if shown and characters > KEY_VALUES_CHARACTERS:
            break
        shown.append((key, value))
    return KeyValues(shown, len(pairs) - len(shown))


# -- preview and delete ----------------------------------------------------------------------


@dataclass(frozen=True)
class PreviewGroup:
    """One selected digest with what goes with it and what it leaves behind."""

    digest: str
    delete: list[deletion.PlannedItem]
    keep: list[deletion.KeptItem]


def _preview_groups(plan: deletion.DeletionPlan) -> list[PreviewGroup]:
    kept = defaultdict(list)
    for item in plan.keep:
        kept[item.group].append(item)
    groups = [PreviewGroup(group, items, kept.pop(group, [])) for group, items in plan.groups()]
    return groups + [PreviewGroup(group, [], items) for group, items in kept.items()]


def _repository_to_delete_from(request: HttpRequest, name: str) -> Repository:
    """403 before anything else: who may not delete learns nothing, not even what exists."""
    if not deletion.can_delete(request.user):
        raise PermissionDenied("deleting needs the hubimages.delete_manifest permission")
    return get_object_or_404(Repository, name=name)


def _preview(
    request: HttpRequest,
    repository: Repository,
    plan: deletion.DeletionPlan,
    *,
    notice: str = "",
    error: str = "",
    status: int = 200,
) -> HttpResponse:
    """The preview as a page, or as the dialog htmx swaps into `#panel`."""
    refused = {item.digest for item in plan.refused}
    back = request.GET.get("back") or request.POST.get("back") or ""
    guards = preview.guard_rails(plan)
    context = {
        "repository": repository,
        "plan": plan,
        "back": back,
        "list_url": list_url(repository, back),
        "groups": _preview_groups(plan),
        "sharing": preview.plan_sharing(plan),
        "guards": guards,
        "in_use": [item for item in plan.delete if guards.get(item.digest, _NO_GUARD).pulled_at],
        "latest": [item for item in plan.delete if guards.get(item.digest, _NO_GUARD).latest],
        "signatures": [
            item for item in plan.delete if guards.get(item.digest, _NO_GUARD).signature
        ],
        "active_count": sum(1 for guard in guards.values() if guard.active),
        "stale_months": settings.STALE_AFTER_MONTHS,
        # With refusals, the rest of the selection, to preview without them.
        "deletable": [d for d in plan.selected if d not in refused] if refused else [],
        "notice": notice,
        "error": error,
    }
    return render_page(request, "delete_preview.html", "dialog", context, status=status)


_NO_GUARD = preview.Guards()


@require_http_methods(["GET", "POST"])
@vary_on_htmx
def delete_preview(request: HttpRequest, name: str) -> HttpResponse:
    """The plan for the selection. The list sends it by POST (a page of 100 selected
    digests would not fit in a URL), links to a small selection by GET; it changes
    nothing either way."""
    repository = _repository_to_delete_from(request, name)
    params = request.POST if request.method == "POST" else request.GET
    digests = params.getlist("digest")[:MAX_SELECTED]
    return _preview(
        request, repository, deletion.plan_deletion(repository=repository, digests=digests)
    )


@require_POST
@vary_on_htmx
def delete_execute(request: HttpRequest, name: str) -> HttpResponse:
    """Start the deletion of exactly the previewed plan (its fingerprint came with the
    form) as a job, and follow it.

    The cheap checks come first, against the database: a plan that already differs, or that
    refuses part of the selection, never reaches the worker. The worker then re-reads the
    repository from the registry under its lease and checks once more."""
    repository = _repository_to_delete_from(request, name)
    digests = request.POST.getlist("digest")[:MAX_SELECTED]
    plan = deletion.plan_deletion(repository=repository, digests=digests)
    if plan.refused or not plan.delete:
        return _preview(request, repository, plan, status=422)
    if request.POST.get("fingerprint") != plan.fingerprint:
        return _preview(request, repository, plan, notice=CHANGED, status=409)
    if request.POST.get("confirm") != "yes":
        return _preview(request, repository, plan, error=UNCONFIRMED, status=422)
    if preview.needs_active_confirmation(plan) and request.POST.get("confirm_active") != "yes":
        return _preview(request, repository, plan, error=ACTIVE_UNCONFIRMED, status=422)
    job = jobs.start_deletion(
        repository=repository,
        digests=list(plan.selected),
        fingerprint=plan.fingerprint,
        user=request.user,
    )
    return _follow(request, job, back=request.POST.get("back", ""))


def _follow(request: HttpRequest, job: Job, *, back: str = "") -> HttpResponse:
    """Answer a request that started a job: its progress in place for htmx, else its page."""
    url = reverse("job", args=[job.pk]) + (f"?{urlencode({'back': back})}" if back else "")
    if request.htmx:
        # A deletion or a retention run replaces its preview; a sync shows under its button.
        partial = "status" if job.kind in SYNC_KINDS else "dialog"
        return render(request, f"job.html#{partial}", _job_context(request, job, back))
    return HttpResponseRedirect(url, status=303)


def _job_context(request: HttpRequest, job: Job, back: str) -> dict:
    repository = Repository.objects.filter(name=job.repository).first() if job.repository else None
    context = {
        "job": job,
        "back": back,
        "repository": repository,
        "list_url": list_url(repository, back) if repository else reverse("repositories"),
    }
    context["back_url"] = context["list_url"]
    if job.kind == Job.Kind.DELETION and job.finished:
        context["deletion"] = _deletion_summary(job.outcome)
        context["done_message"] = context["deletion"]["message"]
    if job.kind == Job.Kind.RETENTION:
        context["back_url"] = reverse("retention_policy", args=[job.params["policy"]])
        context["done_message"] = job.outcome.get("message", "")
    return context


def _deletion_summary(outcome: dict) -> dict:
    deleted = outcome.get("deleted", [])
    tags = sum(len(item.get("tags", [])) for item in deleted)
    reclaimed = outcome.get("reclaimed_bytes", 0)
    return {
        **outcome,
        "message": deleted_message(len(deleted), tags, reclaimed),
    }


@require_GET
@vary_on_htmx
def job(request: HttpRequest, job_id: int) -> HttpResponse:
    """A job's progress and outcome; the page refreshes itself while it runs (htmx polls
    its status, a plain page reloads). Its owner and admins may see it."""
    job = get_object_or_404(jobs.visible_to(request.user), pk=job_id)
    back = request.GET.get("back", "")[:1000]
    context = _job_context(request, job, back)
    if request.htmx and request.GET.get("in") == "dialog":
        if job.state == Job.State.SUCCEEDED and job.kind in (Job.Kind.DELETION, Job.Kind.RETENTION):
            # All went: back to where the user came from, with the message.
            messages.success(request, context["done_message"])
            return HttpResponseClientRedirect(context["back_url"])
        return render(request, "job.html#dialog-body", context)
    return render_page(request, "job.html", "status", context)


@require_GET
@vary_on_htmx
def job_list(request: HttpRequest) -> HttpResponse:
    """Recent jobs, newest first: admins see everyone's (and why what failed failed),
    others their own."""
    page = _paginate(
        jobs.visible_to(request.user).select_related("user"), JOBS_PER_PAGE, request.GET.get("page")
    )
    context = {"page": page, **_neighbours(page), "state": {}}
    return render_page(request, "jobs.html", "jobs", context)


@require_POST
def sync_now(request: HttpRequest, name: str = "") -> HttpResponse:
    """Admins: sync everything, or one repository, now (as a job the workers run)."""
    if not request.user.is_staff:
        raise PermissionDenied("syncing on demand is for admins")
    if name:
        get_object_or_404(Repository, name=name)
    started = jobs.start_sync(user=request.user, repository=name)
    return _follow(request, started)


def list_url(repository: Repository, back: str = "") -> str:
    """The list's URL with the search, filter, sort and page size the user came from.

    `back` is the list's query string, carried through the preview; only known parameters
    with allowed values survive, so it can never point anywhere else."""
    params = QueryDict(back.lstrip("?")[:1000])
    state = _list_state(inventory.ListQuery.from_params(params), _page_size(params.get("per_page")))
    page = params.get("page", "")
    encoded = _encode({**state, "page": page if page.isdigit() and page != "1" else None})
    url = reverse("image_management", args=[repository.name])
    return f"{url}?{encoded}" if encoded else url


def deleted_message(manifests: int, tags: int, reclaimed: int) -> str:
    """What was deleted and the bytes it frees, once the registry collects garbage."""
    return (
        f"Deleted {manifests} manifest{'s' if manifests != 1 else ''} and {tags} "
        f"tag{'s' if tags != 1 else ''}; {human_size(reclaimed)} "
        f"({reclaimed:,} bytes) will be freed at the next garbage collection."
    )


@require_GET
@vary_on_htmx
def deletion_history(request: HttpRequest) -> HttpResponse:
    """Every deletion, newest first, one row per operation opening onto its manifests;
    `?repository=` narrows to the repositories whose name holds that text.

    Any signed-in user may read it: whoever can see the list must be able to find out
    where an image went and who removed it, and the records hold nothing the list did
    not already show (plus a username)."""
    repository = request.GET.get("repository", "").strip()[:255]
    page = _paginate(history.entries(repository), HISTORY_PER_PAGE, request.GET.get("page"))
    state = {"repository": repository or None}
    export = reverse("deletion_history_csv")
    context = {
        "page": page,
        "rows": history.rows(page.object_list),
        **_neighbours(page),
        "repository": repository,
        "state": state,
        "export_url": f"{export}?{_encode(state)}" if repository else export,
        "waiting": storage.waiting_for_collection(),
    }
    return render_page(request, "deletion_history.html", "records", context)


class _Echo:
    """A file that hands back what is written to it, so `csv.writer` can stream."""

    def write(self, value: str) -> str:
        return value


@require_GET
def deletion_history_csv(request: HttpRequest) -> StreamingHttpResponse:
    """The history as CSV, one line per deleted manifest, with the same filter."""
    repository = request.GET.get("repository", "").strip()[:255]
    writer = csv.writer(_Echo())
    response = StreamingHttpResponse(
        (writer.writerow(line) for line in history.csv_rows(repository)),
        content_type="text/csv; charset=utf-8",
    )
    response["Content-Disposition"] = 'attachment; filename="deletion-history.csv"'
    return response


# -- retention policies (SPEC §8) --------------------------------------------------------------

RUNS_SHOWN = 10
RUN_CHANGED = "The registry changed since your preview: nothing was deleted. Check the new preview."


def _may_edit_policies(request: HttpRequest) -> None:
    """A policy deletes: editing or running one needs the delete permission."""
    if not deletion.can_delete(request.user):
        raise PermissionDenied("retention policies need the hubimages.delete_manifest permission")


@require_GET
def retention_policies(request: HttpRequest) -> HttpResponse:
    """Every policy: what it covers, its last run and what that freed, its next run."""
    context = {
        "policies": retention.policy_overview(),
        "can_edit": deletion.can_delete(request.user),
    }
    return render(request, "retention.html", context)


def _editor(
    request: HttpRequest,
    *,
    row: RetentionPolicy | None,
    form: PolicyForm,
    notice: str = "",
    error: str = "",
    status: int = 200,
    check: bool = True,
) -> HttpResponse:
    """The editor with the dry run of what its fields say (the whole page, or only the dry
    run for htmx); Run now only when that is the stored policy, unchanged. `check=False`
    for a blank new policy, which has nothing to complain about yet."""
    draft = form.validate() if check else None
    saved = retention.policy_of(row) if row is not None else None
    context = {
        "row": row,
        "form": form,
        "keep_choices": KEEP_CHOICES,
        "draft": draft,
        "preview": retention.dry_run(draft) if draft is not None else None,
        "is_saved": saved is not None
        and draft is not None
        and draft.effective_json() == saved.effective_json(),
        "policy_json": json.dumps(draft.as_json(), indent=2) if draft else "",
        "runs": row.runs.all()[:RUNS_SHOWN] if row is not None else [],
        "can_edit": deletion.can_delete(request.user),
        "notice": notice,
        "error": error,
        "checked": check,
    }
    return render_page(request, "retention_policy.html", "dry_run", context, status=status)


def _stored_policy(name: str) -> RetentionPolicy:
    return get_object_or_404(RetentionPolicy, name=name)


@require_GET
@vary_on_htmx
def retention_policy(request: HttpRequest, name: str) -> HttpResponse:
    row = _stored_policy(name)
    return _editor(request, row=row, form=PolicyForm.from_policy(retention.policy_of(row)))


@require_GET
def retention_new(request: HttpRequest) -> HttpResponse:
    _may_edit_policies(request)
    return _editor(request, row=None, form=PolicyForm.from_policy(None), check=False)


@require_POST
@vary_on_htmx
def retention_preview(request: HttpRequest) -> HttpResponse:
    """The dry run of the editor's fields as they stand, saved or not: htmx asks for it as
    you type; the Preview button gets the whole page (and a fresh empty rule row)."""
    _may_edit_policies(request)
    original = request.POST.get("original", "")
    row = RetentionPolicy.objects.filter(name=original).first() if original else None
    return _editor(request, row=row, form=PolicyForm.from_post(request.POST))


@require_POST
def retention_save(request: HttpRequest, name: str = "") -> HttpResponse:
    _may_edit_policies(request)
    row = _stored_policy(name) if name else None
    form = PolicyForm.from_post(request.POST)
    policy = form.validate()
    if policy is None:
        return _editor(request, row=row, form=form, status=422)
    try:
        saved = retention.save_policy(policy, original=row)
    except retention.PolicyExists as exists:
        form.errors.setdefault("name", []).append(f"{exists}: choose another name")
        return _editor(request, row=row, form=form, status=422)
    messages.success(request, f"Saved policy {saved.name}.")
    return HttpResponseRedirect(reverse("retention_policy", args=[saved.name]), status=303)


@require_POST
def retention_run(request: HttpRequest, name: str) -> HttpResponse:
    """Run now: exactly the previewed dry run (its `now` and fingerprint came with the
    form), or nothing and a fresh preview."""
    _may_edit_policies(request)
    row = _stored_policy(name)
    policy = retention.policy_of(row)
    form = PolicyForm.from_policy(policy)
    now = _aware_datetime(request.POST.get("now", ""))
    fingerprint = request.POST.get("fingerprint", "")
    refusal = {}
    if now is None or retention.dry_run(policy, now=now).fingerprint != fingerprint:
        # A junk time, or a plan that already differs in the database: no job, the fresh
        # preview at once.
        refusal = {"notice": RUN_CHANGED, "status": 409}
    elif request.POST.get("confirm") != "yes":
        refusal = {"error": UNCONFIRMED, "status": 422}
    if refusal:
        response = _editor(request, row=row, form=form, **refusal)
        if request.htmx:  # the dry run shows it, not the dialog the run would have opened
            response["HX-Retarget"] = "#dry-run"
            response["HX-Reswap"] = "outerHTML"
        return response
    job = jobs.start_retention(policy=row.name, now=now, fingerprint=fingerprint, user=request.user)
    return _follow(request, job)


def _aware_datetime(text: str) -> datetime | None:
    """The preview's `now` as the form carried it; None when it is not one."""
    try:
        value = parse_datetime(text.strip()[:40])
    except ValueError:
        return None
    return value if value is not None and value.tzinfo is not None else None


@require_POST
def retention_delete(request: HttpRequest, name: str) -> HttpResponse:
    """Delete the policy (its runs stay on record, under its name)."""
    _may_edit_policies(request)
    row = _stored_policy(name)
    row.delete()
    messages.success(request, f"Deleted policy {name}; its runs stay in the records.")
    return HttpResponseRedirect(reverse("retention_policies"), status=303)


@require_GET
def retention_export(request: HttpRequest, name: str) -> HttpResponse:
    policy = retention.policy_of(_stored_policy(name))
    response = HttpResponse(
        json.dumps(policy.as_json(), indent=2) + "\n", content_type="application/json"
    )
    response["Content-Disposition"] = f'attachment; filename="{policy.name}.json"'
    return response


@require_POST
def retention_import(request: HttpRequest) -> HttpResponse:
    """Store a policy from its JSON (pasted, or an uploaded file); a policy of the same
    name is replaced only when asked."""
    _may_edit_policies(request)
    upload = request.FILES.get("file")
    text = request.POST.get("policy", "")
    if upload is not None:
        text = upload.read(retention.MAX_IMPORT_BYTES + 1).decode("utf-8", errors="replace")
    problems: list[str] = []
    if len(text) > retention.MAX_IMPORT_BYTES:
        problems = [f"the file is larger than {retention.MAX_IMPORT_BYTES // 1000} kB"]
    else:
        try:
            policy = retention.parse_policy_json(text)
            row = retention.save_policy(policy, replace=request.POST.get("replace") == "yes")
        except retention.InvalidPolicy as invalid:
            problems = [str(error) for error in invalid.errors]
        except retention.PolicyExists as exists:
            problems = [f"{exists}: tick “Replace” to replace it"]
    if problems:
        context = {
            "policies": retention.policy_overview(),
            "can_edit": True,
            "import_errors": problems,
            "import_text": text,
        }
        return render(request, "retention.html", context, status=422)
    messages.success(request, f"Imported policy {row.name}.")
    return HttpResponseRedirect(reverse("retention_policy", args=[row.name]), status=303)
