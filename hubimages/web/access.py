"""Who may do what on the pages, checked before anything else: a refusal tells nothing,
not even what exists."""

from __future__ import annotations

from functools import wraps

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.shortcuts import get_object_or_404

from hubimages.deletion import planning
from hubimages.models import Repository


def repository_or_404(registry: str, name: str) -> Repository:
    """The repository `name` of the registry `registry` (with its registry loaded)."""
    rows = Repository.objects.select_related("registry")
    return get_object_or_404(rows, registry__name=registry, name=name)


def repository_to_delete_from(request: HttpRequest, registry: str, name: str) -> Repository:
    """403 before anything else: who may not delete learns nothing, not even what exists."""
    if not planning.can_delete(request.user):
        raise PermissionDenied("deleting needs the hubimages.delete_manifest permission")
    return repository_or_404(registry, name)


def may_edit_policies(request: HttpRequest) -> None:
    """A policy deletes: editing or running one needs the delete permission."""
    if not planning.can_delete(request.user):
        raise PermissionDenied("retention policies need the hubimages.delete_manifest permission")


def staff_only(view):
    """Pages for administrators (`is_staff`): anyone else gets 403."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs):
        if not request.user.is_staff:
            raise PermissionDenied("this page is for administrators")
        return view(request, *args, **kwargs)

    return wrapper
