"""The In use page (SPEC §13): every source of in-use reports, how old its last report is,
how many references it holds, whether it is required, and whether it is live or expired."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from hubimages.inuse import matching


@require_GET
def in_use_sources(request: HttpRequest) -> HttpResponse:
    context = {"sources": matching.sources(), "blocking": matching.blocking()}
    return render(request, "in_use.html", context)
