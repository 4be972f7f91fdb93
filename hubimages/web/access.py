"""Who may do what on the pages (SPEC §14), checked before anything else.

A repository the user may not see answers 404, exactly as one that does not exist: its
existence does not leak. An action on something they may see but not change answers 403,
saying what it needs. The rights are read once per request (`rights_of`)."""

from __future__ import annotations

from functools import wraps

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest
from django.shortcuts import get_object_or_404

from hubimages.models import Registry, Repository
from hubimages.registries import rows as registry_rows
from hubimages.teams.rights import Rights, rights_of

NOT_FOUND = "no such repository"


def rights(request: HttpRequest) -> Rights:
    return rights_of(request)


def repository_or_404(registry: str, name: str) -> Repository:
    """The repository `name` of the registry `registry` (with its registry loaded)."""
    rows = Repository.objects.select_related("registry")
    return get_object_or_404(rows, registry__name=registry, name=name)


def repository_to_view(request: HttpRequest, registry: str, name: str) -> Repository:
    """404 for a repository the user may not see, before the database is asked: the same
    answer as for one that does not exist."""
    if not rights_of(request).may_view(registry, name):
        raise Http404(NOT_FOUND)
    return repository_or_404(registry, name)


def repository_to_delete_from(request: HttpRequest, registry: str, name: str) -> Repository:
    """404 unless the user may see it; 403 unless they may delete in it."""
    mine = rights_of(request)
    if not mine.may_view(registry, name):
        raise Http404(NOT_FOUND)
    if not mine.may_delete(registry, name):
        raise PermissionDenied(
            f"deleting in {registry}/{name} needs the deleter role on it; you are a viewer"
        )
    return repository_or_404(registry, name)


def visible_registries(request: HttpRequest) -> list[Registry]:
    """The registries (configured first, then by name) where the user holds a grant; every
    one for who sees everything."""
    known = registry_rows.known()
    mine = rights_of(request)
    if mine.sees_everything():
        return known
    granted = set(mine.registries())
    return [registry for registry in known if registry.name in granted]


def staff_only(view):
    """Pages for administrators (`is_staff`): anyone else gets 403."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs):
        if not request.user.is_staff:
            raise PermissionDenied("this page is for administrators")
        return view(request, *args, **kwargs)

    return wrapper
