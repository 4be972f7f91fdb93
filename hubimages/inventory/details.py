"""One manifest as its details page shows it: children, referrers, layers and who
else uses each layer."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, Prefetch, Q

from hubimages.models import IndexEntry, Manifest, ManifestBlob, Repository, Tag

# -- one manifest (the Image details page) ----------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """A layer with the build step that made it (None for squashed or hand-made images)."""

    position: int
    digest: str
    size: int
    media_type: str
    created_by: str | None


def manifest_detail(repository: Repository, digest: str) -> Manifest:
    """One manifest with everything its page shows, in a fixed number of queries.

    Raises Manifest.DoesNotExist."""
    by_name = Prefetch("tags", queryset=Tag.objects.order_by("name"))
    child_entries = IndexEntry.objects.select_related("child").prefetch_related(
        Prefetch("child__tags", queryset=Tag.objects.order_by("name"))
    )
    return (
        Manifest.objects.select_related("repository", "subject")
        .prefetch_related(
            by_name,
            Prefetch("entries", queryset=child_entries),
            Prefetch(
                "blob_links",
                queryset=ManifestBlob.objects.select_related("blob").order_by("role", "position"),
            ),
            Prefetch(
                "referrers",
                queryset=Manifest.objects.prefetch_related(by_name).order_by("pushed_at", "id"),
            ),
            Prefetch("parent_entries", queryset=IndexEntry.objects.select_related("index")),
        )
        .get(repository=repository, digest=digest)
    )


def layers_of(manifest: Manifest) -> list[Layer]:
    """Layers in order, each paired with its `created_by` line: history entries marked
    `empty_layer` (ENV, CMD…) made no layer, the others map onto the layers in order.
    Uses the blob links prefetched by `manifest_detail`."""
    producing = [
        entry
        for entry in manifest.history
        if isinstance(entry, dict) and not entry.get("empty_layer")
    ]
    layers = [link for link in manifest.blob_links.all() if link.role == ManifestBlob.Role.LAYER]
    layers.sort(key=lambda link: link.position)
    return [
        Layer(
            position=i + 1,
            digest=link.blob.digest,
            size=link.blob.size,
            media_type=link.blob.media_type,
            created_by=_created_by(producing[i]) if i < len(producing) else None,
        )
        for i, link in enumerate(layers)
    ]


def layer_users(manifest: Manifest) -> dict[str, int]:
    """Layer digest -> how many other manifests, in any repository, use that layer too.
    One query; a layer missing from the answer is this manifest's alone."""
    layer_ids = [link.blob_id for link in manifest.blob_links.all() if link.role == "layer"]
    rows = (
        ManifestBlob.objects.filter(blob_id__in=layer_ids)
        .exclude(manifest_id=manifest.pk)
        .values("blob__digest")
        .annotate(users=Count("manifest_id", distinct=True))
        .values_list("blob__digest", "users")
    )
    return dict(rows)


def _created_by(entry: dict) -> str | None:
    value = entry.get("created_by")
    return value if isinstance(value, str) and value else None


def also_in(manifest: Manifest, *, within: Q | None = None) -> list[Manifest]:
    """The same digest in other repositories, of any registry: where else this content
    lives (a copy, a mirror, a promotion from staging); `within` narrows them (to those a
    user may see). One query, through the digest index."""
    rows = Manifest.objects.filter(digest=manifest.digest)
    if within is not None:
        rows = rows.filter(within)
    return list(
        rows.exclude(pk=manifest.pk)
        .select_related("repository__registry")
        .only("digest", "kind", "repository__name", "repository__registry__name")
        .order_by("repository__registry__name", "repository__name")[:50]
    )
