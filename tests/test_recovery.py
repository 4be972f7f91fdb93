"""Recovery (SPEC §7): a process killed mid-way (SIGKILL: no clean-up of any kind) leaves
nothing half-written for good. What it recorded as running (deletions, retention runs,
syncs) is settled by the workers from the registry, and its job is never run again once a
DELETE may have gone out."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
from django.db import DatabaseError

from devtools.processes import database_url, environment, manage
from devtools.pusher import random_layer
from devtools.worker import run_tasks
from hubimages.deletion import execution, planning
from hubimages.jobs import queue
from hubimages.jobs import worker as jobs_worker
from hubimages.models import Deletion, DeletionRecord, Job, Manifest, Repository, RetentionRun
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
