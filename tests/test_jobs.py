"""Jobs and their workers (SPEC §7): retries with back-off, a bounded number of times;
failures shown to admins; the tasks of dead workers recovered; the schedule started by one
worker of many; two full syncs never at once; "Sync now"; events claimed, never processed
twice, and not retried one by one while the registry is down."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from unittest.mock import Mock

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from devtools.pusher import random_layer
from devtools.worker import run_tasks
from hubimages.jobs import queue, recovery, runner
from hubimages.jobs import worker as jobs_worker
from hubimages.lib import leases
from hubimages.models import (
    Deletion,
    DeletionRecord,
    Job,
    Manifest,
    RegistryEvent,
    Repository,
    Schedule,
    WorkerHeartbeat,
)
from hubimages.sync import events
from hubimages.sync.service import sync_registry
from registry.client import RegistryClient

REPO = "team/api"


@pytest.fixture
def admin_client(client_factory, django_user_model):
    return client_factory(django_user_model.objects.create_superuser("root", password="x"))


def make_due(job: Job) -> None:
    """Skip the back-off: the retry's task may run now."""
    DBTaskResult.objects.filter(id=job.task_id).update(run_after=timezone.now())


# -- retries ------------------------------------------------------------------------------------


def test_a_job_that_fails_for_a_passing_reason_is_retried_with_back_off_then_given_up(
    pusher, sync, registry_server, registry_url, deleter, monkeypatch
):
    image = pusher.push_image(REPO, tag="v1", layers=[random_layer(100, "retry")])
    sync()
    repository = Repository.objects.get(name=REPO)
    from hubimages.deletion import planning

    plan = planning.plan_deletion(repository=repository, digests=[image.digest])
    registry_server.stop()
    monkeypatch.setattr(
        runner, "registry_client", lambda *_: RegistryClient(registry_url, max_retries=0)
    )
    job = queue.start_deletion(
        repository=repository, digests=[image.digest], fingerprint=plan.fingerprint, user=deleter
    )

    waits = []
    for attempt in (1, 2, 3):
        before = timezone.now()
        run_tasks()
        job.refresh_from_db()
        if attempt < 3:
            assert job.state == "queued" and f"attempt {attempt} of 3 failed" in job.message
            retry = DBTaskResult.objects.get(id=job.task_id)
            waits.append(round((retry.run_after - before).total_seconds()))
            run_tasks()  # not due yet: nothing runs
            assert Job.objects.get(pk=job.pk).attempts == attempt
            make_due(job)
    assert waits == [15, 60]
    assert job.state == "failed" and job.attempts == 3
    assert job.message.startswith("gave up after 3 attempts: nothing was deleted")
    assert "cannot reach" in job.message
    assert not DeletionRecord.objects.exists()


def test_a_failed_job_shows_its_message_to_admins_and_its_owner_only(
    db, admin_client, viewer_client, viewer, deleter_client
):
    mine = Job.objects.create(kind="sync", state="failed", user=viewer, message="registry <b>down")
    other = Job.objects.create(kind="deletion", state="failed", repository="x", message="secret")

    listing = admin_client.get("/jobs/").content.decode()
    own = viewer_client.get("/jobs/").content.decode()

    assert "registry &lt;b&gt;down" in listing and "secret" in listing
    assert f'data-job="{mine.pk}"' in own and f'data-job="{other.pk}"' not in own
    assert viewer_client.get(f"/jobs/{other.pk}/").status_code == 404
    assert viewer_client.get(f"/jobs/{mine.pk}/").status_code == 200
    assert deleter_client.get(f"/jobs/{mine.pk}/").status_code == 404


def test_the_jobs_page_costs_the_same_queries_however_many_jobs(
    db, admin_client, django_assert_max_num_queries
):
    for n in range(30):
        Job.objects.create(kind="sync", state="succeeded", started_by=f"user{n}")
    with django_assert_max_num_queries(8):
        assert admin_client.get("/jobs/").status_code == 200


# -- recovery -----------------------------------------------------------------------------------


def claimed_by(job: Job, worker: str, *, ago: float) -> None:
    """As django-tasks-db's worker `worker` would have claimed the job's task `ago` s ago."""
    started = timezone.now() - timedelta(seconds=ago)
    DBTaskResult.objects.filter(id=job.task_id).update(
        status="RUNNING", started_at=started, worker_ids=[worker]
    )
    Job.objects.filter(pk=job.pk).update(
        state="running", started_at=started, attempts=1, worker_id=worker
    )
    WorkerHeartbeat.objects.update_or_create(
        worker_id=worker,
        defaults={"beat_at": started, "host": "h", "pid": 1, "started_at": started},
    )


def test_a_worker_whose_clock_runs_behind_is_not_taken_for_dead(db, settings, monkeypatch):
    settings.WORKER_LEASE_SECONDS = 10
    job = queue.start_sync(started_by="alice")
    claimed_by(job, "worker-behind", ago=30)
    behind = timezone.now() - timedelta(hours=1)
    with monkeypatch.context() as clock:
        clock.setattr(timezone, "now", lambda: behind)
        jobs_worker.beat("worker-behind", behind)

    assert jobs_worker.recover() == []
    assert Job.objects.get(pk=job.pk).state == "running"


def test_the_task_of_a_worker_that_stopped_beating_runs_again(db, settings):
    settings.WORKER_LEASE_SECONDS = 10
    dead = queue.start_sync(started_by="schedule")
    alive = queue.start_sync(started_by="alice", repository=REPO)
    claimed_by(dead, "worker-dead", ago=30)
    claimed_by(alive, "worker-alive", ago=30)
    jobs_worker.beat("worker-alive", timezone.now())

    recovered = jobs_worker.recover()

    assert recovered == [dead.pk]
    dead.refresh_from_db()
    assert dead.state == "queued" and "worker worker-dead stopped during attempt 1" in dead.message
    old_task = DBTaskResult.objects.get(worker_ids=["worker-dead"])
    assert old_task.status == "FAILED" and "stopped beating" in old_task.traceback
    assert DBTaskResult.objects.get(id=dead.task_id).status == "READY"
    assert Job.objects.get(pk=alive.pk).state == "running"  # its worker is alive
    assert jobs_worker.recover() == []  # once only


def test_the_task_of_a_job_closed_just_before_its_worker_died_is_not_left_running(db, settings):
    """Found by the stateful test: a worker SIGKILLed after its job was closed and before
    django-tasks-db marked the task ended left that task running for ever (it has a job,
    so it was no orphan, and the job, finished, was never recovered)."""
    settings.WORKER_LEASE_SECONDS = 10
    job = queue.start_sync(started_by="alice")
    claimed_by(job, "worker-dead", ago=30)
    Job.objects.filter(pk=job.pk).update(state="succeeded", finished_at=timezone.now())

    assert jobs_worker.recover() == []  # the job stands as it was closed

    task = DBTaskResult.objects.get(id=job.task_id)
    assert task.status == "FAILED" and "stopped beating" in task.traceback
    assert Job.objects.get(pk=job.pk).state == "succeeded"


def test_a_deletion_whose_worker_died_is_settled_from_the_registry_not_run_twice(
    pusher, sync, deleter, settings, registry_client, monkeypatch
):
    settings.WORKER_LEASE_SECONDS = 10
    gone = pusher.push_image(REPO, tag="a", layers=[random_layer(100, "gone")])
    kept = pusher.push_image(REPO, tag="b", layers=[random_layer(100, "kept")])
    sync()
    repository = Repository.objects.get(name=REPO)
    job = queue.start_deletion(
        repository=repository, digests=[gone.digest, kept.digest], fingerprint="f", user=deleter
    )
    # The worker wrote both records PENDING, sent the first DELETE, and died.
    operation = Deletion.objects.create(
        username="deleter",
        repository=REPO,
        selected=[gone.digest, kept.digest],
        fingerprint="f",
        job=job,
    )
    for image in (gone, kept):
        DeletionRecord.objects.create(
            operation=operation,
            username="deleter",
            repository=REPO,
            digest=image.digest,
            kind="image",
            state="pending",
        )
    pusher.delete_manifest(REPO, gone.digest)
    claimed_by(job, "worker-dead", ago=30)
    # The job is closed and its repair sync started together, or neither.
    with monkeypatch.context() as database_away:
        database_away.setattr(
            recovery, "start_sync", Mock(side_effect=DatabaseError("connection lost"))
        )
        with pytest.raises(DatabaseError):
            jobs_worker.recover()
    assert Job.objects.get(pk=job.pk).state == "running"
    assert DBTaskResult.objects.get(id=job.task_id).status == "RUNNING"

    assert jobs_worker.recover() == [job.pk]

    states = dict(DeletionRecord.objects.values_list("digest", "state"))
    assert states == {gone.digest: "done", kept.digest: "failed"}
    assert Deletion.objects.get().state == "failed"
    job.refresh_from_db()
    assert job.state == "failed" and "nothing more was deleted" in job.message
    repair = Job.objects.get(kind="sync_repository")
    assert (repair.repository, repair.started_by) == (REPO, "recovery")
    run_tasks()
    assert not Manifest.objects.filter(digest=gone.digest).exists()
    assert Manifest.objects.filter(digest=kept.digest).exists()


def ended_without_closing(job: Job, status: str = "FAILED") -> None:
    """As if the job's task had ended (an exception after the job was claimed and before it
    was closed: a second SIGTERM, a bug, the database gone) leaving the job running."""
    DBTaskResult.objects.filter(id=job.task_id).update(
        status=status,
        started_at=timezone.now(),
        finished_at=timezone.now(),
        worker_ids=["worker-a"],
        exception_class_path="builtins.SystemExit" if status == "FAILED" else "",
    )
    Job.objects.filter(pk=job.pk).update(state="running", attempts=1, worker_id="worker-a")
    jobs_worker.beat("worker-a", timezone.now())  # its worker is alive and well


def test_a_sync_whose_task_ended_without_closing_it_is_lined_up_and_blocks_no_later_sync(db):
    stuck = queue.start_sync(started_by="alice")
    ended_without_closing(stuck)

    assert queue.start_sync(started_by="bob") != stuck  # a click never follows a dead job
    assert jobs_worker.recover() == [stuck.pk]

    stuck.refresh_from_db()
    assert stuck.state == "queued" and "its task ended (failed" in stuck.message
    assert DBTaskResult.objects.get(id=stuck.task_id).status == "READY"
    assert jobs_worker.recover() == []  # lined up: nothing more to do


def test_a_job_whose_task_is_gone_from_the_queue_runs_again_a_bounded_number_of_times(db):
    lost = queue.start_sync(started_by="alice", repository=REPO)
    for _ in range(3):
        DBTaskResult.objects.filter(id=lost.task_id).delete()  # e.g. pruned by someone
        assert jobs_worker.recover() == [lost.pk]
        lost.refresh_from_db()
    assert lost.state == "failed" and lost.attempts == 3
    assert "gave up after 3 attempts: its task is gone from the queue" in lost.message


def test_every_unfinished_job_is_lined_up_with_its_task(pusher, sync, deleter, settings):
    settings.WORKER_LEASE_SECONDS = 10
    image = pusher.push_image(REPO, tag="a", layers=[random_layer(100, "lined-up")])
    sync()
    repository = Repository.objects.get(name=REPO)
    waiting = queue.start_sync(started_by="alice")
    running = queue.start_sync(started_by="bob", repository=REPO)
    claimed_by(running, "worker-alive", ago=30)
    jobs_worker.beat("worker-alive", timezone.now())
    done = queue.start_deletion(
        repository=repository, digests=[image.digest], fingerprint="f", user=deleter
    )
    ended_without_closing(done, status="SUCCESSFUL")  # nothing had been deleted

    assert jobs_worker.recover() == [done.pk]

    states = {job.pk: job.state for job in Job.objects.all()}
    assert states == {waiting.pk: "queued", running.pk: "running", done.pk: "queued"}
    assert "nothing had been deleted" in Job.objects.get(pk=done.pk).message


# -- the schedule -------------------------------------------------------------------------------


def test_of_many_workers_one_starts_the_periodic_sync(transactional_db, settings):
    settings.SYNC_INTERVAL_MINUTES = 15
    settings.REGISTRY_URL = "https://registry.example.com"
    now = timezone.now()
    wins = []
    barrier = threading.Barrier(6)

    def worker() -> None:
        try:
            barrier.wait()
            wins.append(jobs_worker.claim_schedule("sync:default", now, timedelta(minutes=15)))
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(wins) == [False] * 5 + [True]
    assert jobs_worker.schedule_due(now + timedelta(minutes=5)) == []
    started = jobs_worker.schedule_due(now + timedelta(minutes=16))
    assert [job.kind for job in started] == ["sync"] and started[0].started_by == "schedule"
    assert Schedule.objects.get(name="sync:default").next_run_at == now + timedelta(minutes=31)


def test_no_periodic_sync_when_the_interval_is_zero(db, settings):
    settings.SYNC_INTERVAL_MINUTES = 0
    assert jobs_worker.schedule_due() == []
    assert not Job.objects.exists()


def test_two_full_syncs_never_overlap(registry_client, db, capsys, settings, registry_url):
    held = leases.acquire("sync:default", owner="a full sync (host-b:4242)")

    with pytest.raises(
        leases.LeaseBusy, match="registry default is busy: a full sync \\(host-b:4242\\)"
    ):
        sync_registry(registry_client)
    with pytest.raises(CommandError, match="a full sync \\(host-b:4242\\) is working on it"):
        call_command("sync_registry")
    first = queue.start_sync(started_by="alice")
    assert queue.start_sync(started_by="bob") == first  # the same job, not a second one
    run_tasks()
    first.refresh_from_db()
    assert (
        first.state == "queued"
        and "attempt 1 of 3 failed: registry default is busy" in first.message
    )
    leases.release(held)
    make_due(first)
    run_tasks()
    assert Job.objects.get(pk=first.pk).state == "succeeded"


# -- Sync now -----------------------------------------------------------------------------------


def test_sync_now_is_for_admins_by_post_and_shows_progress_then_a_summary(
    pusher, registry_url, admin_client, viewer_client
):
    pusher.push_image(REPO, tag="v1", layers=[random_layer(100, "now")])
    pusher.push_image("team/web", tag="v1", layers=[random_layer(100, "web")])

    assert viewer_client.post("/sync/").status_code == 403
    assert admin_client.get("/sync/").status_code == 405
    assert 'action="/sync/"' in admin_client.get("/").content.decode()
    assert 'action="/sync/"' not in viewer_client.get("/").content.decode()

    started = admin_client.post("/sync/", headers={"HX-Request": "true"}).content.decode()
    job = Job.objects.get()
    assert (job.kind, job.started_by) == ("sync", "root")
    assert f'hx-get="/jobs/{job.pk}/" hx-trigger="every 1s"' in started and "Queued" in started
    run_tasks()
    done = admin_client.get(f"/jobs/{job.pk}/", headers={"HX-Request": "true"}).content.decode()
    assert "hx-trigger" not in done and "Succeeded" in done
    assert "2 repositories synced" in done and "2 manifests added" in done

    plain = admin_client.post(f"/r/default/{REPO}/-/sync/")
    assert plain.status_code == 303 and plain["Location"].startswith("/jobs/")
    assert Job.objects.latest("pk").repository == REPO


# -- registry events ----------------------------------------------------------------------------


def push_events(pusher, count: int) -> list:
    images = [
        pusher.push_image(REPO, tag=f"t{n}", layers=[random_layer(50, f"claim-{n}")])
        for n in range(count)
    ]
    now = timezone.now()
    for n, image in enumerate(images):
        RegistryEvent.objects.create(
            event_id=f"push-{n}",
            action="push",
            repository=REPO,
            digest=image.digest,
            tag=f"t{n}",
            occurred_at=now,
            media_type="application/vnd.oci.image.manifest.v1+json",
        )
    return images


def test_two_workers_draining_at_once_store_each_push_once(pusher, registry_url, transactional_db):
    images = push_events(pusher, 40)
    drained = []

    def worker() -> None:
        try:
            while (result := events.drain(batch=7)).processed:
                drained.append(result.processed)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(drained) == 40
    assert set(RegistryEvent.objects.values_list("state", "message", "attempts")) == {
        ("applied", "push stored", 0)
    }
    assert Manifest.objects.filter(repository__name=REPO).count() == 40
    assert {m.digest for m in Manifest.objects.all()} == {image.digest for image in images}


def test_a_workers_claim_on_events_lapses_on_the_databases_clock(pusher, registry_url, db):
    push_events(pusher, 3)
    assert len(events.claim(batch=10)) == 3
    # Another worker, on a host whose clock runs an hour ahead, must not take them over.
    ahead = timezone.now() + timedelta(hours=1)
    with pytest.MonkeyPatch.context() as clock:
        clock.setattr(timezone, "now", lambda: ahead)
        assert events.claim(batch=10) == []


def test_with_the_registry_down_pending_pushes_wait_together_and_a_sync_ends_quickly(
    pusher, registry_server, registry_url, db, capsys
):
    push_events(pusher, 10)
    registry_server.stop()

    started = time.monotonic()
    with pytest.raises(CommandError):
        call_command("sync_registry")
    took = time.monotonic() - started

    assert took < 40  # one failed attempt for the catalog, one for the events: not ten
    waiting = RegistryEvent.objects.filter(state="received")
    assert waiting.count() == 10
    assert len(set(waiting.values_list("next_attempt_at", flat=True))) == 1
    assert all(row.attempts == 1 and "cannot reach" in row.message for row in waiting)


def test_housekeeping_forgets_old_processed_events_and_finished_jobs(db, settings):
    settings.EVENTS_KEEP_DAYS = 7
    now = timezone.now()
    for n, (state, days) in enumerate([("applied", 8), ("applied", 2), ("received", 30)]):
        RegistryEvent.objects.create(
            event_id=f"e{n}",
            action="push",
            repository="a",
            occurred_at=now,
            state=state,
            processed_at=None if state == "received" else now,
        )
        RegistryEvent.objects.filter(event_id=f"e{n}").update(
            received_at=now - timedelta(days=days)
        )
    old = Job.objects.create(kind="sync", state="succeeded", finished_at=now - timedelta(days=40))
    recent = Job.objects.create(kind="sync", state="failed", finished_at=now - timedelta(days=1))

    jobs_worker.housekeeping(now)

    assert set(RegistryEvent.objects.values_list("event_id", flat=True)) == {"e1", "e2"}
    assert set(Job.objects.values_list("pk", flat=True)) == {recent.pk}
    assert old.pk not in set(Job.objects.values_list("pk", flat=True))


def test_the_schedule_runs_each_due_retention_policy_once_as_a_job(
    pusher, sync, registry_url, settings
):
    from hubimages.models import RetentionPolicy, RetentionRun
    from hubimages.retention import policies

    settings.SYNC_INTERVAL_MINUTES = 0
    old = pusher.push_image(REPO, tag="old", layers=[random_layer(100, "sched-old")])
    pusher.push_image(REPO, tag="new", layers=[random_layer(100, "sched-new")])
    sync()
    now = timezone.now()
    Manifest.objects.filter(digest=old.digest).update(
        pushed_at=now - timedelta(days=3), pushed_at_estimated=False
    )
    policy = policies.parse_policy(
        {
            "name": "nightly",
            "rules": [{"keep": "latest_pushed", "count": 1}],
            "schedule": {"every_hours": 24},
        }
    )
    row = policies.save_policy(policy)
    RetentionPolicy.objects.filter(pk=row.pk).update(next_run_at=now - timedelta(minutes=1))

    started = jobs_worker.schedule_due(now)
    assert jobs_worker.schedule_due(now) == []  # claimed once

    assert [(job.kind, job.started_by, job.params["scheduled"]) for job in started] == [
        ("retention", "schedule", True)
    ]
    run_tasks()
    record = RetentionRun.objects.get()
    assert (record.trigger, record.outcome) == ("scheduled", "done")
    assert Job.objects.get(pk=started[0].pk).state == "succeeded"
    assert started[0].started_by_label == "scheduled · policy nightly"
    assert set(Deletion.objects.values_list("username", flat=True)) == {
        "scheduled · policy nightly"
    }
    assert not Manifest.objects.filter(digest=old.digest).exists()
    assert RetentionPolicy.objects.get().next_run_at == now + timedelta(hours=24)
