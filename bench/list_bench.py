"""Does the Image Management list cost the same for a big repository as for a small one?

Fills a temporary SQLite database directly (bulk inserts, no registry) with a repository
of 20,000 manifests (multi-arch indexes with their images and attestations, standalone
images, tags, blobs and layer links) and one of 100 in the same proportions, then renders
the list page through the Django test client, signed in, for every filter × sort, both
repositories in the same run. Prints the best time of each and the ratio big/small;
target: ≤ 1.5 (a page's cost does not grow with the repository).

    .venv/bin/python bench/list_bench.py [--manifests 20000] [--small 100] [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devtools import processes  # noqa: E402

TARGET = 1.5
# Per release: an index, two images and their two attestations.
RELEASE = 5


def setup_django(directory: str) -> None:
    os.environ.setdefault("REGISTRY_URL", "http://registry.invalid")
    processes.setup_django(f"sqlite:///{directory}/bench.sqlite3")
    from django.test.utils import setup_test_environment

    setup_test_environment()  # lets the test client's "testserver" host in


def fill(name: str, manifests: int, seed: int) -> None:
    """A repository of `manifests` manifests: three quarters in releases (index + 2
    images + 2 attestations), the rest standalone images; half the images pulled."""
    from hubimages import rollups
    from hubimages.models import Blob, IndexEntry, Manifest, ManifestBlob, Repository, Tag

    rng = random.Random(seed)
    repository = Repository.objects.create(name=name)
    now = datetime(2026, 6, 1, tzinfo=UTC)
    releases = manifests * 3 // 4 // RELEASE
    standalone = manifests - releases * RELEASE
    base = Blob.objects.create(digest=f"sha256:{name}-base", size=30_000_000)

    def row(key: str, kind: str, **fields) -> Manifest:
        pushed = now - timedelta(minutes=rng.randrange(0, 2 * 365 * 24 * 60))
        pulled = pushed + timedelta(days=rng.randrange(0, 90)) if rng.random() < 0.5 else None
        return Manifest(
            repository=repository,
            digest=f"sha256:{name}-{key}",
            media_type="application/vnd.oci.image.manifest.v1+json",
            kind=kind,
            size=800,
            total_size=rng.randrange(1_000_000, 200_000_000),
            first_seen_at=pushed,
            pushed_at=pushed,
            pushed_at_estimated=False,
            last_pulled_at=pulled,
            history=[{"created_by": f"RUN step {i} # buildkit"} for i in range(12)],
            labels={"org.opencontainers.image.source": "https://example.com/repo"},
            **fields,
        )

    rows: list[Manifest] = []
    for r in range(releases):
        rows.append(row(f"r{r}", Manifest.Kind.INDEX, os="", architecture=""))
        for arch in ("amd64", "arm64"):
            rows.append(row(f"r{r}-{arch}", Manifest.Kind.IMAGE, os="linux", architecture=arch))
        for arch in ("amd64", "arm64"):
            rows.append(row(f"r{r}-{arch}-att", Manifest.Kind.ATTESTATION, os="unknown"))
    for s in range(standalone):
        rows.append(row(f"s{s}", Manifest.Kind.IMAGE, os="linux", architecture="amd64"))
    Manifest.objects.bulk_create(rows, batch_size=1000)
    ids = dict(Manifest.objects.filter(repository=repository).values_list("digest", "pk"))

    def pk(key: str) -> int:
        return ids[f"sha256:{name}-{key}"]

    entries = []
    for r in range(releases):
        children = [f"r{r}-amd64", f"r{r}-arm64", f"r{r}-amd64-att", f"r{r}-arm64-att"]
        for position, child in enumerate(children):
            attestation = child.endswith("-att")
            entries.append(
                IndexEntry(
                    index_id=pk(f"r{r}"),
                    child_id=pk(child),
                    position=position,
                    os="unknown" if attestation else "linux",
                    architecture="unknown" if attestation else child.split("-")[1],
                )
            )
    IndexEntry.objects.bulk_create(entries, batch_size=1000)

    images = [m for m in rows if m.kind in (Manifest.Kind.IMAGE, Manifest.Kind.ATTESTATION)]
    Blob.objects.bulk_create(
        [
            Blob(digest=f"{m.digest}-{part}", size=rng.randrange(1000, 50_000_000))
            for m in images
            for part in ("config", "layer")
        ],
        batch_size=1000,
    )
    blob_ids = dict(
        Blob.objects.filter(digest__startswith=f"sha256:{name}-").values_list("digest", "pk")
    )
    links = []
    for m in images:
        links.append(
            ManifestBlob(
                manifest_id=ids[m.digest], blob_id=blob_ids[f"{m.digest}-config"], role="config"
            )
        )
        links.append(
            ManifestBlob(manifest_id=ids[m.digest], blob_id=base.pk, role="layer", position=0)
        )
        links.append(
            ManifestBlob(
                manifest_id=ids[m.digest],
                blob_id=blob_ids[f"{m.digest}-layer"],
                role="layer",
                position=1,
            )
        )
    ManifestBlob.objects.bulk_create(links, batch_size=1000)

    tags = [
        Tag(repository=repository, name=f"v{r}", manifest_id=pk(f"r{r}")) for r in range(releases)
    ]
    tags += [
        Tag(repository=repository, name=f"release-{r}", manifest_id=pk(f"r{r}"))
        for r in range(0, releases, 3)
    ]
    tags += [
        Tag(repository=repository, name=f"s{s}", manifest_id=pk(f"s{s}"))
        for s in range(0, standalone, 2)
    ]
    Tag.objects.bulk_create(tags, batch_size=1000)
    rollups.refresh(repository)


def time_pages(client, urls: list[str], params: dict, repeat: int) -> list[float]:
    """Best-of-`repeat` milliseconds per URL, the URLs taking turns so that a busy
    moment on the machine hits both alike (the best time is the least noisy estimate)."""
    for url in urls:
        response = client.get(url, params)
        assert response.status_code == 200, (url, params, response.status_code)
        assert response.content.count(b'name="digest"') == int(params["per_page"]), url
    times: dict[str, list[float]] = {url: [] for url in urls}
    for _ in range(repeat):
        for url in urls:
            start = time.perf_counter()
            client.get(url, params)
            times[url].append((time.perf_counter() - start) * 1000)
    return [min(times[url]) for url in urls]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifests", type=int, default=20_000)
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument(
        "--per-page",
        type=int,
        default=10,
        help="rows per page; the small repository must fill a page for every filter "
        "(its 100 manifests hold 15 indexes), so both render the same number of rows",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hubimages-list-bench-") as directory:
        setup_django(directory)
        from django.contrib.auth import get_user_model
        from django.test import Client

        from hubimages import inventory
        from hubimages.models import Manifest

        started = time.perf_counter()
        fill("bench/big", args.manifests, seed=1)
        fill("bench/small", args.small, seed=2)
        print(
            f"filled {Manifest.objects.count():,} manifests in "
            f"{time.perf_counter() - started:.1f} s (SQLite, {directory})"
        )
        client = Client()
        client.force_login(get_user_model().objects.create_superuser("bench", password="x"))

        print(f"{'filter':<8} {'sort':<14} {'big ms':>8} {'small ms':>9} {'ratio':>6}")
        ratios = []
        for filter_ in inventory.FILTERS:
            for sort in inventory.SORTS:
                params = {"filter": filter_, "sort": sort, "per_page": args.per_page}
                big, small = time_pages(
                    client,
                    ["/repositories/bench/big/", "/repositories/bench/small/"],
                    params,
                    args.repeat,
                )
                ratios.append((big / small, filter_, sort))
                print(f"{filter_:<8} {sort:<14} {big:8.1f} {small:9.1f} {big / small:6.2f}")
        worst, worst_filter, worst_sort = max(ratios)
        median = statistics.median(ratio for ratio, _, _ in ratios)
        verdict = "meets" if worst <= TARGET else "misses"
        print(
            f"list bench: {args.manifests:,} vs {args.small:,} manifests, "
            f"{len(ratios)} filter×sort combinations: median ratio {median:.2f}, "
            f"worst {worst:.2f} ({worst_filter}, {worst_sort}); {verdict} target ≤ {TARGET}"
        )
        return 0 if worst <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
