"""The deletion history and its CSV."""

from __future__ import annotations

import csv

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.urls import reverse
from django.views.decorators.http import require_GET

from hubimages.deletion import history
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
    writer = csv.writer(_Echo())
    response = StreamingHttpResponse(
        (
            writer.writerow(line)
            for line in history.csv_rows(repository, registry, within=_within(request))
        ),
        content_type="text/csv; charset=utf-8",
    )
    response["Content-Disposition"] = 'attachment; filename="deletion-history.csv"'
    return response
