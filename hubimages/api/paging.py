"""`{"count", "next", "previous", "results"}` pages, and the parameter check every endpoint
that takes query parameters shares."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from urllib.parse import urlencode

from django.core.paginator import Paginator
from django.http import HttpRequest
from ninja import Schema

from hubimages.api.errors import ApiError
from hubimages.api.schemas import PageQuery


def reject_unknown_parameters(request: HttpRequest, query: type[Schema]) -> None:
    """422 for a parameter the endpoint does not take, or one given twice: `?stauts=stale`
    silently listing every image is how a cleanup script deletes what it meant to keep,
    and which of `status=stale&status=active` wins is a guess it must not depend on."""
    known = set(query.model_fields)
    unknown = sorted(set(request.GET) - known)
    if unknown:
        raise ApiError(
            422,
            "invalid_request",
            f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: "
            f"this endpoint takes {', '.join(sorted(known))}",
            fields=[{"field": name, "message": "unknown parameter"} for name in unknown],
        )
    repeated = sorted(name for name, values in request.GET.lists() if len(values) > 1)
    if repeated:
        raise ApiError(
            422,
            "invalid_request",
            f"{', '.join(repeated)} {'are' if len(repeated) > 1 else 'is'} given more than "
            "once: give each parameter once",
            fields=[{"field": name, "message": "given more than once"} for name in repeated],
        )


def paginate(
    request: HttpRequest, rows, query: PageQuery, serialize: Callable[[Iterable], list]
) -> dict:
    """One page of `rows` (a queryset, counted once); next and previous are absolute URLs
    with the request's other parameters, so a script can follow them as they are."""
    paginator = Paginator(rows, query.page_size)
    pages = max(paginator.num_pages, 1)
    if query.page > pages:
        raise ApiError(
            404,
            "page_out_of_range",
            f"page {query.page} is past the last page ({pages}, {paginator.count} items)",
        )
    page = paginator.page(query.page) if paginator.count else None

    def url(number: int) -> str:
        params = {**request.GET.dict(), "page": str(number)}
        return request.build_absolute_uri(f"{request.path}?{urlencode(params)}")

    return {
        "count": paginator.count,
        "next": url(query.page + 1) if page and page.has_next() else None,
        "previous": url(query.page - 1) if query.page > 1 else None,
        "results": serialize(page.object_list) if page else [],
    }
