"""Recovery (SPEC §7): a process killed mid-way (SIGKILL: no clean-up of any kind) leaves
nothing half-written for good. What it recorded as running (deletions, retention runs,
syncs) is settled by the workers from the registry, and its job is never run again once a
DELETE may have gone out."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from uuid import UUID

import pytest
from django.db import DatabaseError
from django.db.models import F
from django.db.models.functions import Now
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from devtools.processes import Process, database_url, environment, manage
from devtools.pusher import random_layer
from devtools.worker import run_tasks
from hubimages.deletion import execution, planning
from hubimages.jobs import queue
from hubimages.jobs import worker as jobs_worker
from hubimages.models import (
    Deletion,
    DeletionRecord,
    Job,
    Manifest,
    Repository,
    RetentionRun,
    SyncRun,
    WorkerHeartbeat,
)
from hubimages.sync.service import sync_registry
from registry.client import RegistryClient

REPO = "team/killed"
SECRET = "recovery-tests-secret-key-" + "x" * 30


def eventually(check: Callable[[], object], timeout: float = 60.0, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what or check.__doc__}")
        time.sleep(0.1)
    return result


@pytest.fixture
def command_env(fault_proxy, settings, transactional_db) -> dict[str, str]:
    """A command's environment: the test database, the registry behind the fault proxy,
    short leases (this process's recovery uses the same)."""
    settings.LOCK_LEASE_SECONDS = 2
    settings.REGISTRY_URL = fault_proxy.url
    return environment(
        DATABASE_URL=database_url(),
        SECRET_KEY=SECRET,
        REGISTRY_URL=fault_proxy.url,
        LOCK_LEASE_SECONDS="2",
    )


def in_registry(registry_url: str, digests: list[str]) -> set[str]:
    with RegistryClient(registry_url) as registry:
        return {d for d in digests if registry.head_manifest(REPO, d) is not None}


def test_a_retention_run_killed_mid_way_is_recorded_and_settled_from_the_registry(
    pusher, fault_proxy, registry_server, command_env, tmp_path
):
    digests = [
        pusher.push_image(REPO, tag=f"v{n}", layers=[random_layer(300, f"killed-{n}")]).digest
        for n in range(8)
    ]
    with RegistryClient(fault_proxy.url) as client:
        assert sync_registry(client, workers=2).errors == []
    policy = tmp_path / "policy.json"
    policy.write_text(
        json.dumps({"name": "cut-short", "rules": [{"keep": "always", "tags": ["release-*"]}]})
    )
    fault_proxy.delay(r"/manifests/sha256:", seconds=0.7, method="DELETE")

    command = manage(
        "apply_retention", str(policy), "--yes", env=command_env, log=tmp_path / "run.log"
    )
    try:

        def three_deleted() -> bool:
            """three DELETEs went through"""
            assert command.poll() is None, (tmp_path / "run.log").read_text()
            return DeletionRecord.objects.filter(state="done").count() >= 3

        eventually(three_deleted)
    finally:
        command.kill()  # SIGKILL mid-run
        command.wait()

    run = RetentionRun.objects.get()  # recorded as it started
    assert run.outcome == "running" and run.finished_at is None

    def settled() -> bool:
        """the workers' recovery settled the run"""
        jobs_worker.recover()
        return RetentionRun.objects.get().outcome != "running"

    eventually(settled, timeout=30)
    gone = set(digests) - in_registry(registry_server.url, digests)
    assert 3 <= len(gone) < 8
    run = RetentionRun.objects.get()
    assert (run.outcome, run.manifests_deleted, run.tags_deleted) == (
        "incomplete",
        len(gone),
        len(gone),
    )
    assert run.message.startswith("Interrupted: the process running it stopped.")
    assert f"It had deleted {len(gone)} manifests and {len(gone)} tags" in run.message
    assert run.repositories[0]["repository"] == REPO and run.repositories[0]["deleted"] == len(gone)
    assert run.reclaimed_bytes > 0 and run.finished_at is not None
    operation = Deletion.objects.get()
    assert operation.state == "failed" and operation.retention_run_id == run.pk
    records = dict(DeletionRecord.objects.values_list("digest", "state"))
    assert {d for d, state in records.items() if state == "done"} == gone
    assert "pending" not in records.values()
    stored = set(Manifest.objects.filter(repository__name=REPO).values_list("digest", flat=True))
    assert stored == set(digests) - gone


def test_a_deletion_job_whose_database_fails_after_a_delete_went_out_is_settled_not_retried(
    pusher, sync, registry_client, registry_server, deleter, monkeypatch
):
    digests = [
        pusher.push_image(REPO, tag=f"v{n}", layers=[random_layer(200, f"dberr-{n}")]).digest
        for n in range(3)
    ]
    sync()
    repository = Repository.objects.get(name=REPO)
    plan = planning.plan_deletion(repository=repository, digests=digests)
    job = queue.start_deletion(
        repository=repository, digests=digests, fingerprint=plan.fingerprint, user=deleter
    )
    # The database goes away for a moment right after the second DELETE went out: the
    # second record cannot be settled, nor the operation closed.
    settle, close = execution._settle, execution._close
    calls = {"settle": 0, "close": 0}

    def failing_settle(*args, **kwargs):
        calls["settle"] += 1
        if calls["settle"] == 2:
            raise DatabaseError("server closed the connection unexpectedly")
        return settle(*args, **kwargs)

    def failing_close(*args, **kwargs):
        calls["close"] += 1
        if calls["close"] == 1:
            raise DatabaseError("server closed the connection unexpectedly")
        return close(*args, **kwargs)

    monkeypatch.setattr(execution, "_settle", failing_settle)
    monkeypatch.setattr(execution, "_close", failing_close)

    run_tasks()

    job.refresh_from_db()
    assert (job.state, job.attempts) == ("failed", 1)  # not queued for another attempt
    assert "2 manifests had been deleted; nothing more was deleted" in job.message
    assert len(job.outcome["deleted"]) == 2
    operation = Deletion.objects.get()
    assert operation.state == "failed" and operation.job_id == job.pk
    gone = set(digests) - in_registry(registry_server.url, digests)
    assert len(gone) == 2
    records = dict(DeletionRecord.objects.values_list("digest", "state"))
    assert records == {digest: "done" for digest in gone}
    stored = set(Manifest.objects.filter(repository__name=REPO).values_list("digest", flat=True))
    assert stored == set(digests) - gone
    repair = Job.objects.get(kind="sync_repository")  # run by the same batch of tasks
    assert (repair.repository, repair.started_by, repair.state) == (REPO, "recovery", "succeeded")
    assert repair.outcome["manifests_removed"] == 0  # the database was already true


def test_a_worker_whose_maintenance_waits_on_a_slow_registry_is_not_taken_for_dead(
    pusher, registry_url, fault_proxy, command_env, deleter, tmp_path
):
    """Two real workers, each running a sync that the registry keeps waiting; meanwhile one
    of them settles a dead worker's deletion through a registry that answers each HEAD
    after 6 s, more than a worker's lease (5 s). Its heartbeat must go on: otherwise the
    other worker takes it for dead and runs its sync a second time."""
    gone = [
        pusher.push_image("team/gone", tag=f"v{n}", layers=[random_layer(100, f"gone-{n}")])
        for n in range(2)
    ]
    for name in ("team/slow1", "team/slow2"):
        pusher.push_image(name, tag="v1", layers=[random_layer(100, name)])
    with RegistryClient(registry_url) as client:
        assert sync_registry(client, workers=2).errors == []
    syncs = [queue.start_sync(started_by="t", repository=f"team/slow{n}") for n in (1, 2)]
    # A deletion whose worker died after writing its records (its DELETEs never went).
    dead_job = queue.start_deletion(
        repository=Repository.objects.get(name="team/gone"),
        digests=[image.digest for image in gone],
        fingerprint="f",
        user=deleter,
    )
    operation = Deletion.objects.create(
        username="deleter", repository="team/gone", fingerprint="f", job=dead_job
    )
    for image in gone:
        DeletionRecord.objects.create(
            operation=operation,
            username="deleter",
            repository="team/gone",
            digest=image.digest,
            kind="image",
            state="pending",
        )
    DBTaskResult.objects.filter(id=dead_job.task_id).update(
        status="RUNNING", started_at=timezone.now(), worker_ids=["worker-dead"]
    )
    Job.objects.filter(pk=dead_job.pk).update(state="running", attempts=1)
    fault_proxy.delay(r"^/v2/team/slow\d/tags/list", seconds=16, method="GET")
    fault_proxy.delay(r"^/v2/team/gone/manifests/", seconds=6, method="HEAD")
    env = {**command_env, "WORKER_LEASE_SECONDS": "5", "LOCK_LEASE_SECONDS": "5"}
    env["SYNC_INTERVAL_MINUTES"] = "0"
    workers = [Process("worker", env, tmp_path / f"worker-{n}.log") for n in range(2)]
    oldest_beat = 0.0
    try:

        def all_closed() -> bool:
            """every job closed"""
            nonlocal oldest_beat
            ages = WorkerHeartbeat.objects.filter(pid__in=[w.pid for w in workers]).annotate(
                age=Now() - F("beat_at")
            )
            oldest_beat = max([oldest_beat, *(row.age.total_seconds() for row in ages)])
            for process in workers:
                assert process.popen.poll() is None, process.tail()
            return not Job.objects.filter(state__in=("queued", "running")).exists()

        eventually(all_closed, timeout=120)
    finally:
        for process in workers:
            process.stop()

    assert oldest_beat < 5  # never taken for dead
    for job in syncs:
        job.refresh_from_db()
        assert (job.state, job.attempts) == ("succeeded", 1), job.message
    lost = DBTaskResult.objects.filter(exception_class_path__endswith="WorkerLost")
    assert list(lost.values_list("id", flat=True)) == [UUID(dead_job.task_id)]
    dead_job.refresh_from_db()
    assert dead_job.state == "failed" and "worker worker-dead stopped" in dead_job.message
    assert set(DeletionRecord.objects.values_list("state", flat=True)) == {"failed"}


def test_a_full_sync_killed_mid_way_is_settled_as_interrupted(
    pusher, fault_proxy, command_env, tmp_path
):
    for n in range(3):
        pusher.push_image(f"team/s{n}", tag="v1", layers=[random_layer(100, f"s{n}")])
    fault_proxy.delay(r"/tags/list", seconds=30, method="GET")

    command = manage("sync_registry", env=command_env, log=tmp_path / "sync.log")
    try:

        def started() -> bool:
            """the sync recorded its run and is reading the tags"""
            assert command.poll() is None, (tmp_path / "sync.log").read_text()
            return SyncRun.objects.exists() and any(
                "/tags/list" in p for _, p in fault_proxy.requests
            )

        eventually(started)
    finally:
        command.kill()  # SIGKILL mid-sync
        command.wait()
    assert SyncRun.objects.get().finished_at is None

    def settled() -> bool:
        """the workers' recovery closed the run"""
        jobs_worker.recover()
        return SyncRun.objects.get().finished_at is not None

    eventually(settled, timeout=30)
    run = SyncRun.objects.get()
    assert not run.succeeded
    assert run.summary["errors"] == ["interrupted: the process running it stopped before it ended"]
    assert jobs_worker.recover() == [] and SyncRun.objects.get().summary == run.summary
