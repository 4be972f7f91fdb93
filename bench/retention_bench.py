"""How long a retention policy's dry run takes next to one list page, in the same run.

Fills a temporary SQLite database directly (bulk_create, no registry process) with 50
repositories of 400 top-level items each, 20,000 in all: per repository 60 release
indexes (two images and two attestations each) tagged `v1.N`, 120 `main-N` builds, 120
builds of 20 pull requests (`pr-K-N`), 40 feature builds and 60 untagged images; pushes
spread over two years, half of them pulled, base layers shared across the registry.

Times `retention.dry_run` of SPEC §8's example policy (4 rules: always `v*`/`latest`;
latest 3 of each `main`/`pr-K` group; pulled within 30 days; latest 2 untagged) over all
50 repositories, and one list page of one of them (25 rows) in the same run, two ways:
the page as a person gets it (rendered through Django's test client, as `list_bench.py`
renders it) and its queries alone (`inventory.top_level` + `with_details`, turned into
rows, as `preview_bench.py` measures it). Target: the dry run ≤ 30 × one list page (SQL
plus one pass in Python, never a request per item); both ratios are printed.

    .venv/bin/python bench/retention_bench.py [--repositories 50] [--items 400] [--repeat 5]
"""

from __future__ import annotations

import argparse
import random
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

from devtools.processes import setup_django  # noqa: E402

TARGET = 30.0
NOW = datetime(2026, 6, 1, tzinfo=UTC)
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
POLICY = {
    "name": "ci-cleanup",
    "repositories": ["bench/**"],
    "rules": [
        {"keep": "always", "tags": ["v*", "latest"]},
        {
            "keep": "latest_pushed",
            "count": 3,
            "tags": ["main-*", "pr-*"],
            "group_by": "^(main|pr-[0-9]+)-",
        },
        {"keep": "pulled_within", "days": 30},
        {"keep": "latest_pushed", "count": 2, "tags": [], "untagged": True},
    ],
}


class Filler(BulkFiller):
    """Writes repositories shaped as the docstring says, in a few bulk inserts each."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.rng = random.Random(seed)

    def repository(self, name: str, items: int) -> None:
        from hubimages.models import Blob, Manifest, Repository
        from hubimages.sync import rollups

        repository = Repository.objects.create(name=name)
        manifests: list[Manifest] = []
        links: list[list[tuple[Blob, str]]] = []
        entries: list[tuple[int, int, int]] = []
        tags: list[tuple[int, str]] = []

        def add(kind: str, layers: list, media_type: str = OCI_MANIFEST) -> int:
            pushed = NOW - timedelta(minutes=self.rng.randrange(0, 2 * 365 * 24 * 60))
            pulled = (
                pushed + timedelta(days=self.rng.randrange(0, 120))
                if self.rng.random() < 0.5
                else None
            )
            manifests.append(
                Manifest(
                    repository=repository,
                    digest=self.digest(),
                    media_type=media_type,
                    kind=kind,
                    size=900,
                    total_size=sum(blob.size for blob, _ in layers),
                    os="unknown" if kind == "attestation" else "linux",
                    architecture="unknown" if kind == "attestation" else "amd64",
                    first_seen_at=pushed,
                    pushed_at=pushed,
                    pushed_at_estimated=False,
                    last_pulled_at=min(pulled, NOW) if pulled else None,
                )
            )
            links.append([(Blob(digest=manifests[-1].digest, size=900), "manifest"), *layers])
            return len(manifests) - 1

        def image_layers() -> list:
            return [
                (Blob(digest=self.digest(), size=1_500), "config"),
                (self.bases[self.rng.randrange(BASE_LAYERS)], "layer"),
                (
                    Blob(digest=self.digest(), size=self.rng.randrange(1_000_000, 90_000_000)),
                    "layer",
                ),
            ]

        releases = items * 60 // 400
        for i in range(releases):
            index = add("index", [], OCI_INDEX)
            children = [add("image", image_layers()) for _ in range(2)]
            children += [
                add("attestation", [(Blob(digest=self.digest(), size=12_000), "layer")])
                for _ in range(2)
            ]
            entries += [(index, child, slot) for slot, child in enumerate(children)]
            tags.append((index, f"v1.{i}"))
        standalone = items - releases
        shares = {"main": 0.35, "pr": 0.35, "feat": 0.12}
        for i in range(standalone):
            image = add("image", image_layers())
            share = i / standalone
            if share < shares["main"]:
                tags.append((image, f"main-{i}"))
            elif share < shares["main"] + shares["pr"]:
                tags.append((image, f"pr-{i % 20}-{i}"))
            elif share < sum(shares.values()):
                tags.append((image, f"feat-x-{i}"))
        newest_main = max(
            (m for m, tag in tags if tag.startswith("main-")), key=lambda m: manifests[m].pushed_at
        )
        tags.append((newest_main, "latest"))

        self.write(repository, manifests, links, entries, tags)
        rollups.refresh(repository)


def bench_arguments(description: str) -> argparse.Namespace:
    """The size of the registry to fill, and how many times to time each thing."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repositories", type=int, default=50)
    parser.add_argument("--items", type=int, default=400, help="top-level items per repository")
    parser.add_argument("--repeat", type=int, default=5)
    return parser.parse_args()


def filled_registry(workdir: str, args: argparse.Namespace) -> int:
    """Django on a SQLite file in `workdir`, filled with `args.repositories` repositories;
    how many top-level items they hold."""
    setup_django(f"sqlite:///{workdir}/bench.sqlite3")
    from django.test.utils import setup_test_environment

    setup_test_environment()  # lets the test client's "testserver" host in
    from hubimages.models import Manifest

    started = time.perf_counter()
    filler = Filler(seed=1)
    for r in range(args.repositories):
        filler.repository(f"bench/r{r:03d}", args.items)
    top_level = Manifest.objects.filter(is_top_level=True).count()
    print(
        f"filled {args.repositories} repositories, {top_level:,} top-level items, "
        f"{Manifest.objects.count():,} manifests in {time.perf_counter() - started:.0f} s"
    )
    return top_level


def main() -> int:
    args = bench_arguments(__doc__.split("\n\n")[0])
    with tempfile.TemporaryDirectory(prefix="hubimages-retention-bench-") as workdir:
        return run(workdir, args)


def run(workdir: str, args: argparse.Namespace) -> int:
    top_level = filled_registry(workdir, args)
    from django.contrib.auth import get_user_model
    from django.test import Client

    from hubimages.inventory import lists
    from hubimages.models import Repository
    from hubimages.retention import engine, policies

    policy = policies.parse_policy(POLICY)
    repository = Repository.objects.get(name="bench/r000")
    client = Client()
    client.force_login(get_user_model().objects.create_superuser("bench", password="x"))
    url = f"/r/default/{repository.name}/"

    def rendered_page() -> None:
        response = client.get(url)  # 25 rows, the default page size
        assert response.status_code == 200

    def page_queries() -> None:
        rows = list(lists.with_details(lists.top_level(repository))[:25])
        [lists.row_as_dict(row, registry="default") for row in rows]

    def dry_run() -> engine.DryRun:
        return engine.dry_run(policy, now=NOW)

    rendered_page(), page_queries()  # warm the caches once, for all alike
    result = dry_run()
    assert len(result.repositories) == args.repositories
    times = {"rendered": [], "queries": [], "dry run": []}
    for _ in range(args.repeat):  # taking turns, so a busy moment hits all alike
        for _ in range(4):
            times["rendered"].append(timed(rendered_page))
            times["queries"].append(timed(page_queries))
        times["dry run"].append(timed(dry_run))
    rendered, queries, dry = (statistics.median(times[key]) for key in times)
    print(
        f"dry run: {result.selected_count:,} of {top_level:,} top-level items selected, "
        f"{result.manifest_count:,} manifests, {result.reclaimable_bytes / 1e9:.1f} GB reclaimable"
    )
    print(f"list page, rendered (25 rows):     {rendered * 1000:7.1f} ms")
    print(f"list page, its queries (25 rows):  {queries * 1000:7.1f} ms")
    print(f"dry run, 4 rules, {args.repositories} repositories: {dry * 1000:7.1f} ms")
    ratio = dry / rendered
    verdict = "meets" if ratio <= TARGET else "misses"
    print(
        f"retention bench: dry run / rendered list page = {ratio:.1f} ({verdict} target ≤ "
        f"{TARGET:g}); dry run / the page's queries = {dry / queries:.1f}"
    )
    return 0 if ratio <= TARGET else 1


def timed(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


if __name__ == "__main__":
    sys.exit(main())
