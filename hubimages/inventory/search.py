"""Search across every registry (SPEC §11): where does `sha256:ab12…`, the tag `1.4.2` or a
repository named like `api` live? Each kind of match is one bounded query."""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.db.models import Prefetch, Q

from hubimages.inventory.lists import tag_matches
from hubimages.models import Manifest, Repository, Tag

LIMIT = 50
MIN_DIGEST_PREFIX = 4
_HEX = re.compile(r"^(sha256:)?[0-9a-f]+$")


@dataclass(frozen=True)
class Found:
    repositories: list[Repository]
    manifests: list[Manifest]  # by digest prefix or tag, with repository, registry and tags
    more: bool  # a kind of match had more than LIMIT


def everywhere(text: str, *, within: Q | None = None) -> Found:
    """Repositories whose name holds `text`; manifests whose digest starts with it (with
    or without `sha256:`), or one of whose tags holds it (`tag_matches`: in any case,
    through an index); at most LIMIT of each. `within` (a filter on repositories: those a
    user may see) narrows all three."""
    text = text.strip()[:200]
    if not text:
        return Found([], [], False)
    needle = text.lower()
    seen = Repository.objects.filter(within) if within is not None else Repository.objects.all()
    manifests = Manifest.objects.all()
    tags = Tag.objects.all()
    if within is not None:
        manifests = manifests.filter(repository__in=seen)
        tags = tags.filter(repository__in=seen)
    repositories = list(
        seen.select_related("registry")
        .filter(name__icontains=needle)
        .order_by("name", "registry__name")[: LIMIT + 1]
    )
    ids: list[int] = []
    if _HEX.match(needle) and len(needle.removeprefix("sha256:")) >= MIN_DIGEST_PREFIX:
        prefix = needle if needle.startswith("sha256:") else f"sha256:{needle}"
        ids += manifests.filter(digest__startswith=prefix).values_list("pk", flat=True)[: LIMIT + 1]
    tagged = tags.filter(tag_matches(text)).order_by().values_list("manifest_id", flat=True)
    ids += tagged[: LIMIT + 1]
    manifests = list(
        Manifest.objects.filter(pk__in=set(ids))
        .select_related("repository__registry")
        .defer("history", "labels", "annotations")
        .prefetch_related(Prefetch("tags", queryset=Tag.objects.order_by("name")))
        .order_by("repository__registry__name", "repository__name", "-pushed_at", "pk")
    )
    more = len(repositories) > LIMIT or len(manifests) > LIMIT
    return Found(repositories[:LIMIT], manifests[:LIMIT], more)
