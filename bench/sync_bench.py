"""How much sync_registry adds to the network work it cannot avoid.

Pushes N repositories × M tags (multi-arch indexes) into a local registry, then times in
the same run:
  (a)  a bare concurrent crawl doing the same HTTP requests as a full sync,
  (b)  a full `sync_registry` into an empty database,
  (a') a bare crawl of the catalog, the tag lists and a HEAD per tag (the least a resync
       can do on a registry without a change feed),
  (c)  a second `sync_registry` with nothing changed.
Prints b/a and c/a'; target: both <= 1.3.

    .venv/bin/python bench/sync_bench.py [--repositories 50] [--tags 40] [--workers 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
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
    """The same requests a sync makes, with nothing done with the answers."""

    def __init__(self, url: str, workers: int) -> None:
        self.url = url
        self.session = requests.Session()
        self.session.mount("http://", HTTPAdapter(pool_maxsize=workers * 2))
        self.session.headers["Accept"] = MANIFEST_ACCEPT
        self.pool = ThreadPoolExecutor(workers)

    def catalog(self) -> list[str]:
        return self.session.get(f"{self.url}/v2/_catalog?n=1000").json()["repositories"]

    def heads(self, name: str) -> list[str]:
        tags = self.session.get(f"{self.url}/v2/{name}/tags/list").json()["tags"]
        heads = self.pool.map(
            lambda tag: self.session.head(f"{self.url}/v2/{name}/manifests/{tag}"), tags
        )
        return [head.headers["Docker-Content-Digest"] for head in heads]

    def full(self, name: str) -> None:
        frontier = self.heads(name)
        configs: set[str] = set()
        while frontier:
            bodies = list(
                self.pool.map(
                    lambda d: self.session.get(f"{self.url}/v2/{name}/manifests/{d}").json(),
                    frontier,
                )
            )
            frontier = [child["digest"] for body in bodies for child in body.get("manifests", [])]
            configs.update(body["config"]["digest"] for body in bodies if "config" in body)
        list(self.pool.map(lambda d: self.session.get(f"{self.url}/v2/{name}/blobs/{d}"), configs))

    def crawl(self, *, full: bool) -> None:
        names = self.catalog()
        with ThreadPoolExecutor(4) as coordinators:
            list(coordinators.map(self.full if full else self.heads, names))


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repositories", type=int, default=50)
    parser.add_argument("--tags", type=int, default=40)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hubimages-sync-bench-"))
    processes.setup_django(f"sqlite:///{work / 'bench.sqlite3'}")

    from hubimages.sync import sync_registry
    from registry.client import RegistryClient

    with LocalRegistry(work / "registry") as server:
        print(f"pushing {args.repositories} × {args.tags} multi-arch tags …", flush=True)
        push_time = timed(lambda: push_data_set(server.url, args.repositories, args.tags, 8))
        print(f"pushed in {push_time:.1f}s")
        crawler = BareCrawler(server.url, args.workers)
        client = RegistryClient(server.url, pool_size=args.workers * 2)

        def sync() -> None:
            summary = sync_registry(client, workers=args.workers)
            assert summary.succeeded, summary.errors

        crawler.crawl(full=True)  # warm the registry's caches for both sides alike
        a = timed(lambda: crawler.crawl(full=True))
        b = timed(sync)
        a_prime = timed(lambda: crawler.crawl(full=False))
        c = timed(sync)

    print(f"(a)  bare full crawl        {a:7.2f}s")
    print(f"(b)  full sync, empty DB    {b:7.2f}s   b/a  = {b / a:.2f}  (target <= 1.3)")
    print(f"(a') bare tags + HEADs      {a_prime:7.2f}s")
    print(f"(c)  resync, no change      {c:7.2f}s   c/a' = {c / a_prime:.2f}  (target <= 1.3)")


if __name__ == "__main__":
    main()
