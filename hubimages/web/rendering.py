"""Answering a page or one of its partials (for htmx), and the sortable column titles."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.vary import vary_on_headers


@dataclass(frozen=True)
class Column:
    """A sortable column title: its link's sort value and its `aria-sort`."""

    key: str
    title: str
    next_sort: str
    aria_sort: str


# Every view that answers with a whole page or one of its partials varies on these.
vary_on_htmx = vary_on_headers("HX-Request", "HX-History-Restore-Request")


def wants_partial(request: HttpRequest) -> bool:
    """htmx swaps a partial; on a history miss (Back) it swaps what we send into <body>."""
    return bool(request.htmx) and not request.htmx.history_restore_request


def render_page(
    request: HttpRequest, template: str, partial: str, context: dict, *, status: int = 200
) -> HttpResponse:
    """The whole page, or only its `partial` when htmx asks for a piece of it."""
    name = f"{template}#{partial}" if wants_partial(request) else template
    return render(request, name, context, status=status)


def sort_columns(
    current: str, choices: tuple[tuple[str, str], ...], ascending_first: tuple[str, ...] = ()
) -> list[Column]:
    """Each column's link sorts by it (biggest/newest first, names A→Z) or reverses it."""
    columns = []
    for key, title in choices:
        if current == key:
            columns.append(Column(key, title, f"-{key}", "ascending"))
        elif current == f"-{key}":
            columns.append(Column(key, title, key, "descending"))
        else:
            first = key if key in ascending_first else f"-{key}"
            columns.append(Column(key, title, first, "none"))
    return columns


def encode_state(state: dict) -> str:
    return urlencode({key: value for key, value in state.items() if value is not None})


def url_with(path: str, encoded: str) -> str:
    return f"{path}?{encoded}" if encoded else path
