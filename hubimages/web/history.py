"""The deletion history and its CSV."""

from __future__ import annotations

import csv

from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.urls import reverse
from django.views.decorators.http import require_GET

from hubimages.deletion import history
from hubimages.models import Deletion
from hubimages.storage import collection
from hubimages.web.access import rights
from hubimages.web.paging import neighbours, paginate
from hubimages.web.rendering import encode_state, render_page, vary_on_htmx

HISTORY_PER_PAGE = 50


@require_GET
@vary_on_htmx
def deletion_history(request: HttpRequest) -> HttpResponse:
    """Every deletion, newest first, one row per operation opening onto its manifests;
    `?repository=` narrows to the repositories whose name holds that text.

    Each user reads the deletions in the repositories they may see: whoever can see the
    list must be able to find out where an image went and who removed it, and the records
    hold nothing the list did not already show (plus a username)."""
    repository = request.GET.get("repository", "").strip()[:255]
    registry = request.GET.get("registry", "").strip()[:40]
    page = paginate(
        history.entries(repository, registry, within=_within(request)),
        HISTORY_PER_PAGE,
        request.GET.get("page"),
    )
    state = {"registry": registry or None, "repository": repository or None}
    export = reverse("deletion_history_csv")
    context = {
        "page": page,
        "rows": history.rows(page.object_list),
        **neighbours(page),
        "repository": repository,
        "state": state,
        "registry": registry,
        "export_url": f"{export}?{encode_state(state)}" if repository or registry else export,
        "waiting": collection.waiting_for_collection(within=_within(request)),
    }
    return render_page(request, "deletion_history.html", "records", context)


def _within(request: HttpRequest):
    """The deletions the user may read: those in repositories they may see."""
    return rights(request).within(registry_field="registry", field="repository")


class _Echo:
    """A file that hands back what is written to it, so `csv.writer` can stream."""

    def write(self, value: str) -> str:
        return value


@require_GET
def deletion_history_csv(request: HttpRequest) -> StreamingHttpResponse:
    """The history as CSV, one line per deleted manifest, with the same filter."""
    repository = request.GET.get("repository", "").strip()[:255]
    registry = request.GET.get("registry", "").strip()[:40]
    lines = history.csv_rows(repository, registry, within=_within(request))
    return _csv_response(lines, "deletion-history.csv")


@require_GET
def deletion_csv(request: HttpRequest, deletion: int) -> StreamingHttpResponse:
    """One deletion as CSV, the same lines as in the history's: for whoever may read it in
    the history (its repository one they may see), else 404, as a job of someone else."""
    within = _within(request)
    readable = Deletion.objects.filter(pk=deletion)
    if not (readable.filter(within) if within is not None else readable).exists():
        raise Http404("no such deletion")
    lines = history.csv_rows(within=within, deletion=deletion)
    return _csv_response(lines, f"deletion-{deletion}.csv")


def _csv_response(lines, filename: str) -> StreamingHttpResponse:
    writer = csv.writer(_Echo())
    response = StreamingHttpResponse(
        (writer.writerow(line) for line in lines), content_type="text/csv; charset=utf-8"
    )
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
