"""Derived columns the list filters and sorts on, recomputed in SQL after every change."""

from collections.abc import Collection

from django.db.models import Count, Exists, F, Max, OuterRef, Q, Subquery, Sum, Value
from django.db.models.functions import Coalesce

from hubimages.models import Blob, IndexEntry, Manifest, ManifestBlob, Repository, Tag


def refresh(repository: Repository) -> None:
    """Recompute subjects, top-level, tagged, index sizes, estimated push times and the
    list's counts.

    A handful of UPDATE statements whatever the repository's size; called by sync,
    registry events and deletion after they change a repository.
    """
    manifests = Manifest.objects.filter(repository=repository)
    _link_subjects(repository, manifests)
    manifests.update(
        is_tagged=Exists(Tag.objects.filter(manifest=OuterRef("pk"))),
        is_top_level=~Exists(IndexEntry.objects.filter(child=OuterRef("pk")))
        & Q(subject__isnull=True),
    )
    indexes = manifests.filter(kind__in=[Manifest.Kind.INDEX, Manifest.Kind.ARTIFACT])
    indexes.filter(entries__isnull=False).update(total_size=Coalesce(_children_size(), Value(0)))
    newest_child_build = (
        IndexEntry.objects.filter(index=OuterRef("pk"))
        .values("index")
        .annotate(newest=Max("child__created_at"))
        .values("newest")
    )
    indexes.filter(pushed_at_estimated=True, created_at__isnull=True).update(
        pushed_at=Coalesce(Subquery(newest_child_build), F("first_seen_at"))
    )
    # Attestations carry no build time of their own: they were pushed with their index.
    index_pushed = (
        IndexEntry.objects.filter(child=OuterRef("pk"))
        .values("child")
        .annotate(latest=Max("index__pushed_at"))
        .values("latest")
    )
    manifests.filter(
        kind=Manifest.Kind.ATTESTATION, pushed_at_estimated=True, created_at__isnull=True
    ).update(pushed_at=Coalesce(Subquery(index_pushed), F("first_seen_at")))
    Repository.objects.filter(pk=repository.pk).update(list_counts=list_counts(repository))


def list_counts(repository: Repository) -> dict[str, int]:
    """The list's top-level items per filter (`inventory.FILTERS`), in one query."""
    top = Manifest.objects.filter(repository=repository, is_top_level=True)
    return top.aggregate(
        all=Count("pk"),
        tagged=Count("pk", filter=Q(is_tagged=True)),
        untagged=Count("pk", filter=Q(is_tagged=False)),
        index=Count("pk", filter=Q(kind=Manifest.Kind.INDEX)),
        image=Count("pk", filter=Q(kind=Manifest.Kind.IMAGE)),
    )


def _children_size() -> Subquery:
    """The distinct config and layer blobs of an index's children, each counted once."""
    return distinct_blob_size(
        ManifestBlob.objects.filter(manifest__parent_entries__index=OuterRef(OuterRef("pk")))
    )


IMAGE_CONTENT = (ManifestBlob.Role.CONFIG, ManifestBlob.Role.LAYER)


def distinct_blob_size(links, roles: Collection[str] | None = IMAGE_CONTENT) -> Subquery:
    """The total size of the distinct blobs these ManifestBlob rows name: a layer shared by
    several manifests counts once, as the registry stores it once.

    By default the config and layer blobs, an image's size (SPEC §2); `roles=None` adds
    the manifests' own bytes, which the registry stores as blobs too (a repository's
    storage, which its garbage collector frees)."""
    blobs = links if roles is None else links.filter(role__in=list(roles))
    total = (
        Blob.objects.filter(pk__in=blobs.values("blob_id"))
        .annotate(group=Value(1))
        .values("group")
        .annotate(total=Sum("size"))
        .values("total")
    )
    return Subquery(total)


def _link_subjects(repository: Repository, manifests) -> None:
    subject = Manifest.objects.filter(
        repository=repository, digest=OuterRef("subject_digest")
    ).values("pk")[:1]
    manifests.exclude(subject_digest="").update(subject=Subquery(subject))
