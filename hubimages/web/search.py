"""Search across every registry (SPEC §11)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from hubimages.inventory import search
from hubimages.web.rendering import render_page, vary_on_htmx


@require_GET
@vary_on_htmx
def search_everywhere(request: HttpRequest) -> HttpResponse:
    """Where a digest, a tag or a repository lives, in every registry."""
    text = request.GET.get("q", "").strip()[:200]
    context = {"q": text, "found": search.everywhere(text), "limit": search.LIMIT}
    return render_page(request, "search.html", "results", context)
