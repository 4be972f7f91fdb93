"""The Registries page (SPEC §11), and the addresses of the time before several
registries."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, HttpResponsePermanentRedirect
from django.shortcuts import render
from django.utils.encoding import iri_to_uri
from django.views.decorators.http import require_GET

from hubimages.registries import health
from hubimages.registries.config import DEFAULT
from hubimages.web.access import rights, visible_registries

CAPABILITIES = (
    ("catalog", "Catalog readable"),
    ("delete", "Deletes enabled"),
    ("referrers", "Referrers API"),
    ("tag_paging", "Pages tag lists"),
)


@require_GET
def registry_list(request: HttpRequest) -> HttpResponse:
    """Each registry: its last sync and how it ended, its last notification, what it can
    do (as the workers last probed it), and when its garbage collector last ran. Admins
    see every registry, others those where a grant lets them see; each with how many of
    its repositories they see."""
    names = None if request.user.is_staff else [r.name for r in visible_registries(request)]
    registries = health.overview(rights(request).within(), names=names)
    context = {"registries": registries, "capability_labels": CAPABILITIES}
    return render(request, "registries.html", context)


def legacy_repository_url(request: HttpRequest, rest: str) -> HttpResponse:
    """/repositories/<name>/… as it was before several registries: the same page of the
    registry `default`, whatever the method (a 308 keeps a POST a POST)."""
    target = iri_to_uri(f"/r/{DEFAULT}/{rest}")
    if request.META.get("QUERY_STRING"):
        target += f"?{request.META['QUERY_STRING']}"
    return HttpResponsePermanentRedirect(target, preserve_request=True)
