"""Does a registry delete notification cost the same in a repository of a million
manifests as in one of a thousand?

Fills a database directly (`list_bench.fill`: releases of an index, two images and two
attestations, standalone images, a tag per release and per fifth image) with a repository
of --manifests manifests and one of --small, then POSTs delete notifications to
`/registry/events` through Django's test client, as the registry sends them, taking turns
between the two repositories: a release index (its images and attestations become
top-level items), a standalone image, a tag. Each is applied at once, in the request: the
time measured is what the registry waits for, and what holds SQLite's write lock.

Prints the median milliseconds per notification of each kind in each repository and the
ratio big / small; target: ≤ 2 (only what the notification touched is computed again,
`sync.rollups.changing`). The baseline, the least work possible, is the same notification
in the small repository.

The database is a temporary SQLite file, or PostgreSQL when DATABASE_URL says so
(`python -m devtools.postgres -- .venv/bin/python bench/delete_event_bench.py`).

    .venv/bin/python bench/delete_event_bench.py [--manifests 1000000] [--small 1000] [--repeat 15]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from list_bench import analyze, fill, setup_django  # noqa: E402

TARGET = 2.0
TOKEN = "delete-event-bench-token"
V1 = "application/vnd.docker.distribution.events.v1+json"


def envelope(repository: str, *, digest: str = "", tag: str = "") -> str:
    target = {"repository": repository, **({"digest": digest} if digest else {})}
    if tag:
        target["tag"] = tag
    event = {
        "id": str(uuid.uuid4()),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime()),
        "action": "delete",
        "target": target,
        "request": {"method": "DELETE", "useragent": "docker/27.3.1"},
        "actor": {},
        "source": {},
    }
    return json.dumps({"events": [event]})


def real_digest(fake: str) -> str:
    """`list_bench.fill` names manifests `sha256:<repository>-<key>`; a notification names
    a real digest."""
    return "sha256:" + hashlib.sha256(fake.encode()).hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifests", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()

    os.environ["REGISTRY_EVENTS_TOKEN"] = TOKEN
    with tempfile.TemporaryDirectory(prefix="hubimages-delete-event-bench-") as directory:
        vendor = setup_django(directory)
        from django.test import Client

        from hubimages.models import Manifest, Repository
        from hubimages.sync import rollups

        started = time.perf_counter()
        fill("bench/big", args.manifests, seed=1)
        fill("bench/small", args.small, seed=2)
        analyze()
        print(
            f"filled {Manifest.objects.count():,} manifests in "
            f"{time.perf_counter() - started:.1f} s ({vendor})",
            flush=True,
        )
        for name in ("bench/big", "bench/small"):
            for n in range(1, args.repeat + 1):
                for key in (f"r{n * 5}", f"s{n * 5}"):
                    fake = f"sha256:{name}-{key}"
                    Manifest.objects.filter(digest=fake).update(digest=real_digest(fake))
        client = Client()
        headers = {"Authorization": f"Bearer {TOKEN}"}

        def notify(body: str) -> float:
            start = time.perf_counter()
            response = client.post("/registry/events", body, content_type=V1, headers=headers)
            elapsed = (time.perf_counter() - start) * 1000
            assert response.status_code == 200, response.content
            return elapsed

        kinds = {
            "an index (4 children freed)": lambda name, n: envelope(
                name, digest=real_digest(f"sha256:{name}-r{n}")
            ),
            "a standalone image": lambda name, n: envelope(
                name, digest=real_digest(f"sha256:{name}-s{n}")
            ),
            "a tag": lambda name, n: envelope(name, tag=f"v{n + 100}"),
        }
        times: dict[tuple[str, str], list[float]] = {}
        for n in range(1, args.repeat + 1):  # taking turns, so a busy moment hits all alike
            for label, body in kinds.items():
                for name in ("bench/big", "bench/small"):
                    times.setdefault((label, name), []).append(notify(body(name, n * 5)))
        applied = Manifest.objects.filter(repository__name="bench/small").count()
        assert applied < args.small, "the notifications deleted nothing"
        for name in ("bench/big", "bench/small"):  # exact, as a full recount says
            repository = Repository.objects.get(name=name)
            assert repository.list_counts == rollups.list_counts(repository), name

        print(f"{'delete notification of':<30} {'big ms':>8} {'small ms':>9} {'ratio':>6}")
        ratios = []
        for label in kinds:
            big = statistics.median(times[(label, "bench/big")])
            small = statistics.median(times[(label, "bench/small")])
            ratios.append(big / small)
            print(f"{label:<30} {big:8.2f} {small:9.2f} {big / small:6.2f}")
        worst = max(ratios)
        verdict = "meets" if worst <= TARGET else "misses"
        print(
            f"delete event bench ({vendor}): {args.manifests:,} vs {args.small:,} manifests, "
            f"{args.repeat} notifications of each kind: worst ratio {worst:.2f}; "
            f"{verdict} target ≤ {TARGET:g}; counts exact"
        )
        return 0 if worst <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
