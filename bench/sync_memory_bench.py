"""Does a sync's memory grow with the repository it reads?

Pushes two repositories into a local registry, a realistic CI repository of --big tags
(each its own image: a config and a layer of its own on a shared base) and one of
--small, then runs `manage.py sync_registry --repository NAME` for each in a process of
its own, into a fresh database, and reads that process's peak resident memory (the
kernel's `ru_maxrss`). Prints both and their ratio; target: ≤ 2 (the crawl spools what
it reads past a budget to disk and the write goes a chunk at a time).

    .venv/bin/python bench/sync_memory_bench.py [--big 20000] [--small 2000] [--workers 8]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from requests.adapters import HTTPAdapter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devtools.pusher import ImagePusher, random_layer  # noqa: E402
from devtools.server import LocalRegistry  # noqa: E402

TARGET = 2.0


def push_repository(url: str, name: str, images: int, workers: int = 8) -> None:
    pusher = ImagePusher(url)
    pusher.session.mount("http://", HTTPAdapter(pool_maxsize=workers * 2))
    base = random_layer(4096, "base")

    def push(n: int) -> None:
        pusher.push_image(
            name,
            tag=f"ci-{n}",
            layers=[base, random_layer(256, f"{name}-{n}")],
            created="2025-01-01T00:00:00Z",
        )

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(push, range(images)))


def peak_rss_of_sync(registry_url: str, name: str, directory: Path, workers: int) -> float:
    """Megabytes: the peak resident memory of a `sync_registry` process, fresh database."""
    database = directory / f"{name.replace('/', '-')}.sqlite3"
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{database}",
        "REGISTRY_URL": registry_url,
        "SECRET_KEY": "benchmark-only-secret-key-" + "x" * 30,
        "SYNC_INTERVAL_MINUTES": "0",
        "DEBUG": "false",  # DEBUG keeps every SQL statement in memory
    }
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "-v", "0"], env=env, check=True)
    process = subprocess.Popen(
        [*manage, "sync_registry", "--repository", name, "--workers", str(workers), "-v", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"sync_registry {name} failed ({process.returncode})")
    return usage.ru_maxrss / 1024  # kilobytes on Linux


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", type=int, default=20_000)
    parser.add_argument("--small", type=int, default=2_000)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hubimages-memory-bench-") as directory:
        work = Path(directory)
        with LocalRegistry(work / "registry") as server:
            started = time.perf_counter()
            push_repository(server.url, "ci/small", args.small)
            push_repository(server.url, "ci/big", args.big)
            print(
                f"pushed {args.small + args.big:,} images in {time.perf_counter() - started:.0f} s"
            )
            small = peak_rss_of_sync(server.url, "ci/small", work, args.workers)
            big = peak_rss_of_sync(server.url, "ci/big", work, args.workers)
    ratio = big / small
    print(f"peak RSS, sync of {args.small:,} images:  {small:7.1f} MB")
    print(f"peak RSS, sync of {args.big:,} images: {big:7.1f} MB")
    verdict = "meets" if ratio <= TARGET else "misses"
    print(f"sync memory bench: ratio {ratio:.2f}; {verdict} target ≤ {TARGET}")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
