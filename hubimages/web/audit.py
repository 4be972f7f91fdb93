"""The audit log's page and its exports (SPEC §14), for administrators: filters by who,
action and days, paged, and the same filtered entries as CSV or JSON, streamed."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.urls import reverse
from django.views.decorators.http import require_GET

from hubimages.lib import audit
from hubimages.web.access import staff_only
from hubimages.web.history import _Echo
from hubimages.web.paging import neighbours, paginate
from hubimages.web.rendering import encode_state, render_page, url_with, vary_on_htmx

PER_PAGE = 50


@require_GET
@staff_only
@vary_on_htmx
def audit_log(request: HttpRequest) -> HttpResponse:
    filters = audit.Filters.parse(request.GET)
    page = paginate(audit.entries(filters), PER_PAGE, request.GET.get("page"))
    state = filters.as_query()
    encoded = encode_state(state)
    context = {
        "page": page,
        **neighbours(page),
        "filters": filters,
        "filtered": any(state.values()),
        "state": state,
        "actions": audit.Action.choices,
        "csv_url": url_with(reverse("audit_csv"), encoded),
        "json_url": url_with(reverse("audit_json"), encoded),
    }
    return render_page(request, "audit.html", "entries", context)


@require_GET
@staff_only
def audit_csv(request: HttpRequest) -> StreamingHttpResponse:
    writer = csv.writer(_Echo())
    rows = audit.csv_rows(audit.entries(audit.Filters.parse(request.GET)))
    response = StreamingHttpResponse(
        (writer.writerow(line) for line in rows), content_type="text/csv; charset=utf-8"
    )
    response["Content-Disposition"] = 'attachment; filename="audit.csv"'
    return response


@require_GET
@staff_only
def audit_json(request: HttpRequest) -> StreamingHttpResponse:
    """`{"entries": [...]}`, newest first, written as it is read."""
    rows = audit.entries(audit.Filters.parse(request.GET))
    response = StreamingHttpResponse(_json_lines(rows), content_type="application/json")
    response["Content-Disposition"] = 'attachment; filename="audit.json"'
    return response


def _json_lines(rows) -> Iterator[str]:
    yield '{"entries": ['
    for i, entry in enumerate(rows.iterator(chunk_size=500)):
        yield ("," if i else "") + "\n" + json.dumps(audit.as_json(entry))
    yield "\n]}\n"
