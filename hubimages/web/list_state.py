"""The Image Management list's state in its address: the parameters that differ from the
defaults, and the URL that brings a person back to the list as they left it (carried
through the preview and the jobs it starts)."""

from __future__ import annotations

from django.http import QueryDict
from django.urls import reverse

from hubimages.inventory import lists
from hubimages.models import Repository
from hubimages.web.paging import page_size_from
from hubimages.web.rendering import encode_state

# A page shows at most 100 rows; more digests than this are not a selection but a misuse.
MAX_SELECTED = 1000


def list_state(query: lists.ListQuery, per_page: int) -> dict:
    """The list's parameters that differ from the defaults (None for the others)."""
    return {
        "search": query.search or None,
        "filter": query.filter if query.filter != lists.DEFAULT_FILTER else None,
        "status": query.status or None,
        "sort": query.sort if query.sort != lists.DEFAULT_SORT else None,
        "per_page": per_page if per_page != page_size_from(None) else None,
    }


def list_url(repository: Repository, back: str = "") -> str:
    """The list's URL with the search, filter, sort and page size the user came from.

    `back` is the list's query string, carried through the preview; only known parameters
    with allowed values survive, so it can never point anywhere else."""
    params = QueryDict(back.lstrip("?")[:1000])
    state = list_state(lists.ListQuery.from_params(params), page_size_from(params.get("per_page")))
    page = params.get("page", "")
    encoded = encode_state({**state, "page": page if page.isdigit() and page != "1" else None})
    url = reverse("image_management", args=[repository.registry.name, repository.name])
    return f"{url}?{encoded}" if encoded else url
