"""How much sync_registry adds to the network work no crawl can avoid.

For each size (N repositories × M multi-arch tags, pushed into a local registry), times in
the same run, taking turns so that a busy moment on the machine hits both sides alike:
  (a)  a bare crawl making the minimum request set of a first read: the catalog, the tag
       lists, a GET per tag, a GET per index child, a GET per config blob (no HEAD),
       each request sent as soon as the answer naming it arrives, through one shared
       pool of --workers threads;
  (b)  a full `sync_registry` into an empty database (same --workers);
  (a') a bare crawl of the catalog, the tag lists and a HEAD per tag (the least a resync
       can do on a registry without a change feed), through the same kind of pool;
  (c)  a second `sync_registry` with nothing changed.
Prints the best of --repeat for each and b/a, c/a'; target: both <= 1.3 at every size.

    .venv/bin/python bench/sync_bench.py [--sizes 12x20,50x40] [--workers 8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devtools import processes  # noqa: E402
from devtools.pusher import ImagePusher, random_layer  # noqa: E402
from devtools.server import LocalRegistry  # noqa: E402
from registry.media import MANIFEST_ACCEPT  # noqa: E402

TARGET = 1.3


def push_data_set(url: str, repositories: int, tags: int, workers: int) -> None:
    pusher = ImagePusher(url)
    adapter = HTTPAdapter(pool_maxsize=workers * 2)
    pusher.session.mount("http://", adapter)

    def push_tag(job: tuple[int, int]) -> None:
        r, t = job
        name = f"bench/repo{r:03d}"
        base = random_layer(2048, "base")  # shared by every image, as a base image is
        images = [
            pusher.push_image(
                name,
                layers=[base, random_layer(512, f"{r}-{t}-{arch}")],
                architecture=arch,
                created="2025-01-01T00:00:00Z",
            )
            for arch in ("amd64", "arm64")
        ]
        pusher.push_index(name, tag=f"v{t}", images=images)

    jobs = [(r, t) for r in range(repositories) for t in range(tags)]
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(push_tag, jobs))


class BareCrawler:
    """The least a crawl can do, and nothing with the answers: a work queue where each
    answer sends the requests it names at once (no levels, no per-repository waits)."""

    def __init__(self, url: str, workers: int) -> None:
        self.url = url
        self.workers = workers
        self.session = requests.Session()
        self.session.mount("http://", HTTPAdapter(pool_maxsize=workers * 2))
        self.session.headers["Accept"] = MANIFEST_ACCEPT
        self.requests = 0

    def crawl(self, *, full: bool) -> int:
        """Returns the number of requests made."""
        self.requests = 0
        pool = ThreadPoolExecutor(self.workers)
        outstanding = [0]
        lock = threading.Lock()
        finished = threading.Event()

        def send(function: Callable, *args: object) -> None:
            with lock:
                outstanding[0] += 1
            pool.submit(run, function, *args)

        def run(function: Callable, *args: object) -> None:
            try:
                function(*args)
            finally:
                with lock:
                    outstanding[0] -= 1
                    self.requests += 1
                    if outstanding[0] == 0:
                        finished.set()

        def tags(name: str) -> None:
            listed = self.session.get(f"{self.url}/v2/{name}/tags/list").json()["tags"]
            configs: set[str] = set()
            for tag in listed:
                send(manifest if full else head, name, tag, configs)

        def head(name: str, tag: str, configs: set[str]) -> None:
            self.session.head(f"{self.url}/v2/{name}/manifests/{tag}")

        def manifest(name: str, reference: str, configs: set[str]) -> None:
            body = self.session.get(f"{self.url}/v2/{name}/manifests/{reference}").json()
            for child in body.get("manifests", []):
                send(manifest, name, child["digest"], configs)
            if "config" in body:
                with lock:
                    new = body["config"]["digest"] not in configs
                    configs.add(body["config"]["digest"])
                if new:
                    send(blob, name, body["config"]["digest"])

        def blob(name: str, digest: str) -> None:
            self.session.get(f"{self.url}/v2/{name}/blobs/{digest}")

        names = self.session.get(f"{self.url}/v2/_catalog?n=1000").json()["repositories"]
        for name in names:
            send(tags, name)
        finished.wait()
        pool.shutdown()
        return self.requests + 1


def timed(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def measure(repositories: int, tags: int, workers: int, repeat: int, work: Path) -> dict:
    from hubimages.models import Blob, Repository
    from hubimages.sync.service import sync_registry
    from registry.client import RegistryClient

    with LocalRegistry(work / f"registry-{repositories}x{tags}") as server:
        print(f"pushing {repositories} × {tags} multi-arch tags …", flush=True)
        push_time = timed(lambda: push_data_set(server.url, repositories, tags, 8))
        print(f"pushed in {push_time:.1f}s", flush=True)
        crawler = BareCrawler(server.url, workers)
        client = RegistryClient(server.url, pool_size=workers * 2)

        def sync() -> None:
            summary = sync_registry(client, workers=workers)
            assert summary.succeeded, summary.errors

        def empty_database() -> None:
            Repository.objects.all().delete()
            Blob.objects.all().delete()

        full_requests = crawler.crawl(full=True)  # warms the registry's caches for both
        head_requests = crawler.crawl(full=False)
        a, b, a_prime, c = [], [], [], []
        for _ in range(repeat):
            empty_database()
            a.append(timed(lambda: crawler.crawl(full=True)))
            b.append(timed(sync))
            a_prime.append(timed(lambda: crawler.crawl(full=False)))
            c.append(timed(sync))
        client.close()
    return {
        "size": f"{repositories}×{tags}",
        "requests": full_requests,
        "head_requests": head_requests,
        "a": min(a),
        "b": min(b),
        "a_prime": min(a_prime),
        "c": min(c),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="12x20,50x40", help="N×M pairs, comma separated")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = [tuple(int(n) for n in size.split("x")) for size in args.sizes.split(",")]

    work = Path(tempfile.mkdtemp(prefix="hubimages-sync-bench-"))
    processes.setup_django(f"sqlite:///{work / 'bench.sqlite3'}")
    results = [measure(r, t, args.workers, args.repeat, work) for r, t in sizes]

    met = True
    for result in results:
        full, resync = result["b"] / result["a"], result["c"] / result["a_prime"]
        met = met and full <= TARGET and resync <= TARGET
        print(
            f"\n{result['size']} ({result['requests']} requests for a bare first crawl, "
            f"{result['head_requests']} for a bare resync), best of {args.repeat}:"
        )
        print(f"  (a)  bare minimal crawl     {result['a']:7.2f}s")
        print(f"  (b)  full sync, empty DB    {result['b']:7.2f}s   b/a  = {full:.2f}")
        print(f"  (a') bare tags + HEADs      {result['a_prime']:7.2f}s")
        print(f"  (c)  resync, no change      {result['c']:7.2f}s   c/a' = {resync:.2f}")
    print(f"\nsync bench: {'meets' if met else 'misses'} target ≤ {TARGET} at every size")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
