"""How fast the deletion preview is, next to one list page, as the registry grows.

Fills a temporary SQLite database directly (bulk_create, no registry process): one target
repository of 1,100 top-level items (300 multi-arch indexes with attestations, 800 images)
plus other repositories sharing base layers: first a tenth of --blobs (~10,000), then
--blobs (~100,000; `--blobs 1000000` for Docker Hub size); the target repository is the
same in both, so the growth is the registry's alone.
On each size it times `plan_deletion` for 1,000 and for 10 selected items of the target
repository and one list page (`inventory.top_level` + `with_details`, first 25 rows,
evaluated and turned into rows), and prints the ratios.

Targets: the 1,000-item preview under 10 × one list page; growth from the small registry
to the 10× one well under 10× (sub-linear).

    .venv/bin/python bench/preview_bench.py [--blobs 100000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from filling import BASE_LAYERS, BulkFiller  # noqa: E402

from devtools import processes  # noqa: E402

TARGET = "bench/target"
TARGET_INDEXES = 300
TARGET_IMAGES = 800
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


class Filler(BulkFiller):
    """Writes repositories of indexes (2 images + 2 attestations each) and images."""

    def __init__(self) -> None:
        super().__init__()
        self.now = datetime(2025, 1, 1, tzinfo=UTC)

    def repository(self, name: str, indexes: int, images: int) -> None:
        from hubimages.models import Blob, Manifest, Repository

        repository = Repository.objects.create(name=name)
        manifests: list[Manifest] = []
        blobs: list[list] = []  # per manifest: [(blob, role), ...] with new Blob objects
        entries: list[tuple[int, int, int]] = []  # (index position, child position, slot)
        tags: list[tuple[int, str]] = []

        def add(kind: str, top: bool, layers: list, media_type: str = OCI_MANIFEST) -> int:
            self.serial += 1
            when = self.now - timedelta(minutes=self.serial)
            manifest = Manifest(
                repository=repository,
                digest=self.digest(),
                media_type=media_type,
                kind=kind,
                size=900,
                total_size=sum(b.size for b, _ in layers),
                os="linux" if kind != "attestation" else "unknown",
                architecture="amd64" if kind != "attestation" else "unknown",
                first_seen_at=when,
                pushed_at=when,
                is_top_level=top,
                is_tagged=top,
            )
            own = Blob(digest=manifest.digest, size=900)
            manifests.append(manifest)
            blobs.append([(own, "manifest"), *layers])
            return len(manifests) - 1

        def image_layers() -> list:
            base = self.bases[self.serial % BASE_LAYERS]
            return [
                (Blob(digest=self.digest(), size=1_500), "config"),
                (base, "layer"),
                (Blob(digest=self.digest(), size=3_000_000), "layer"),
            ]

        for i in range(indexes):
            index = add("index", True, [], OCI_INDEX)
            children = [add("image", False, image_layers()) for _ in range(2)]
            children += [
                add(
                    "attestation",
                    False,
                    [
                        (Blob(digest=self.digest(), size=400), "config"),
                        (Blob(digest=self.digest(), size=12_000), "layer"),
                    ],
                )
                for _ in range(2)
            ]
            entries += [(index, child, slot) for slot, child in enumerate(children)]
            tags.append((index, f"v{i}"))
        for i in range(images):
            tags.append((add("image", True, image_layers()), f"build-{i}"))

        self.write(repository, manifests, blobs, entries, tags)


def best_of(repeat: int, function: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(repeat: int) -> dict[str, float]:
    from hubimages.deletion import planning
    from hubimages.inventory import lists
    from hubimages.models import Blob, Manifest, Repository

    repository = Repository.objects.get(name=TARGET)
    top = Manifest.objects.filter(repository=repository, is_top_level=True)
    indexes = list(top.filter(kind="index").order_by("id").values_list("digest", flat=True))
    images = list(top.filter(kind="image").order_by("id").values_list("digest", flat=True))
    many = indexes[:200] + images[:800]
    few = indexes[:2] + images[:8]

    def page() -> None:
        rows = list(lists.with_details(lists.top_level(repository))[:25])
        [lists.row_as_dict(row, registry="default") for row in rows]

    page()  # warm the caches once, for every measurement alike
    plan = planning.plan_deletion(repository=repository, digests=many)
    assert len(plan.delete) == 200 * 5 + 800 and plan.reclaimable_bytes > 0
    return {
        "blobs": Blob.objects.count(),
        "page": best_of(repeat, page),
        "plan_1000": best_of(
            repeat, lambda: planning.plan_deletion(repository=repository, digests=many)
        ),
        "plan_10": best_of(
            repeat, lambda: planning.plan_deletion(repository=repository, digests=few)
        ),
    }


def fill_others(filler: Filler, first: int, blobs: int) -> int:
    """Other repositories until the registry holds `blobs` blobs; returns the next index."""
    from hubimages.models import Blob

    serial = first
    while Blob.objects.count() < blobs:
        for _ in range(10):
            filler.repository(f"bench/other{serial:05d}", indexes=30, images=10)
            serial += 1
    return serial


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--blobs", type=int, default=100_000, help="blobs of the big registry (the small: a tenth)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hubimages-preview-bench-") as workdir:
        run(workdir, args.repeat, args.blobs)


def run(workdir: str, repeat: int, blobs: int) -> None:
    processes.setup_django(f"sqlite:///{workdir}/bench.sqlite3")
    filler = Filler()
    started = time.perf_counter()
    filler.repository(TARGET, indexes=TARGET_INDEXES, images=TARGET_IMAGES)
    next_repository = fill_others(filler, 0, blobs // 10)
    small = measure(repeat)
    fill_others(filler, next_repository, blobs)
    large = measure(repeat)
    print(f"(filled and measured in {time.perf_counter() - started:.0f}s)")

    print(f"{'':28}{'small registry':>16}{'10x registry':>16}{'growth':>9}")
    print(f"{'blobs':28}{small['blobs']:>16,}{large['blobs']:>16,}")
    for key, label in [
        ("page", "list page (25 rows)"),
        ("plan_10", "preview, 10 selected"),
        ("plan_1000", "preview, 1,000 selected"),
    ]:
        growth = large[key] / small[key]
        print(f"{label:28}{small[key] * 1000:>14.1f}ms{large[key] * 1000:>14.1f}ms{growth:>8.2f}x")
    for name, figures in [("small", small), ("10x", large)]:
        ratio = figures["plan_1000"] / figures["page"]
        verdict = "ok" if ratio < 10 else "OVER TARGET"
        print(
            f"1,000-item preview / list page, {name} registry: {ratio:.1f} (target < 10) {verdict}"
        )
    growth = large["plan_1000"] / small["plan_1000"]
    verdict = "ok" if growth < 10 * 0.5 else "NOT SUB-LINEAR"
    print(f"1,000-item preview growth for 10x the blobs: {growth:.2f}x {verdict}")


if __name__ == "__main__":
    main()
