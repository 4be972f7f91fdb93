"""Does knowing what runs slow the Image Management list down? (SPEC §13)

Fills a database directly with a repository of --manifests manifests (the list benchmark's
`fill`: multi-arch releases, standalone images, tags, blobs), renders its list pages with
no in-use report at all, then stores one report of --references references (as
`PUT /api/v1/in-use/{source}` stores it, past the reading of its references, which the
list benchmark's made-up digests would not pass: a tenth of them naming the newest items,
so the first pages show badges with many places, the rest spread over the whole
repository, index children included) and renders the same pages again, the report live
and expired in turns. Prints the best time of each page and the ratio with the live
report to without (the faster of no report at all, measured first, and the expired report,
measured in turns with the live one); target ≤ 1.2.

    .venv/bin/python bench/inuse_bench.py [--manifests 1000000] [--references 50000]
    python -m devtools.postgres -- .venv/bin/python bench/inuse_bench.py   # on PostgreSQL
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from list_bench import analyze, canonical, fill, setup_django  # noqa: E402

TARGET = 1.2
REPOSITORY = "bench/big"
CASES = (
    {},
    {"filter": "index"},
    {"filter": "image"},
    {"filter": "tagged", "sort": "-size"},
    {"sort": "-last_pulled"},
    {"status": "stale"},
    {"search": "v1234"},
)


def report_references(references: int, seed: int) -> list:
    """`references` references of a cluster: a tenth on the 100 newest top-level items
    (each then runs in many places), the rest any manifest of the repository."""
    from hubimages.models import InUseReference, Manifest, Registry

    rng = random.Random(seed)
    registry = Registry.objects.get(name="default")
    rows = Manifest.objects.filter(repository__name=REPOSITORY)
    newest = list(
        rows.filter(is_top_level=True).order_by("-pushed_at").values_list("digest", flat=True)[:100]
    )
    everything = list(rows.values_list("digest", flat=True))
    found = []
    for i in range(references):
        digest = rng.choice(newest) if i % 10 == 0 else rng.choice(everything)
        where = f"prod/ns-{i % 40}/pod/app-{i:06}"
        found.append(
            InUseReference(registry=registry, repository=REPOSITORY, digest=digest, where=where)
        )
    return found


def set_live(live: bool) -> None:
    """The report live (received now) or expired (received two TTLs ago)."""
    from django.db.models.functions import Now

    from hubimages.models import InUseSource

    if live:
        InUseSource.objects.update(received_at=Now())
    else:
        InUseSource.objects.update(received_at=Now() - timedelta(hours=2))


def measure(client, url: str, cases: list[dict], repeat: int, before=None) -> list[float]:
    """Best-of-`repeat` milliseconds per case, the cases taking turns."""
    times: list[list[float]] = [[] for _ in cases]
    for _ in range(repeat):
        if before:
            before()
        for params, measured in zip(cases, times, strict=True):
            start = time.perf_counter()
            response = client.get(url, params)
            measured.append((time.perf_counter() - start) * 1000)
            assert response.status_code == 200, (params, response.status_code)
    return [min(measured) for measured in times]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifests", type=int, default=1_000_000)
    parser.add_argument("--references", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--per-page", type=int, default=25)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hubimages-inuse-bench-") as directory:
        vendor = setup_django(directory)
        from django.contrib.auth import get_user_model
        from django.test import Client

        from hubimages.inuse import matching, reports
        from hubimages.models import InUseReference, InUseSource, Manifest

        started = time.perf_counter()
        fill(REPOSITORY, args.manifests, seed=1, registry="default")
        analyze()
        print(
            f"filled {Manifest.objects.count():,} manifests in "
            f"{time.perf_counter() - started:.1f} s ({vendor})",
            flush=True,
        )
        client = Client()
        client.force_login(get_user_model().objects.create_superuser("bench", password="x"))
        url = f"/r/default/{REPOSITORY}/"
        cases = [canonical({**case, "per_page": args.per_page}) for case in CASES]
        for params in cases:  # warm up, and check each page shows a full page of rows
            response = client.get(url, params)
            assert response.status_code == 200, (params, response.status_code)
        none = measure(client, url, cases, args.repeat)

        references = report_references(args.references, seed=7)
        started = time.perf_counter()
        received = reports.Received(source=InUseSource(name="bench-cluster"), kept=0)
        reports._store("bench-cluster", references, 3600, False, "bench", received)
        took = time.perf_counter() - started
        analyze()
        kept = InUseReference.objects.count()
        print(f"stored a report of {kept:,} references in {took:.2f} s", flush=True)
        set_live(True)
        page = client.get(url, cases[0]).content.decode()
        badges = page.count('class="badge badge-in-use"')
        assert badges, "the first page shows no in-use item: the report names none of it"
        live_in_turns, expired_in_turns = [], []
        for _ in range(2):
            live_in_turns.append(measure(client, url, cases, args.repeat, lambda: set_live(True)))
            expired_in_turns.append(
                measure(client, url, cases, args.repeat, lambda: set_live(False))
            )
        live = [min(values) for values in zip(*live_in_turns, strict=True)]
        expired = [min(values) for values in zip(*expired_in_turns, strict=True)]
        assert matching.live_sources() == {} and InUseReference.objects.count() == kept

        print(f"{'page':<34} {'none ms':>8} {'live ms':>8} {'expired':>8} {'ratio':>6}")
        ratios = []
        for case, a, b, c in zip(CASES, none, live, expired, strict=True):
            label = " ".join(f"{k}={v}" for k, v in case.items()) or "default"
            ratios.append((b / min(a, c), label))
            print(f"{label:<34} {a:8.1f} {b:8.1f} {c:8.1f} {b / min(a, c):6.2f}", flush=True)
        worst, worst_case = max(ratios)
        median = statistics.median(ratio for ratio, _ in ratios)
        verdict = "meets" if worst <= TARGET else "misses"
        print(
            f"in-use bench ({vendor}): a {args.references:,}-reference report against "
            f"{args.manifests:,} manifests, {len(ratios)} list pages of {args.per_page} rows "
            f"({badges} in-use badges on the first): with the live report / without, median "
            f"{median:.2f}, worst {worst:.2f} ({worst_case}); {verdict} target ≤ {TARGET}; "
            f"storing the report took {took:.2f} s"
        )
        return 0 if worst <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
