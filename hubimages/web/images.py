"""A repository's Image Management list, its selection kept on the server, and one
image's details."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, QueryDict
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from hubimages.deletion import planning
from hubimages.inuse import matching
from hubimages.inventory import details, lists, status
from hubimages.models import Manifest, Repository
from hubimages.registries import rows as registry_rows
from hubimages.web.access import repository_to_delete_from, repository_to_view, rights
from hubimages.web.list_state import MAX_SELECTED, list_state, list_url
from hubimages.web.paging import ListPaginator, neighbours, page_size_from
from hubimages.web.rendering import (
    encode_state,
    render_page,
    sort_columns,
    url_with,
    vary_on_htmx,
    wants_partial,
)
from hubimages.web.templatetags import LONG_TEXT_LIMIT
from registry import media

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
STATUS_LABELS = (("", "Any"), ("active", "Active"), ("unknown", "Unknown"), ("stale", "Stale"))
# The list's columns that sort, in the order shown; a first click sorts biggest/newest first.
SORTABLE_COLUMNS = (
    ("size", "Size"),
    ("last_pushed", "Last pushed"),
    ("last_pulled", "Last pulled"),
)


def _narrowed_by(query: lists.ListQuery) -> list[str]:
    """The filter and status in force, as the form names them, for the empty list."""
    return [
        *(f"Filter by: {label}" for value, label in FILTER_LABELS[1:] if value == query.filter),
        *(f"Status: {label}" for value, label in STATUS_LABELS[1:] if value == query.status),
    ]


def _same_query(params: QueryDict, encoded: str) -> bool:
    mine = sorted((k, v) for k, values in params.lists() for v in values)
    return mine == sorted((k, v) for k, values in QueryDict(encoded).lists() for v in values)


@require_GET
@vary_on_htmx
def image_management(request: HttpRequest, registry: str, name: str) -> HttpResponse:
    """The list. Its URL is the truth: a URL that says the same view another way (an empty
    search, a default, junk, a page past the end) is redirected to the one way, so what
    people bookmark and share is short and always shows what it says."""
    repository = repository_to_view(request, registry, name)
    if wants_partial(request) and request.GET.get("since") == str(repository.revision):
        # The list's poll: nothing changed since it was drawn, so htmx swaps nothing.
        return HttpResponse(status=204)
    query = lists.ListQuery.from_params(request.GET)
    per_page = page_size_from(request.GET.get("per_page"))
    found = lists.search(repository, query.search) if query.search else None
    rows = lists.with_details(lists.top_level(repository, query, found=found))
    paginator = ListPaginator(rows, per_page, repository, query, found)
    page = paginator.get_page(request.GET.get("page"))
    matching.annotate(repository.registry_id, page.object_list)
    status.annotate(page.object_list)
    view = list_state(query, per_page)
    state = {**view, "page": page.number if page.number != 1 else None}
    here = url_with(request.path, encode_state(state))
    if not request.htmx and not _same_query(request.GET, encode_state(state)):
        return HttpResponseRedirect(here)
    context = {
        "repository": repository,
        "query": query,
        "page": page,
        "per_page": per_page,
        "page_sizes": settings.PAGE_SIZES,
        "default_page_size": page_size_from(None),
        "state": state,
        # Carried through the delete preview, so the list comes back as the user left it.
        "back": encode_state(view),
        "here": encode_state(state),
        "filters": FILTER_LABELS,
        "statuses": STATUS_LABELS,
        "narrowed_by": _narrowed_by(query),
        "columns": sort_columns(query.sort, SORTABLE_COLUMNS),
        **neighbours(page),
        **_selection_context(request, repository, {row.digest for row in page}),
        "matching": page.paginator.count,
        "stale_months": settings.STALE_AFTER_MONTHS,
        "sync_url": reverse("sync_repository", args=[registry, repository.name]),
        "may_delete": rights(request).may_delete(registry, repository.name),
    }
    response = render_page(request, "image_management.html", "rows", context)
    if request.htmx and str(page.number) != request.GET.get("page", "1"):
        # A page past the end (the last rows went meanwhile): the address bar says where.
        response["HX-Replace-Url"] = here
    return response


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
    if not rights(request).may_delete(repository.registry.name, repository.name):
        return {"selected": set(), "off_page": [], "selected_count": 0, "frees": None}
    selected = _selected(request, repository)
    frees = None
    if selected:
        plan = planning.plan_deletion(repository=repository, digests=selected)
        frees = plan.reclaimable_bytes
    return {
        "selected": set(selected),
        "off_page": [digest for digest in selected if digest not in on_page],
        "selected_count": len(selected),
        "frees": frees,
        "select_limit": MAX_SELECTED,
    }


@require_POST
def selection(request: HttpRequest, registry: str, name: str) -> HttpResponse:
    """Change the selection: `page` makes the digests `shown` on a page what was ticked
    there (the others stay selected), `all` selects every row matching the list's query,
    `clear` empties it. htmx gets the selection bar back; without JavaScript, the list."""
    repository = repository_to_delete_from(request, registry, name)
    key = _selection_key(repository)
    current = request.session.get(key, [])
    action = request.POST.get("action", "page")
    back = request.POST.get("back", "")[:1000]
    if action == "clear":
        chosen: list[str] = []
    elif action == "all":
        query = lists.ListQuery.from_params(QueryDict(back.lstrip("?")))
        matching = lists.top_level(repository, query).values_list("digest", flat=True)
        chosen = list(dict.fromkeys([*current, *matching[:MAX_SELECTED]]))
    else:
        shown = set(request.POST.getlist("shown"))
        ticked = request.POST.getlist("digest")
        chosen = list(dict.fromkeys([d for d in current if d not in shown] + ticked))
    request.session[key] = [d for d in chosen if media.is_digest(d)][:MAX_SELECTED]
    if request.htmx and action == "page":
        query = lists.ListQuery.from_params(QueryDict(back.lstrip("?")))
        context = {
            "repository": repository,
            "may_delete": True,
            "back": back,
            "matching": lists.top_level(repository, query).count(),
            **_selection_context(request, repository, set(request.POST.getlist("shown"))),
        }
        return render(request, "image_management.html#selection-bar", context)
    # The preview's Cancel sends the list's address as `back`, the list itself as `here`.
    here = request.POST.get("here") or back
    return HttpResponseRedirect(list_url(repository, here), status=303)


@require_GET
@vary_on_htmx
def image_detail(request: HttpRequest, registry: str, name: str, digest: str) -> HttpResponse:
    if not media.is_digest(digest):
        raise Http404("not a digest")
    repository = repository_to_view(request, registry, name)
    mine = rights(request)
    try:
        manifest = details.manifest_detail(repository, digest)
    except Manifest.DoesNotExist:
        raise Http404("no such manifest in this repository") from None
    matching.annotate(repository.registry_id, [manifest])
    status.annotate([manifest])
    context = {
        "repository": repository,
        "manifest": manifest,
        "pull_command": f"docker pull {_pull_reference(repository, manifest.digest)}",
        "also_in": details.also_in(
            manifest,
            within=mine.within(
                registry_field="repository__registry__name", field="repository__name"
            ),
        ),
        "may_delete": mine.may_delete(registry, repository.name),
        "layers": details.layers_of(manifest),
        "layer_users": details.layer_users(manifest),
        "children": [(entry.child, entry.child_platform) for entry in manifest.entries.all()],
        "referrers": list(manifest.referrers.all()),
        "parents": [entry.index for entry in manifest.parent_entries.all()],
        "platforms": lists.platforms_of(manifest),
        "labels": first_key_values(manifest.labels),
        "annotations": first_key_values(manifest.annotations),
        "stale_months": settings.STALE_AFTER_MONTHS,
    }
    return render_page(request, "image_detail.html", "panel", context)


def _pull_reference(repository: Repository, digest: str) -> str:
    """`host:port/name@digest` as docker pulls it: the registry's address without scheme."""
    config = registry_rows.configuration(repository.registry.name)
    host = config.host if config else repository.registry.url.split("://", 1)[-1].rstrip("/")
    return f"{host}/{repository.name}@{digest}" if host else f"{repository.name}@{digest}"


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
