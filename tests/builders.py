"""Rows built directly in the database, for tests that need exact sizes and times
(sorting, staleness, query counts); other tests push real images and sync them."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime

from hubimages.models import Blob, IndexEntry, Manifest, ManifestBlob, PushedFrom, Repository, Tag
from hubimages.sync import rollups

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def digest_for(seed: str) -> str:
    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


def manifest(
    repository: Repository,
    seed: str,
    *,
    pushed_at: datetime,
    kind: str = Manifest.Kind.IMAGE,
    size: int = 1000,
    last_pulled_at: datetime | None = None,
    tags: Iterable[str] = (),
    children: Iterable[Manifest] = (),
    architecture: str = "amd64",
) -> Manifest:
    """One manifest with exact figures (push time not estimated), its tags and children;
    an image or artifact gets one layer of `size` bytes of its own.

    Call `rollups.refresh(repository)` (or `finish`) once all rows exist."""
    row = Manifest.objects.create(
        repository=repository,
        digest=digest_for(seed),
        media_type=OCI_INDEX if kind == Manifest.Kind.INDEX else OCI_MANIFEST,
        kind=kind,
        size=500,
        total_size=size,
        os="" if kind == Manifest.Kind.INDEX else "linux",
        architecture="" if kind == Manifest.Kind.INDEX else architecture,
        first_seen_at=pushed_at,
        pushed_at=pushed_at,
        pushed_at_estimated=False,
        pushed_at_source=PushedFrom.EVENT,
        last_pulled_at=last_pulled_at,
    )
    if kind != Manifest.Kind.INDEX:
        layer, _ = Blob.objects.get_or_create(digest=digest_for(f"{seed}:layer"), size=size)
        ManifestBlob.objects.create(manifest=row, blob=layer, role=ManifestBlob.Role.LAYER)
    for name in tags:
        Tag.objects.create(repository=repository, name=name, manifest=row)
    for position, child in enumerate(children):
        IndexEntry.objects.create(
            index=row, child=child, position=position, os=child.os, architecture=child.architecture
        )
    return row


def finish(repository: Repository, *, keep_index_sizes: dict[int, int] | None = None) -> None:
    """Recompute the derived columns, as sync does; then put back index sizes the test
    chose (their children here have no blobs to add up)."""
    rollups.refresh(repository)
    for pk, size in (keep_index_sizes or {}).items():
        Manifest.objects.filter(pk=pk).update(total_size=size)
