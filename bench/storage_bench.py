"""What the Storage page costs on a big registry, next to one list page, in the same run.

Fills a temporary SQLite database with the registry of `retention_bench.py` (50
repositories of 400 top-level items, 20,000 in all: multi-arch releases with attestations,
CI builds, untagged images, base layers shared across the registry; pushes spread over
two years, so most items are stale). Then times, taking turns:

- one list page of one repository (25 rows), rendered through Django's test client: the
  baseline, a page people expect to be fast;
- the Storage page and the Repositories page (by name, and by reclaimable bytes: all 50
  rows read to sort them), rendered right after a deletion: the figures the workers kept
  are out of date, and the pages read them all the same, saying so (no request computes
  them, SPEC §7);
- `storage.compute()`: the figures from scratch, two plans of the whole registry (every
  stale item, every untagged item) and a few queries: what a worker pays after a sync or
  a deletion, never a page.

Target: the Storage page right after a deletion ≤ 3 × the list page (it reads, never
recomputes); computing the figures is printed as a ratio too.

    .venv/bin/python bench/storage_bench.py [--repositories 50] [--items 400] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile

from retention_bench import bench_arguments, filled_registry, timed

TARGET = 3.0


def main() -> int:
    args = bench_arguments(__doc__.split("\n\n")[0])
    with tempfile.TemporaryDirectory(prefix="hubimages-storage-bench-") as workdir:
        return run(workdir, args)


def run(workdir: str, args: argparse.Namespace) -> int:
    filled_registry(workdir, args)
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.utils import timezone

    from hubimages.models import Deletion, SyncRun
    from hubimages.storage import figures as storage_figures

    now = timezone.now()
    SyncRun.objects.create(started_at=now, finished_at=now, succeeded=True)

    client = Client()
    client.force_login(get_user_model().objects.create_superuser("bench", password="x"))

    def page(url: str, **params: object) -> None:
        response = client.get(url, params)
        assert response.status_code == 200

    def list_page() -> None:
        page("/r/default/bench/r000/")  # 25 rows, the default page size

    def compute() -> dict:
        return storage_figures.compute()

    storage_figures.refresh()  # what the workers leave after a full sync
    figures = storage_figures.kept().document
    # A deletion ends: the kept figures are out of date until a worker computes new ones.
    Deletion.objects.create(username="bench", repository="bench/r000", fingerprint="x")
    Deletion.objects.update(finished_at=timezone.now())
    assert storage_figures.outdated()
    assert "out of date" in client.get("/storage/").content.decode()
    for warm in (list_page, lambda: page("/storage/"), lambda: page("/")):
        warm()
    times: dict[str, list[float]] = {
        "list": [],
        "compute": [],
        "storage": [],
        "repos": [],
        "by name": [],
    }
    for _ in range(args.repeat):  # taking turns, so a busy moment hits all alike
        for _ in range(4):
            times["list"].append(timed(list_page))
            times["storage"].append(timed(lambda: page("/storage/")))
            times["repos"].append(timed(lambda: page("/", sort="-reclaimable")))
            times["by name"].append(timed(lambda: page("/")))
        times["compute"].append(timed(compute))
    listed, computing, cached, repositories, by_name = (
        statistics.median(times[key]) for key in ("list", "compute", "storage", "repos", "by name")
    )
    print(
        f"figures: {figures['stored_bytes'] / 1e12:.2f} TB stored, "
        f"{figures['stale_items']:,} stale items freeing "
        f"{figures['stale_reclaimable_bytes'] / 1e12:.2f} TB, {figures['untagged_items']:,} "
        f"untagged items holding {figures['untagged_bytes'] / 1e12:.2f} TB"
    )
    assert storage_figures.outdated()  # no page computed them
    print(f"list page, rendered (25 rows):                 {listed * 1000:7.1f} ms")
    print(f"Storage page right after a deletion:           {cached * 1000:7.1f} ms")
    print(f"Repositories page by reclaimable, same:        {repositories * 1000:7.1f} ms")
    print(f"Repositories page by name, same:               {by_name * 1000:7.1f} ms")
    print(f"figures computed from scratch (the workers):   {computing * 1000:7.1f} ms")
    ratio = cached / listed
    verdict = "meets" if ratio <= TARGET else "misses"
    print(
        f"storage bench: Storage page after a deletion / list page = {ratio:.2f} "
        f"({verdict} target ≤ "
        f"{TARGET:g}); Repositories page / list page = {repositories / listed:.2f}; "
        f"computing the figures / list page = {computing / listed:.1f}"
    )
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
