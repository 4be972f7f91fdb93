"""Do the workers keep up with the registry? (SPEC §7)

A throwaway PostgreSQL, hubimages in its production shape (the Procfile's web: gunicorn
and two `db_worker`s), and a real registry that notifies it. N clients push M images each
(the baseline: the registry's own work, measured in the same run), and we time how long
after the last push every image is listed with its exact push time, without a sync.
Prints that lag as a ratio to the push phase (target <= 1.2), how much of it the registry
spent still delivering its notifications (it sends them one at a time), and
(push phase + lag) / push phase.

    .venv/bin/python bench/events_bench.py [--clients 8] [--pushes 2000] [--workers 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devtools.postgres import TemporaryPostgres  # noqa: E402
from devtools.processes import Process, environment, setup_django, wait_for_http  # noqa: E402
from devtools.pusher import ImagePusher, random_layer  # noqa: E402
from devtools.server import LocalRegistry, free_port  # noqa: E402

TOKEN = "events-bench-token"


def push_all(url: str, clients: int, pushes: int) -> tuple[list[str], float, float]:
    """Every client pushes its share of images into its own repository, all at once."""
    digests: list[str] = []
    lock = threading.Lock()
    each = pushes // clients

    def client(n: int) -> None:
        pusher = ImagePusher(url)
        for m in range(each):
            image = pusher.push_image(
                f"bench/client{n}", tag=f"b{m}", layers=[random_layer(256, f"events-{n}-{m}")]
            )
            with lock:
                digests.append(image.digest)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return digests, started, time.monotonic()


def wait_until_listed(digests: list[str], timeout: float) -> float:
    from hubimages.models import Manifest

    wanted = len(digests)
    deadline = time.monotonic() + timeout
    while True:
        stored = Manifest.objects.filter(
            repository__name__startswith="bench/", pushed_at_estimated=False
        ).count()
        if stored >= wanted:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise SystemExit(f"only {stored} of {wanted} listed after {timeout}s")
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--pushes", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2, help="db_worker processes")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch, TemporaryPostgres() as database:
        root = Path(scratch)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = environment(
            DATABASE_URL=database.url,
            SECRET_KEY="events-bench-secret-key-" + "x" * 30,
            REGISTRY_EVENTS_TOKEN=TOKEN,
            STATIC_ROOT=str(root / "static"),
            SYNC_INTERVAL_MINUTES="0",
            PORT=str(port),
            WEB_CONCURRENCY="2",
            LOG_LEVEL="WARNING",
        )
        registry = LocalRegistry(
            root / "registry", notify_url=f"{url}/registry/events", notify_token=TOKEN
        )
        registry.start()
        env["REGISTRY_URL"] = registry.url
        setup_django(database.url, SECRET_KEY=env["SECRET_KEY"])

        processes: list[Process] = []
        try:
            release = Process("release", env, root / "release.log")
            assert release.popen.wait(timeout=120) == 0, release.tail()
            web = Process("web", env, root / "web.log")
            processes.append(web)
            wait_for_http(f"{url}/healthz", web)
            processes += [
                Process("worker", env, root / f"worker{n}.log") for n in range(args.workers)
            ]
            print(
                f"PostgreSQL {database.version}; gunicorn (2 web workers) + {args.workers} "
                f"db_workers; {args.clients} clients push {args.pushes} images",
                flush=True,
            )
            digests, started, pushed = push_all(registry.url, args.clients, args.pushes)
            pushed_at = time.time()
            listed = wait_until_listed(digests, timeout=max(120.0, 10 * (pushed - started)))
            notified = (root / "web.log").read_text().count("POST /registry/events")
            from django.db.models import Max

            from hubimages.models import RegistryEvent

            stored_events = RegistryEvent.objects.count()
            last_event = RegistryEvent.objects.aggregate(at=Max("received_at"))["at"]
            delivery_lag = last_event.timestamp() - pushed_at
        finally:
            for process in processes:
                process.stop()
            registry.stop()

    push_phase = pushed - started
    lag = listed - pushed
    print(f"push phase (baseline, the registry's own work): {push_phase:.2f} s")
    print(
        f"notifications received: {notified}, events stored: {stored_events}; the last one "
        f"arrived {delivery_lag:.2f} s after the last push"
    )
    print(f"from the last push until all {len(digests)} are listed: {lag:.2f} s")
    print(
        f"  of which the registry was still delivering: {delivery_lag:.2f} s; hubimages "
        f"listed the last one {lag - delivery_lag:.2f} s after it arrived"
    )
    print(f"lag / push phase = {lag / push_phase:.3f}   target <= 1.2")
    print(f"(push phase + lag) / push phase = {(push_phase + lag) / push_phase:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
