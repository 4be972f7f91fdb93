"""Search across every registry (SPEC §11)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from hubimages.inventory import search
from hubimages.web.access import rights
from hubimages.web.rendering import render_page, vary_on_htmx


@require_GET
@vary_on_htmx
def search_everywhere(request: HttpRequest) -> HttpResponse:
    """Where a digest, a tag or a repository lives, in every registry the user sees into:
    only the repositories they may see."""
    text = request.GET.get("q", "").strip()[:200]
    found = search.everywhere(text, within=rights(request).within())
    context = {"q": text, "found": found, "limit": search.LIMIT}
    return render_page(request, "search.html", "results", context)
