"""The In use page (SPEC §13): every source of in-use reports, how old its last report is,
how many references it holds, whether it is required, and whether it is live or expired;
to a user who does not see everything (SPEC §14), only the sources naming a registry where
they hold a grant, their references counted on the repositories they see."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from hubimages.inuse import matching
from hubimages.models import InUseSource
from hubimages.web.access import rights, visible_registries


@require_GET
def in_use_sources(request: HttpRequest) -> HttpResponse:
    mine = rights(request)
    if mine.sees_everything():
        context = {"sources": matching.sources(), "blocking": matching.blocking()}
    else:
        registries = [registry.name for registry in visible_registries(request)]

        def sees(registry: str, repository: str) -> bool:
            return mine.may_view(registry, repository)

        context = {
            "sources": matching.sources(registries=registries, sees=sees),
            "blocking": matching.blocking(registries),
        }
        # Sources there are, none on a registry of theirs: say so, not "no reports yet".
        context["hidden"] = not context["sources"] and InUseSource.objects.exists()
    return render(request, "in_use.html", context)
