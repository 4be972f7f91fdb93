"""hubimages in its production shape (SPEC §7), with real processes started from the
Procfile's own commands: gunicorn with 3 workers, 2 `db_worker`s, and a real registry
notifying the web processes. The suite runs it on SQLite and on PostgreSQL."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from devtools.faultproxy import FaultProxy
from devtools.processes import Process, database_url, environment, wait_for_http
from devtools.pusher import ImagePusher, random_layer
from devtools.server import LocalRegistry, free_port
from hubimages.deletion import planning
from hubimages.jobs import queue
from hubimages.lib import leases
from hubimages.lib.audit import Actor
from hubimages.models import (
    Deletion,
    DeletionRecord,
    Job,
    KeptManifest,
    Manifest,
    RegistryEvent,
    Repository,
    RetentionRun,
    WorkerHeartbeat,
)
from hubimages.retention import engine, policies
from hubimages.teams import services
from registry.client import RegistryClient
from tests.conftest import PASSWORD

TOKEN = "production-shape-events-token"
SECRET = "production-shape-secret-key-" + "x" * 30
LEASE_SECONDS = "6"


def eventually(check: Callable[[], object], timeout: float = 60.0, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while True:
        if result := check():
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what or check.__doc__}")
        time.sleep(0.2)


@dataclass
class Deployment:
    url: str
    registry: LocalRegistry
    proxy: FaultProxy  # hubimages reaches the registry through it (faults on demand)
    env: dict[str, str]
    logs: Path
    web: Process
    workers: list[Process]

    def start_worker(self) -> Process:
        worker = Process("worker", self.env, self.logs / f"worker-{len(self.workers)}.log")
        self.workers.append(worker)
        return worker

    def signed_in(self, username: str) -> requests.Session:
        session = requests.Session()
        login = session.get(f"{self.url}/accounts/login/", timeout=10)
        assert "csrftoken" in session.cookies, (login.status_code, login.text[:300])
        answer = session.post(
            f"{self.url}/accounts/login/",
            data={
                "username": username,
                "password": PASSWORD,
                "csrfmiddlewaretoken": session.cookies["csrftoken"],
            },
            timeout=10,
            allow_redirects=False,
        )
        assert answer.status_code == 302, answer.text[:500]
        session.headers["X-CSRFToken"] = session.cookies["csrftoken"]
        return session


@pytest.fixture
def deployment(tmp_path, transactional_db) -> Iterator[Deployment]:
    """Web, two workers and a registry that notifies the web, on a shared database."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    registry = LocalRegistry(
        tmp_path / "registry", notify_url=f"{url}/registry/events", notify_token=TOKEN
    )
    registry.start()
    proxy = FaultProxy(registry.url).start()
    env = environment(
        DATABASE_URL=database_url(),
        SECRET_KEY=SECRET,
        DEBUG="false",
        REGISTRY_URL=proxy.url,
        REGISTRY_EVENTS_TOKEN=TOKEN,
        STATIC_ROOT=str(tmp_path / "static"),
        SYNC_INTERVAL_MINUTES="0",
        WORKER_LEASE_SECONDS=LEASE_SECONDS,
        LOCK_LEASE_SECONDS=LEASE_SECONDS,
        PORT=str(port),
        WEB_CONCURRENCY="3",
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    release = Process("release", env, logs / "release.log")
    assert release.popen.wait(timeout=120) == 0, release.tail()
    web = Process("web", env, logs / "web.log")
    deployment = Deployment(url, registry, proxy, env, logs, web, [])
    try:
        wait_for_http(f"{url}/healthz", web)
        for _ in range(2):
            deployment.start_worker()
        yield deployment
    finally:
        for process in [*deployment.workers, web]:
            process.stop()
        proxy.stop()
        registry.stop()


def running_workers() -> set[str]:
    """The workers that django-tasks-db says are running a task now."""
    tasks = DBTaskResult.objects.filter(status="RUNNING").values_list("worker_ids", flat=True)
    return {workers[-1] for workers in tasks if workers}


def push_from_threads(registry_url: str, threads: int, each: int) -> list:
    pushed: list = []
    lock = threading.Lock()

    def client(n: int) -> None:
        pusher = ImagePusher(registry_url)
        for m in range(each):
            image = pusher.push_image(
                f"team/app{n}", tag=f"v{m}", layers=[random_layer(200, f"{n}-{m}")]
            )
            with lock:
                pushed.append(image)

    workers = [threading.Thread(target=client, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return pushed


def listed(digests: set[str]) -> Callable[[], bool]:
    def check() -> bool:
        """every pushed manifest is listed"""
        stored = set(
            Manifest.objects.filter(digest__in=digests, pushed_at_estimated=False).values_list(
                "digest", flat=True
            )
        )
        return stored == digests

    return check


def test_pushes_from_eight_clients_are_listed_without_a_sync(deployment, django_user_model):
    viewer = django_user_model.objects.create_user("viewer", password=PASSWORD)
    team = services.create_team("viewers", by=Actor(name="tests"))  # sees every repository
    services.grant(team, "viewer", "**", by=Actor(name="tests"))
    services.add_members(team, [viewer], by=Actor(name="tests"))

    images = push_from_threads(deployment.registry.url, threads=8, each=5)

    eventually(listed({image.digest for image in images}), what="all 40 pushes stored")
    assert not RegistryEvent.objects.filter(state="received").exists()
    page = deployment.signed_in("viewer").get(f"{deployment.url}/r/default/team/app3/")
    assert page.status_code == 200
    assert page.text.count('name="digest"') == 5
    assert "Content-Security-Policy" in page.headers
    stylesheet = re.search(r'href="(/static/hubimages\.[0-9a-f]+\.css)"', page.text).group(1)
    static = requests.get(f"{deployment.url}{stylesheet}", headers={"Accept-Encoding": "gzip"})
    assert static.status_code == 200 and "immutable" in static.headers["Cache-Control"]
    health = requests.get(f"{deployment.url}/healthz", timeout=10).json()
    assert health["status"] == "ok" and health["last_worker_heartbeat_age_seconds"] < 10
    assert health["oldest_unapplied_event_age_seconds"] is None


def test_a_worker_killed_mid_task_loses_nothing(deployment):
    images = []

    def pushing() -> None:
        images.extend(push_from_threads(deployment.registry.url, threads=4, each=10))

    pusher = threading.Thread(target=pushing)
    pusher.start()

    def busy_worker() -> tuple[Process, str] | None:
        """one of the workers runs a task"""
        running = running_workers()
        for process in deployment.workers:
            beat = WorkerHeartbeat.objects.filter(pid=process.pid).first()
            if beat and beat.worker_id in running:
                return process, beat.worker_id
        return None

    victim, victim_id = eventually(busy_worker, timeout=60)
    victim.kill()  # SIGKILL, mid-task
    survivor = next(process for process in deployment.workers if process is not victim)
    pusher.join()

    eventually(listed({image.digest for image in images}), timeout=120, what="all pushes stored")
    assert not RegistryEvent.objects.exclude(state="applied").exists()
    assert survivor.popen.poll() is None

    def recovered() -> bool:
        """the killed worker's task was recovered"""
        return victim_id not in running_workers()

    eventually(recovered, timeout=60)


def test_with_no_worker_a_push_waits_in_the_queue_and_is_stored_once_one_starts(deployment):
    for worker in deployment.workers:
        worker.stop()
    deployment.workers.clear()
    pusher = ImagePusher(deployment.registry.url)
    image = pusher.push_image("team/queue", tag="v1", layers=[random_layer(300, "queued")])

    def queued() -> bool:
        """the push is recorded and waits for a worker"""
        return RegistryEvent.objects.filter(digest=image.digest, state="received").exists()

    eventually(queued, timeout=30)
    time.sleep(2)
    assert not Manifest.objects.filter(digest=image.digest).exists()
    assert DBTaskResult.objects.filter(status="READY").exists()

    deployment.start_worker()
    eventually(listed({image.digest}), timeout=60, what="the queued push stored")


def test_a_deletion_started_in_the_web_ui_while_a_sync_runs_ends_correctly(
    deployment, django_user_model
):
    django_user_model.objects.create_superuser("admin", password=PASSWORD)
    pusher = ImagePusher(deployment.registry.url)
    doomed = pusher.push_image("team/shop", tag="old", layers=[random_layer(500, "doomed")])
    kept = pusher.push_image("team/shop", tag="new", layers=[random_layer(500, "kept")])
    for n in range(20):  # enough for the sync to take a while
        pusher.push_image(f"team/other{n}", tag="v1", layers=[random_layer(100, f"o{n}")])
    eventually(listed({doomed.digest, kept.digest}), what="the shop listed")
    web = deployment.signed_in("admin")
    preview = web.post(
        f"{deployment.url}/r/default/team/shop/-/delete/", data={"digest": doomed.digest}
    )
    fingerprint = re.search(r'name="fingerprint" value="([0-9a-f]+)"', preview.text).group(1)

    sync = web.post(f"{deployment.url}/sync/", allow_redirects=False)
    delete = web.post(
        f"{deployment.url}/r/default/team/shop/-/delete/confirm",
        # Freshly pushed, the image is active: both boxes ticked.
        data={
            "digest": doomed.digest,
            "fingerprint": fingerprint,
            "confirm": "yes",
            "confirm_active": "yes",
        },
        allow_redirects=False,
    )

    assert sync.status_code == delete.status_code == 303

    def finished() -> bool:
        """both jobs finished"""
        return not Job.objects.exclude(state__in=["succeeded", "failed"]).exists()

    eventually(finished, timeout=120)
    assert set(Job.objects.values_list("kind", "state")) == {
        ("sync", "succeeded"),
        ("deletion", "succeeded"),
    }
    page = web.get(f"{deployment.url}{delete.headers['Location']}").text
    assert "Deleted 1 manifest and 1 tag" in page
    assert pusher.list_tags("team/shop") == ["new"]
    shop = set(
        Manifest.objects.filter(repository__name="team/shop").values_list("digest", flat=True)
    )
    assert shop == {kept.digest}
    record = DeletionRecord.objects.get()
    assert (record.digest, record.state, record.username) == (doomed.digest, "done", "admin")
    assert Deletion.objects.get().state == "done"


def test_a_worker_killed_mid_deletion_leaves_an_exact_history_and_its_lock_expires(
    deployment, django_user_model
):
    django_user_model.objects.create_superuser("admin", password=PASSWORD)
    pusher = ImagePusher(deployment.registry.url)
    images = [
        pusher.push_image("team/crash", tag=f"v{n}", layers=[random_layer(300, f"crash-{n}")])
        for n in range(6)
    ]
    eventually(listed({image.digest for image in images}), what="the images listed")
    deployment.proxy.delay(r"/manifests/sha256:", seconds=1.5, method="DELETE")
    web = deployment.signed_in("admin")
    digests = [image.digest for image in images]
    crash = f"{deployment.url}/r/default/team/crash/-/delete/"
    preview = web.post(crash, data={"digest": digests})
    fingerprint = re.search(r'name="fingerprint" value="([0-9a-f]+)"', preview.text).group(1)
    started = web.post(
        f"{crash}confirm",
        data={
            "digest": digests,
            "fingerprint": fingerprint,
            "confirm": "yes",
            "confirm_active": "yes",
        },
        allow_redirects=False,
    )
    assert started.status_code == 303

    def two_deleted() -> bool:
        """two DELETEs went through"""
        return DeletionRecord.objects.filter(state="done").count() >= 2

    eventually(two_deleted, timeout=60)
    job = Job.objects.get(kind="deletion")
    runner = next(
        process
        for process in deployment.workers
        if WorkerHeartbeat.objects.filter(pid=process.pid, worker_id=job.worker_id).exists()
    )
    runner.kill()  # SIGKILL mid-deletion: no clean-up of any kind
    assert leases.repository_locked("team/crash")

    def settled() -> bool:
        """the other worker recovered the deletion"""
        return (
            Job.objects.get(pk=job.pk).state == "failed"
            and not DeletionRecord.objects.filter(state="pending").exists()
        )

    eventually(settled, timeout=90)
    # The history says exactly what went: each record DONE is gone from the registry, each
    # other one is still there, and nothing was sent for the rest.
    with RegistryClient(deployment.registry.url) as registry:
        still_there = {d for d in digests if registry.head_manifest("team/crash", d) is not None}
    records = dict(DeletionRecord.objects.values_list("digest", "state"))
    assert {d for d, state in records.items() if state == "done"} == set(digests) - still_there
    assert all(records.get(d) in (None, "failed") for d in still_there)
    assert 2 <= len(set(digests) - still_there) < 6
    # Killed between keeping and deleting (its last DELETE held by the proxy): every
    # DELETE the registry carried out has the manifest's exact bytes in the Trash.
    kept = {d: bytes(b) for d, b in KeptManifest.objects.values_list("record__digest", "body")}
    assert set(kept) == set(records)
    bodies = {image.digest: image.body for image in images}
    assert {d: kept[d] for d in set(digests) - still_there} == {
        d: bodies[d] for d in set(digests) - still_there
    }
    assert "stopped during attempt 1" in Job.objects.get(pk=job.pk).message
    assert Deletion.objects.get().state == "failed"

    def repaired() -> bool:
        """the lock expired and the recovery's sync made the list true again"""
        repair = Job.objects.filter(kind="sync_repository", started_by="recovery").first()
        return repair is not None and repair.state == "succeeded"

    eventually(repaired, timeout=90)
    assert not leases.repository_locked("team/crash")
    listed_now = set(
        Manifest.objects.filter(repository__name="team/crash").values_list("digest", flat=True)
    )
    assert listed_now == still_there


def test_a_worker_killed_mid_restore_leaves_it_to_another_which_brings_everything_back(
    deployment,
):
    """A restore is safe to run twice (SPEC §12): the job of a worker SIGKILLed mid-way is
    run again by another once the dead worker's heartbeat and repository lease run out,
    and everything comes back, byte for byte, tagged, listed."""
    pusher = ImagePusher(deployment.registry.url)
    images = [
        pusher.push_image("team/undo", tag=f"v{n}", layers=[random_layer(300, f"undo-{n}")])
        for n in range(6)
    ]
    digests = [image.digest for image in images]
    eventually(listed(set(digests)), what="the images listed")
    repository = Repository.objects.select_related("registry").get(name="team/undo")
    plan = planning.plan_deletion(repository=repository, digests=digests)
    deletion = queue.start_deletion(
        repository=repository, digests=digests, fingerprint=plan.fingerprint, user=None
    )
    eventually(lambda: Job.objects.get(pk=deletion.pk).state == "succeeded", what="deleted")
    operation = Deletion.objects.get(pk=Job.objects.get(pk=deletion.pk).outcome["deletion_id"])
    assert operation.records.filter(state="done").count() == 6
    deployment.proxy.delay(r"/manifests/sha256:", seconds=1.5, method="PUT")
    job = queue.start_restore(operations=[operation], started_by="tester")

    def two_back() -> bool:
        """two manifests PUT back"""
        with RegistryClient(deployment.registry.url) as registry:
            return sum(registry.head_manifest("team/undo", d) is not None for d in digests) >= 2

    eventually(two_back, timeout=60)
    job.refresh_from_db()
    runner = next(
        process
        for process in deployment.workers
        if WorkerHeartbeat.objects.filter(pid=process.pid, worker_id=job.worker_id).exists()
    )
    runner.kill()  # SIGKILL mid-restore
    assert leases.repository_locked("team/undo")
    assert Job.objects.get(pk=job.pk).state == "running"

    def restored() -> bool:
        """another worker ran the restore again, to the end"""
        return Job.objects.get(pk=job.pk).state == "succeeded"

    eventually(restored, timeout=120)
    job.refresh_from_db()
    assert job.attempts == 2
    assert len(job.outcome["restored"]) + len(job.outcome["already"]) == 6
    assert job.outcome["failed"] == [] and len(job.outcome["tags"]) == 6
    with RegistryClient(deployment.registry.url) as registry:
        for image in images:
            assert registry.get_manifest("team/undo", image.digest).body == image.body
        tags = {
            t: registry.head_manifest("team/undo", t).digest
            for t in registry.list_tags("team/undo")
        }
    assert tags == {f"v{n}": image.digest for n, image in enumerate(images)}
    assert {r.state for r in operation.records.all()} == {"restored"}
    assert set(
        Manifest.objects.filter(repository__name="team/undo").values_list("digest", flat=True)
    ) == set(digests)
    # The dead worker's lease ran out (the one that stores the restore's push events may
    # hold it a moment).
    eventually(lambda: not leases.repository_locked("team/undo"), what="the lease released")


def test_a_worker_killed_mid_retention_run_is_not_run_again_and_its_records_say_what_went(
    deployment,
):
    pusher = ImagePusher(deployment.registry.url)
    images = [
        pusher.push_image("team/prune", tag=f"build-{n}", layers=[random_layer(300, f"prune-{n}")])
        for n in range(18)
    ]
    digests = [image.digest for image in images]
    eventually(listed(set(digests)), what="the images listed")
    row = policies.save_policy(
        policies.parse_policy(
            {"name": "prune", "rules": [{"keep": "always", "tags": ["release-*"]}]}
        )
    )
    dry = engine.dry_run(policies.policy_of(row), now=timezone.now())
    assert len(dry.repositories[0].selected) == 18
    deployment.proxy.delay(r"/manifests/sha256:", seconds=1.0, method="DELETE")
    job = queue.start_retention(
        policy="prune", now=dry.now, fingerprint=dry.fingerprint, started_by="tester"
    )

    def five_deleted() -> bool:
        """five DELETEs went through"""
        return DeletionRecord.objects.filter(state="done").count() >= 5

    eventually(five_deleted, timeout=90)
    job.refresh_from_db()
    runner = next(
        process
        for process in deployment.workers
        if WorkerHeartbeat.objects.filter(pid=process.pid, worker_id=job.worker_id).exists()
    )
    runner.kill()  # SIGKILL mid-run

    def closed() -> bool:
        """the other worker settled the run and closed the job"""
        return Job.objects.get(pk=job.pk).finished

    eventually(closed, timeout=90)
    with RegistryClient(deployment.registry.url) as registry:
        still_there = {d for d in digests if registry.head_manifest("team/prune", d) is not None}
    gone = set(digests) - still_there
    assert 5 <= len(gone) < 18
    job.refresh_from_db()
    assert (job.state, job.attempts) == ("failed", 1)
    assert "stopped during attempt 1" in job.message
    assert f"the run had deleted {len(gone)} manifests and {len(gone)} tags" in job.message
    assert "nothing more was deleted" in job.message
    run = RetentionRun.objects.get()  # one run: the job was not run again
    assert (run.outcome, run.manifests_deleted, run.tags_deleted) == (
        "incomplete",
        len(gone),
        len(gone),
    )
    assert job.outcome["retention_run"] == run.pk and job.outcome["run_outcome"] == "incomplete"
    operation = Deletion.objects.get()
    assert operation.state == "failed" and operation.retention_run_id == run.pk
    records = dict(DeletionRecord.objects.values_list("digest", "state"))
    assert {d for d, state in records.items() if state == "done"} == gone
    assert "pending" not in records.values()

    def repaired() -> bool:
        """the recovery's sync of the repository succeeded"""
        repair = Job.objects.filter(kind="sync_repository", started_by="recovery").first()
        return repair is not None and repair.state == "succeeded"

    eventually(repaired, timeout=90)
    listed_now = set(
        Manifest.objects.filter(repository__name="team/prune").values_list("digest", flat=True)
    )
    assert listed_now == still_there
