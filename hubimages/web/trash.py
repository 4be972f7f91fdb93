"""The Trash (SPEC §12): what deletions kept, each item's state as last checked, and the
buttons that start a check or a restore (jobs: a request never asks the registry)."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from hubimages.deletion import planning
from hubimages.jobs import queue
from hubimages.lib.audit import Actor
from hubimages.registries import rows as registry_rows
from hubimages.storage import collection
from hubimages.teams.rights import may_check_trash, restore_refusal
from hubimages.trash import listing
from hubimages.web.access import rights
from hubimages.web.jobs import follow_job
from hubimages.web.paging import neighbours, paginate
from hubimages.web.rendering import render_page, vary_on_htmx
from registry import media

TRASH_PER_PAGE = 20
ITEMS_SHOWN = 100  # a deletion opens onto its first items; Restore all takes them all


@require_GET
@vary_on_htmx
def trash(request: HttpRequest) -> HttpResponse:
    """Deletions newest first, each with what it kept and each item's state; `?registry=`
    narrows to one registry. Each user sees the deletions in the repositories they may
    see, as at the deletion history; checking and restoring take the deleter role (on the
    repository restored)."""
    mine = rights(request)
    registries = registry_rows.known()
    chosen = request.GET.get("registry", "")
    registry = next((r for r in registries if r.name == chosen), None)
    within = _deletions_seen(request)
    page = paginate(
        listing.operations(registry.name if registry else None, within=within),
        TRASH_PER_PAGE,
        request.GET.get("page"),
    )
    operations = listing.with_items(page.object_list, limit=ITEMS_SHOWN)
    checked = [registry.name] if registry else listing.registries()
    context = {
        "page": page,
        "operations": operations,
        **neighbours(page),
        "state": {"registry": registry.name if registry else None},
        "registry": registry,
        "registries": registries if len(registries) > 1 else [],
        "check_registries": [name for name in checked if may_check_trash(mine, name)],
        "waiting": collection.waiting_for_collection(registry, within=within),
        "reclaimed": collection.reclaimed(registry, within=within),
        "keep_days": settings.TRASH_KEEP_DAYS,
        "restorable": {
            op.deletion.pk
            for op in operations
            if mine.may_delete(op.deletion.registry, op.deletion.repository)
        },
    }
    return render_page(request, "trash.html", "operations", context)


@require_POST
def trash_check(request: HttpRequest) -> HttpResponse:
    """Check now: ask the registry about what its Trash holds, as a job; for those who may
    restore in that registry."""
    try:
        registry = registry_rows.get(request.POST.get("registry", "")[:40] or None)
    except registry_rows.UnknownRegistry as unknown:
        raise Http404(str(unknown)) from None
    if not may_check_trash(rights(request), registry.name):
        raise PermissionDenied(
            f"checking the Trash of {registry.name} needs the deleter role in it"
        )
    job = queue.start_trash_check(registry=registry.name, user=request.user)
    return follow_job(request, job)


@require_POST
def trash_restore(request: HttpRequest, operation: int) -> HttpResponse:
    """Restore the ticked items of a deletion, or all of it (`scope=all`), or its whole
    retention run (`scope=run`), as a job; a tag that now names another image moves back
    only with `move_tags`. 404 for a deletion the user may not see; 403 unless they may
    delete in every repository it (or its run) touched."""
    seen = listing.operations(within=_deletions_seen(request))
    deletion = get_object_or_404(seen, pk=operation)
    scope = request.POST.get("scope", "all")
    digests = [planning.normalize_digest(d) for d in request.POST.getlist("digest")]
    digests = [d for d in digests if media.is_digest(d)] if scope == "ticked" else []
    if scope == "ticked" and not digests:
        messages.error(request, "Tick the items to restore, or restore them all.")
        return HttpResponseRedirect(reverse("trash"), status=303)
    operations = [deletion]
    if scope == "run" and deletion.retention_run_id:
        operations = list(
            listing.operations().filter(retention_run=deletion.retention_run_id).reverse()
        )
    refusal = restore_refusal(rights(request), operations)
    if refusal:
        raise PermissionDenied(refusal)
    job = queue.start_restore(
        operations=operations,
        digests=digests,
        move_tags=request.POST.get("move_tags") == "yes",
        user=request.user,
        by=Actor.of(request),
    )
    return follow_job(request, job)


def _deletions_seen(request: HttpRequest):
    """The deletions the user may see: those in repositories they may see."""
    return rights(request).within(registry_field="registry", field="repository")
