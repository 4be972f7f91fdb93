"""Preview and delete: the plan of a selection, and Delete forever (SPEC §4)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_http_methods, require_POST

from hubimages.deletion import planning, preview
from hubimages.inuse import matching
from hubimages.jobs import queue
from hubimages.lib.audit import Actor
from hubimages.models import Repository
from hubimages.web.access import repository_to_delete_from, rights
from hubimages.web.jobs import follow_job
from hubimages.web.list_state import MAX_SELECTED, list_url
from hubimages.web.rendering import render_page, vary_on_htmx

CHANGED = "The registry changed since your preview: nothing was deleted. Check the new preview."
UNCONFIRMED = "Tick the box to confirm that you understand what will be deleted."
ACTIVE_UNCONFIRMED = (
    "Some of these items are active (not stale): tick the second box to delete them too."
)
IN_USE_UNCONFIRMED = (
    "Some of these items are in use: tick the box that says you delete them even though "
    "in use, or preview without them."
)


# -- preview and delete ----------------------------------------------------------------------


@dataclass(frozen=True)
class PreviewGroup:
    """One selected digest with what goes with it (in words too) and what it leaves
    behind."""

    digest: str
    delete: list[planning.PlannedItem]
    keep: list[planning.KeptItem]

    @property
    def selected(self) -> planning.PlannedItem | None:
        first = self.delete[0] if self.delete else None
        return first if first and first.digest == self.digest else None

    @property
    def cascade(self) -> list[planning.PlannedItem]:
        return [item for item in self.delete if item.digest != self.digest]

    @property
    def words(self) -> str:
        return preview.cascade_words(self.cascade)

    @property
    def rows(self) -> list[tuple[planning.PlannedItem, str, str]]:
        """Each deleted item with its kind and why it goes, in words."""
        reasons = preview.plain_reasons(self.delete)
        return [(item, preview.plain_kind(item), reasons[item.digest]) for item in self.delete]


def _preview_groups(plan: planning.DeletionPlan) -> list[PreviewGroup]:
    kept = defaultdict(list)
    for item in plan.keep:
        kept[item.group].append(item)
    groups = [PreviewGroup(group, items, kept.pop(group, [])) for group, items in plan.groups()]
    return groups + [PreviewGroup(group, [], items) for group, items in kept.items()]


def _preview(
    request: HttpRequest,
    repository: Repository,
    plan: planning.DeletionPlan,
    *,
    notice: str = "",
    error: str = "",
    status: int = 200,
    allow_in_use: bool = False,
) -> HttpResponse:
    """The preview as a page, or as the dialog htmx swaps into `#panel`."""
    refused = {item.digest for item in plan.refused}
    back = request.GET.get("back") or request.POST.get("back") or ""
    guards = preview.guard_rails(plan)
    in_use_deleted = [item for item in plan.delete if item.in_use]
    groups = _preview_groups(plan)
    going_with = [item for group in groups for item in group.cascade]
    context = {
        "repository": repository,
        "plan": plan,
        "back": back,
        "list_url": list_url(repository, back),
        "groups": groups,
        "selected_going": sum(1 for group in groups if group.selected),
        "going_with": len(going_with),
        "going_with_words": preview.cascade_words(going_with),
        "sharing": preview.plan_sharing(plan, visible=_visible_in(request, repository)),
        "guards": guards,
        "recently_pulled": [
            item for item in plan.delete if guards.get(item.digest, _NO_GUARD).pulled_at
        ],
        "latest": [item for item in plan.delete if guards.get(item.digest, _NO_GUARD).latest],
        "signatures": [
            item for item in plan.delete if guards.get(item.digest, _NO_GUARD).signature
        ],
        "active_count": sum(1 for guard in guards.values() if guard.active),
        "undated_count": sum(1 for guard in guards.values() if guard.undated),
        # SPEC §13: kept because a live report says they run, unless the override is on.
        "allow_in_use": allow_in_use,
        "in_use_kept": [item for item in plan.keep if item.in_use],
        "in_use_deleted": in_use_deleted,
        "in_use_sources": sorted({u.source for i in in_use_deleted for u in i.in_use.sources}),
        "blocking": matching.blocking([repository.registry.name]),
        "stale_months": settings.STALE_AFTER_MONTHS,
        # With refusals, the rest of the selection, to preview without them.
        "deletable": [d for d in plan.selected if d not in refused] if refused else [],
        "notice": notice,
        "error": error,
    }
    return render_page(request, "delete_preview.html", "dialog", context, status=status)


_NO_GUARD = preview.Guards()


def _visible_in(request: HttpRequest, repository: Repository):
    """Which other repositories of this one's registry the preview may name."""
    mine = rights(request)
    registry = repository.registry.name
    return lambda name: mine.may_view(registry, name)


@require_http_methods(["GET", "POST"])
@vary_on_htmx
def delete_preview(request: HttpRequest, registry: str, name: str) -> HttpResponse:
    """The plan for the selection. The list sends it by POST (a page of 100 selected
    digests would not fit in a URL), links to a small selection by GET; it changes
    nothing either way."""
    repository = repository_to_delete_from(request, registry, name)
    params = request.POST if request.method == "POST" else request.GET
    digests = params.getlist("digest")[:MAX_SELECTED]
    allow = params.get("allow_in_use") == "yes"
    plan = planning.plan_deletion(repository=repository, digests=digests, allow_in_use=allow)
    return _preview(request, repository, plan, allow_in_use=allow)


@require_POST
@vary_on_htmx
def delete_execute(request: HttpRequest, registry: str, name: str) -> HttpResponse:
    """Start the deletion of exactly the previewed plan (its fingerprint came with the
    form) as a job, and follow it.

    The cheap checks come first, against the database: a plan that already differs, or that
    refuses part of the selection, never reaches the worker. The worker then re-reads the
    repository from the registry under its lease and checks once more."""
    repository = repository_to_delete_from(request, registry, name)
    digests = request.POST.getlist("digest")[:MAX_SELECTED]
    allow = request.POST.get("allow_in_use") == "yes"
    plan = planning.plan_deletion(repository=repository, digests=digests, allow_in_use=allow)

    def again(**why: object) -> HttpResponse:
        return _preview(request, repository, plan, allow_in_use=allow, **why)

    if plan.refused or not plan.delete:
        return again(status=422)
    if request.POST.get("fingerprint") != plan.fingerprint:
        return again(notice=CHANGED, status=409)
    if request.POST.get("confirm") != "yes":
        return again(error=UNCONFIRMED, status=422)
    if preview.needs_active_confirmation(plan) and request.POST.get("confirm_active") != "yes":
        return again(error=ACTIVE_UNCONFIRMED, status=422)
    if any(item.in_use for item in plan.delete) and request.POST.get("confirm_in_use") != "yes":
        return again(error=IN_USE_UNCONFIRMED, status=422)
    job = queue.start_deletion(
        repository=repository,
        digests=list(plan.selected),
        fingerprint=plan.fingerprint,
        user=request.user,
        allow_in_use=allow,
        in_use=plan.in_use_deleted(),
        by=Actor.of(request),
    )
    return follow_job(request, job, back=request.POST.get("back", ""))
