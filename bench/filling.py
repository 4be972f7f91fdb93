"""What the benchmarks that fill a database directly share: made-up digests in sequence,
base layers shared by the whole registry, and the bulk inserts of one repository's rows."""

from __future__ import annotations

BASE_LAYERS = 40  # shared across the whole registry, as base images are


class BulkFiller:
    def __init__(self) -> None:
        from hubimages.models import Blob

        self.serial = 0
        self.bases = Blob.objects.bulk_create(
            [Blob(digest=self.digest(), size=20_000_000) for _ in range(BASE_LAYERS)]
        )

    def digest(self) -> str:
        self.serial += 1
        return f"sha256:{self.serial:064x}"

    @staticmethod
    def write(
        repository,
        manifests: list,
        links: list[list],
        entries: list[tuple[int, int, int]],
        tags: list[tuple[int, str]],
    ) -> None:
        """Insert `manifests` (unsaved), then per manifest its [(blob, role), ...] (blobs
        without a pk are new), the (index, child, slot) entries and (manifest, name) tags,
        manifests given by their position in `manifests`."""
        from hubimages.models import Blob, IndexEntry, Manifest, ManifestBlob, Tag

        Manifest.objects.bulk_create(manifests, batch_size=2000)
        Blob.objects.bulk_create(
            [blob for blobs in links for blob, _ in blobs if blob.pk is None], batch_size=2000
        )
        ManifestBlob.objects.bulk_create(
            [
                ManifestBlob(manifest=manifests[m], blob=blob, role=role, position=p)
                for m, blobs in enumerate(links)
                for p, (blob, role) in enumerate(blobs)
            ],
            batch_size=2000,
        )
        IndexEntry.objects.bulk_create(
            [
                IndexEntry(index=manifests[i], child=manifests[c], position=slot)
                for i, c, slot in entries
            ],
            batch_size=2000,
        )
        Tag.objects.bulk_create(
            [Tag(repository=repository, name=name, manifest=manifests[m]) for m, name in tags],
            batch_size=2000,
        )
