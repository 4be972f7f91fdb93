"""Jobs as people follow them: the list, one job's page, and Sync now."""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRedirect

from hubimages.jobs import queue
from hubimages.lib.formatting import human_size, plural
from hubimages.models import Deletion, Job, Registry, Repository
from hubimages.registries import rows
from hubimages.web.access import repository_to_view, rights
from hubimages.web.list_state import list_url
from hubimages.web.paging import neighbours, paginate
from hubimages.web.rendering import render_page, vary_on_htmx

JOBS_PER_PAGE = 50
SYNC_KINDS = (Job.Kind.SYNC, Job.Kind.SYNC_REPOSITORY)


def follow_job(request: HttpRequest, job: Job, *, back: str = "") -> HttpResponse:
    """Answer a request that started a job: its progress in place for htmx, else its page."""
    url = reverse("job", args=[job.pk]) + (f"?{urlencode({'back': back})}" if back else "")
    if request.htmx:
        # A deletion or a retention run replaces its preview; a sync shows under its button.
        partial = "status" if job.kind in SYNC_KINDS else "dialog"
        return render(request, f"job.html#{partial}", _job_context(request, job, back))
    return HttpResponseRedirect(url, status=303)


def _job_context(request: HttpRequest, job: Job, back: str) -> dict:
    repository = None
    if job.repository:
        repository = (
            Repository.objects.select_related("registry")
            .filter(registry__name=job.registry or "default", name=job.repository)
            .first()
        )
    context = {
        "job": job,
        "back": back,
        "repository": repository,
        "list_url": list_url(repository, back) if repository else reverse("repositories"),
    }
    context["back_url"] = context["list_url"]
    context["deletions"] = _deletions_of(request, job)
    if job.kind == Job.Kind.DELETION and job.finished:
        context["deletion"] = _deletion_summary(job.outcome)
        context["done_message"] = context["deletion"]["message"]
    if job.kind == Job.Kind.RETENTION:
        context["back_url"] = reverse("retention_policy", args=[job.params["policy"]])
        context["done_message"] = job.outcome.get("message", "")
    if job.kind in (Job.Kind.RESTORE, Job.Kind.TRASH_CHECK):
        context["back_url"] = reverse("trash")
        context["done_message"] = job.outcome.get("message", "")
    return context


def _deletions_of(request: HttpRequest, job: Job) -> list[Deletion]:
    """The deletions the job made ("Deletion #12", as History and the CSV name them), in
    the repositories the user may see. One query."""
    if job.kind not in (Job.Kind.DELETION, Job.Kind.RETENTION):
        return []
    made = Deletion.objects.filter(Q(job=job) | Q(retention_run__job=job))
    within = rights(request).within(registry_field="registry", field="repository")
    return list((made.filter(within) if within is not None else made).order_by("pk"))


def _deletion_summary(outcome: dict) -> dict:
    deleted = outcome.get("deleted", [])
    tags = sum(len(item.get("tags", [])) for item in deleted)
    reclaimed = outcome.get("reclaimed_bytes", 0)
    return {
        **outcome,
        "message": deleted_message(len(deleted), tags, reclaimed),
    }


def _visible(request: HttpRequest):
    """The jobs this user may follow (`queue.visible_to`)."""
    within = rights(request).within(registry_field="registry_name", field="repository")
    return queue.visible_to(request.user, within)


@require_GET
@vary_on_htmx
def job(request: HttpRequest, job_id: int) -> HttpResponse:
    """A job's progress and outcome; the page refreshes itself while it runs (htmx polls
    its status, a plain page reloads). Its owner and admins may see it."""
    job = get_object_or_404(_visible(request), pk=job_id)
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
    """Recent jobs, newest first: admins see everyone's in the repositories they may see
    (and why what failed failed), others their own."""
    page = paginate(
        _visible(request).select_related("user"),
        JOBS_PER_PAGE,
        request.GET.get("page"),
    )
    context = {"page": page, **neighbours(page), "state": {}}
    return render_page(request, "jobs.html", "jobs", context)


@require_POST
def sync_now(request: HttpRequest, registry: str = "", name: str = "") -> HttpResponse:
    """Admins: sync every registry, one registry or one repository now (as jobs the workers
    run, one a registry). Several jobs are followed on the Jobs page. A repository the
    admin may not see is not found, as on every page."""
    if name:
        repository_to_view(request, registry, name)
    if not request.user.is_staff:
        raise PermissionDenied("syncing on demand is for admins")
    if name:
        names = [registry]
    elif registry:
        names = [get_object_or_404(Registry, name=registry, configured=True).name]
    else:
        rows.ensure_rows()
        names = list(Registry.objects.filter(configured=True).values_list("name", flat=True))
    started = [
        queue.start_sync(registry=each, user=request.user, repository=name) for each in names
    ]
    if not started:
        messages.error(request, "No registry is configured: set REGISTRY_URL or REGISTRIES_FILE.")
        return HttpResponseRedirect(reverse("repositories"), status=303)
    if len(started) == 1:
        return follow_job(request, started[0])
    messages.success(request, f"Started a sync of each of {len(started)} registries.")
    if request.htmx:
        return HttpResponseClientRedirect(reverse("jobs"))
    return HttpResponseRedirect(reverse("jobs"), status=303)


def deleted_message(manifests: int, tags: int, reclaimed: int) -> str:
    """What was deleted and the bytes it frees, once the registry collects garbage."""
    return (
        f"Deleted {plural(manifests, 'manifest')} and {plural(tags, 'tag')}; "
        f"{human_size(reclaimed)} "
        f"({reclaimed:,} bytes) will be freed at the next garbage collection."
    )
