"""Does the Image Management list cost the same for a big repository as for a small one?

Fills a database directly (bulk inserts, no registry) with a repository of --manifests
manifests (multi-arch indexes with their images and attestations, standalone images, a
tag per fifth manifest, blobs and layer links) and one of 100 in the same proportions,
then renders the list page through the Django test client, signed in, for every filter ×
sort, the Stale status (whose count is estimated on a big list) and searches (against
the small repository's plain page), both repositories in the same run. Prints the best
time of each and the ratio big/small; target: ≤ 1.5 (a page's cost does not grow with
the repository).

The database is a temporary SQLite file, or PostgreSQL when DATABASE_URL says so
(`python -m devtools.postgres -- .venv/bin/python bench/list_bench.py` gives a throwaway
one). Docker Hub size: `--manifests 1000000` (200,000 tags).

    .venv/bin/python bench/list_bench.py [--manifests 20000] [--small 100] [--repeat 9]
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
ARCHES = ("amd64", "arm64")
# A narrow search and a broad one (a tenth of the tags or more hold it, reported apart).
BROAD = "v1"
SEARCHES = ("v1234", BROAD)
CHUNK = 5000


def setup_django(directory: str) -> str:
    """Django on DATABASE_URL if set, else on a SQLite file in `directory`; its name."""
    os.environ.setdefault("REGISTRY_URL", "http://registry.invalid")
    processes.setup_django(os.environ.get("DATABASE_URL") or f"sqlite:///{directory}/b.sqlite3")
    from django.db import connection
    from django.test.utils import setup_test_environment

    setup_test_environment()  # lets the test client's "testserver" host in
    return connection.vendor


def analyze() -> None:
    """Fresh planner statistics, as autovacuum (PostgreSQL) or `ANALYZE` would keep them."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def fill(name: str, manifests: int, seed: int, registry: str = "default") -> None:
    """A repository of `manifests` manifests: three quarters in releases (index + 2
    images + 2 attestations, a tag each), the rest standalone images (every fifth
    tagged); half the images pulled. Written in chunks, so a million fits in memory."""
    from hubimages.models import (
        Blob,
        IndexEntry,
        Manifest,
        ManifestBlob,
        Registry,
        Repository,
        Tag,
    )
    from hubimages.sync import rollups

    rng = random.Random(seed)
    owner, _ = Registry.objects.get_or_create(name=registry)
    repository = Repository.objects.create(registry=owner, name=name)
    now = datetime(2026, 6, 1, tzinfo=UTC)
    releases = manifests * 3 // 4 // RELEASE
    standalone = manifests - releases * RELEASE
    base = Blob.objects.create(registry=owner, digest=f"sha256:{name}-base", size=30_000_000)

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
            history=[{"created_by": f"RUN step {i} # buildkit"} for i in range(3)],
            labels={"org.opencontainers.image.source": "https://example.com/repo"},
            **fields,
        )

    def release(r: int) -> list[Manifest]:
        return [
            row(f"r{r}", Manifest.Kind.INDEX),
            *(row(f"r{r}-{a}", Manifest.Kind.IMAGE, os="linux", architecture=a) for a in ARCHES),
            *(row(f"r{r}-{a}-att", Manifest.Kind.ATTESTATION, os="unknown") for a in ARCHES),
        ]

    for start in range(0, releases, CHUNK):
        chunk = range(start, min(start + CHUNK, releases))
        Manifest.objects.bulk_create([m for r in chunk for m in release(r)], batch_size=2000)
    for start in range(0, standalone, CHUNK):
        chunk = range(start, min(start + CHUNK, standalone))
        Manifest.objects.bulk_create(
            [row(f"s{s}", Manifest.Kind.IMAGE, os="linux", architecture="amd64") for s in chunk],
            batch_size=2000,
        )
    ids = dict(Manifest.objects.filter(repository=repository).values_list("digest", "pk"))

    def pk(key: str) -> int:
        return ids[f"sha256:{name}-{key}"]

    def entries(r: int) -> list[IndexEntry]:
        children = [*(f"r{r}-{a}" for a in ARCHES), *(f"r{r}-{a}-att" for a in ARCHES)]
        return [
            IndexEntry(
                index_id=pk(f"r{r}"),
                child_id=pk(child),
                position=position,
                os="unknown" if child.endswith("-att") else "linux",
                architecture="unknown" if child.endswith("-att") else child.split("-")[1],
            )
            for position, child in enumerate(children)
        ]

    for start in range(0, releases, CHUNK):
        chunk = range(start, min(start + CHUNK, releases))
        IndexEntry.objects.bulk_create([e for r in chunk for e in entries(r)], batch_size=2000)

    image_keys = [f"r{r}-{a}{att}" for r in range(releases) for a in ARCHES for att in ("", "-att")]
    image_keys += [f"s{s}" for s in range(standalone)]
    for start in range(0, len(image_keys), CHUNK):
        keys = image_keys[start : start + CHUNK]
        digests = [f"sha256:{name}-{key}" for key in keys]
        Blob.objects.bulk_create(
            [
                Blob(
                    registry=owner, digest=f"{digest}-{part}", size=rng.randrange(1000, 50_000_000)
                )
                for digest in digests
                for part in ("config", "layer")
            ],
            batch_size=2000,
        )
        blob_ids = dict(
            Blob.objects.filter(
                registry=owner,
                digest__in=[f"{d}-{part}" for d in digests for part in ("config", "layer")],
            ).values_list("digest", "pk")
        )
        links = []
        for digest in digests:
            manifest = ids[digest]
            links += [
                ManifestBlob(
                    manifest_id=manifest, blob_id=blob_ids[f"{digest}-config"], role="config"
                ),
                ManifestBlob(manifest_id=manifest, blob_id=base.pk, role="layer", position=0),
                ManifestBlob(
                    manifest_id=manifest,
                    blob_id=blob_ids[f"{digest}-layer"],
                    role="layer",
                    position=1,
                ),
            ]
        ManifestBlob.objects.bulk_create(links, batch_size=2000)

    tags = [
        Tag(repository=repository, name=f"v{r}", manifest_id=pk(f"r{r}")) for r in range(releases)
    ]
    tags += [
        Tag(repository=repository, name=f"s{s}", manifest_id=pk(f"s{s}"))
        for s in range(0, standalone, 5)
    ]
    Tag.objects.bulk_create(tags, batch_size=2000)
    rollups.refresh(repository)


def canonical(params: dict) -> dict:
    """`params` less the defaults: the list redirects any other spelling to this one."""
    from django.conf import settings

    from hubimages.inventory import lists

    defaults = {
        "filter": lists.DEFAULT_FILTER,
        "sort": lists.DEFAULT_SORT,
        "per_page": settings.PAGE_SIZE,
    }
    return {key: value for key, value in params.items() if defaults.get(key) != value}


def time_pages(client, pages: list[tuple[str, dict]], repeat: int) -> list[float]:
    """Best-of-`repeat` milliseconds per (URL, parameters), the pages taking turns so
    that a busy moment on the machine hits all alike (the best time is the least noisy
    estimate). Every page must show a full page of rows."""
    for url, params in pages:
        response = client.get(url, canonical(params))
        assert response.status_code == 200, (url, params, response.status_code)
        rows = response.content.count(b'name="digest"')
        assert rows == int(params["per_page"]), (url, params, rows)
    pages = [(url, canonical(params)) for url, params in pages]
    times: list[list[float]] = [[] for _ in pages]
    for _ in range(repeat):
        for (url, params), measured in zip(pages, times, strict=True):
            start = time.perf_counter()
            client.get(url, params)
            measured.append((time.perf_counter() - start) * 1000)
    return [min(measured) for measured in times]


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
    parser.add_argument(
        "--registries",
        type=int,
        default=5,
        help="registries in the database (SPEC §11): the big repository in the last, a small "
        "one in each; the small repository measured is the first registry's",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hubimages-list-bench-") as directory:
        vendor = setup_django(directory)
        from django.contrib.auth import get_user_model
        from django.test import Client

        from hubimages.inventory import lists
        from hubimages.models import Manifest

        started = time.perf_counter()
        registries = [f"r{n}" for n in range(1, max(args.registries, 1) + 1)]
        fill("bench/big", args.manifests, seed=1, registry=registries[-1])
        for n, registry in enumerate(registries):
            fill("bench/small", args.small, seed=2 + n, registry=registry)
        analyze()
        print(
            f"filled {Manifest.objects.count():,} manifests in {len(registries)} registries in "
            f"{time.perf_counter() - started:.1f} s ({vendor})",
            flush=True,
        )
        client = Client()
        client.force_login(get_user_model().objects.create_superuser("bench", password="x"))

        cases = [({"filter": f, "sort": s}) for f in lists.FILTERS for s in lists.SORTS]
        cases += [{"status": "stale", "sort": s} for s in lists.SORTS]
        cases += [{"search": search} for search in SEARCHES]
        print(f"{'case':<34} {'big ms':>8} {'small ms':>9} {'ratio':>6}")
        ratios = []
        for case in cases:
            params = {**case, "per_page": args.per_page}
            # The searches find release indexes: they are compared with the small
            # repository's page of indexes (a search there would not fill a page, and the
            # rows shown are most of a page's cost).
            baseline = (
                {"filter": "index", "per_page": args.per_page} if "search" in case else params
            )
            big, small = time_pages(
                client,
                [
                    (f"/r/{registries[-1]}/bench/big/", params),
                    (f"/r/{registries[0]}/bench/small/", baseline),
                ],
                args.repeat,
            )
            label = " ".join(f"{key}={value}" for key, value in case.items())
            ratios.append((big / small, label))
            print(f"{label:<34} {big:8.1f} {small:9.1f} {big / small:6.2f}", flush=True)
        broad = [(ratio, label) for ratio, label in ratios if label == f"search={BROAD}"]
        ratios = [(ratio, label) for ratio, label in ratios if label != f"search={BROAD}"]
        worst, worst_case = max(ratios)
        median = statistics.median(ratio for ratio, _ in ratios)
        verdict = "meets" if worst <= TARGET else "misses"
        print(
            f"list bench ({vendor}, {len(registries)} registries): "
            f"{args.manifests:,} vs {args.small:,} manifests, "
            f"{len(ratios)} cases (filter × sort, stale × sort, a search): median ratio "
            f"{median:.2f}, worst {worst:.2f} ({worst_case}); {verdict} target ≤ {TARGET}; "
            f"a broad search ({BROAD!r}, a tenth of the tags): {broad[0][0]:.2f}"
        )
        return 0 if worst <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
