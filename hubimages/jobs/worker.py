"""What every worker does besides its tasks: beat its heartbeat (a thread of its own),
and, in another thread, recover the tasks of workers that died, start what the schedule
says is due, keep the tables bounded. Heartbeats are on the database's clock."""

from __future__ import annotations

import logging
import os
import socket
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.db.models.functions import Now
from django.tasks import TaskResultStatus
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from hubimages.jobs import recovery
from hubimages.jobs.queue import State, retry_or_fail, start_retention, start_sync
from hubimages.jobs.tasks import ensure_drain, ensure_figures, events_due
from hubimages.models import Job, Schedule, WorkerHeartbeat
from hubimages.registries import rows
from hubimages.retention import runs
from hubimages.sync import events
from hubimages.trash import lifetime

log = logging.getLogger("hubimages.jobs")
KEEP_FINISHED = timedelta(days=30)
SCHEDULE_SYNC = "sync"
SCHEDULE_HOUSEKEEPING = "housekeeping"
HOUSEKEEPING_EVERY = timedelta(hours=1)


# -- the workers' housekeeping ------------------------------------------------------------------


def beat(worker_id: str, started_at: datetime) -> None:
    """This worker is alive: called every few seconds by its heartbeat thread, which does
    nothing else, so no slow work (recovery asking the registry, the schedule) can make a
    live worker look dead. On the database's clock, as every other worker reads it."""
    if WorkerHeartbeat.objects.filter(worker_id=worker_id).update(beat_at=Now()):
        return
    WorkerHeartbeat.objects.update_or_create(
        worker_id=worker_id,
        defaults={"beat_at": Now()},
        create_defaults={
            "beat_at": Now(),
            "host": socket.gethostname()[:255],
            "pid": os.getpid(),
            "started_at": started_at,
        },
    )


def stop_beating(worker_id: str) -> None:
    """A worker that stops cleanly says so, so nobody waits for its lease."""
    WorkerHeartbeat.objects.filter(worker_id=worker_id).delete()


def live_workers() -> set[str]:
    """The workers that beat within `WORKER_LEASE_SECONDS`, on the database's clock."""
    cutoff = Now() - timedelta(seconds=settings.WORKER_LEASE_SECONDS)
    return set(
        WorkerHeartbeat.objects.filter(beat_at__gte=cutoff).values_list("worker_id", flat=True)
    )


def recover(now: datetime | None = None) -> list[int]:
    """Line every unfinished job up with its task in django-tasks-db's queue, which keeps
    the state of record of what runs: a job is left queued or running only while its task
    waits, or runs in a live worker. A job whose task is lost (its worker stopped beating:
    SIGKILL, a lost host), ended without closing it (an exception between claiming and
    closing it, a second SIGTERM) or is gone from the queue runs again, or is closed when
    it may not run twice (`recovery.close_job`); the task is marked failed in the same
    transaction. First, what stopped processes left running is settled
    (`recovery.settle_interrupted`): a job that deletes waits until its records are.
    Returns the recovered jobs' ids."""
    now = now or timezone.now()
    recovery.settle_interrupted()
    alive = live_workers()
    unfinished = list(Job.objects.filter(state__in=(State.QUEUED, State.RUNNING)))
    tasks = {
        str(task.id): task
        for task in DBTaskResult.objects.filter(
            id__in=[job.task_id for job in unfinished if job.task_id]
        ).only("id", "status", "worker_ids", "exception_class_path")
    }
    recovered = []
    for job in unfinished:
        task = tasks.get(job.task_id)
        reason = _lost(job, task, alive)
        if reason and _recover(job, task, reason, now):
            recovered.append(job.pk)
    _fail_orphaned_tasks(alive, now)
    WorkerHeartbeat.objects.filter(beat_at__lt=Now() - timedelta(days=1)).delete()
    return recovered


def _lost(job: Job, task: DBTaskResult | None, alive: set[str]) -> str:
    """Why `job` will never be closed by its task ("" while the task waits or runs)."""
    if task is None:
        return "its task is gone from the queue"
    worker = task.worker_ids[-1] if task.worker_ids else ""
    if task.status == TaskResultStatus.RUNNING:
        if worker in alive:
            return ""
        return f"worker {worker or '?'} stopped during attempt {job.attempts or 1}"
    if task.status in (TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED):
        error = task.exception_class_path.rpartition(".")[2]
        return (
            f"its task ended ({task.status.lower()}{f': {error}' if error else ''}) during "
            f"attempt {job.attempts or 1} without closing it"
        )
    return ""


def _recover(job: Job, task: DBTaskResult | None, reason: str, now: datetime) -> bool:
    """Whether `job` was recovered (False: another worker did, or it deletes and its
    records are not settled yet: the next round tries again)."""
    if job.kind in recovery.DELETING and not recovery.records_settled(job):
        return False
    with transaction.atomic():
        # Claim the job as it was read (a conditional UPDATE: one worker wins); a job
        # never claimed by its task counts this as an attempt, so retries stay bounded.
        claimed = Job.objects.filter(pk=job.pk, task_id=job.task_id, state=job.state).update(
            state=State.RUNNING,
            attempts=F("attempts") + (1 if job.state == State.QUEUED else 0),
        )
        if not claimed:
            return False
        if task is not None:
            _fail_task(task, now)
        if job.kind in recovery.DELETING:
            recovery.close_job(job, reason)
        else:
            retry_or_fail(job, reason)
    return True


def _fail_task(task: DBTaskResult, now: datetime) -> None:
    """A task left running by a worker that stopped beating: failed (a task that ended is
    left as it ended)."""
    worker = task.worker_ids[-1] if task.worker_ids else "?"
    DBTaskResult.objects.filter(id=task.id, status=TaskResultStatus.RUNNING).update(
        status=TaskResultStatus.FAILED,
        finished_at=now,
        exception_class_path="hubimages.jobs.queue.WorkerLost",
        traceback=f"worker {worker} stopped beating while running this task",
    )


def _fail_orphaned_tasks(alive: set[str], now: datetime) -> None:
    """Tasks whose worker stopped and that no unfinished job will line up: those without
    a job (drains of registry events; their events' claims expire) and those whose job
    was closed just before the worker died (before django-tasks-db marked the task
    ended). Failed, so nothing shows as running without a live worker."""
    for task in DBTaskResult.objects.filter(status=TaskResultStatus.RUNNING).only(
        "id", "worker_ids"
    ):
        worker = task.worker_ids[-1] if task.worker_ids else ""
        unfinished = Job.objects.filter(
            task_id=str(task.id), state__in=(State.QUEUED, State.RUNNING)
        )
        if worker not in alive and not unfinished.exists():
            _fail_task(task, now)


def schedule_due(now: datetime | None = None) -> list[Job]:
    """Start what the schedule says is due: each registry's periodic full sync (its own
    interval, its own schedule entry: a slow registry never holds another's back), the
    retention policies whose time has come. Any number of workers may call this at once;
    conditional UPDATEs (`Schedule`, each policy's `next_run_at`) let one of them win each."""
    now = now or timezone.now()
    started = []
    for config in rows.configured():
        interval = config.sync_interval_minutes
        if interval is None:
            interval = settings.SYNC_INTERVAL_MINUTES
        name = f"{SCHEDULE_SYNC}:{config.name}"
        if interval and claim_schedule(name, now, timedelta(minutes=interval)):
            started.append(start_sync(registry=config.name, started_by="schedule"))
    for policy in runs.claim_due_policies(now):
        started.append(
            start_retention(
                policy=policy.name,
                now=now,
                fingerprint=None,
                started_by="schedule",
                scheduled=True,
            )
        )
    if claim_schedule(SCHEDULE_HOUSEKEEPING, now, HOUSEKEEPING_EVERY):
        housekeeping(now)
    return started


def claim_schedule(name: str, now: datetime, every: timedelta) -> bool:
    """True for exactly one caller per period, on any number of hosts."""
    if Schedule.objects.filter(name=name, next_run_at__lte=now).update(next_run_at=now + every):
        return True
    if Schedule.objects.filter(name=name).exists():
        return False  # not due yet
    try:
        with transaction.atomic():
            Schedule.objects.create(name=name, next_run_at=now + every)
    except IntegrityError:
        return False  # another worker created it just now
    return True


def housekeeping(now: datetime) -> None:
    """Keep the tables bounded: processed events, finished tasks and jobs, and what the
    Trash kept past TRASH_KEEP_DAYS."""
    pruned = events.prune(now - timedelta(days=settings.EVENTS_KEEP_DAYS))
    lifetime.forget_expired()
    finished = Q(status=TaskResultStatus.SUCCESSFUL) | Q(status=TaskResultStatus.FAILED)
    DBTaskResult.objects.filter(finished, finished_at__lt=now - KEEP_FINISHED).delete()
    Job.objects.filter(
        state__in=(State.SUCCEEDED, State.FAILED), finished_at__lt=now - KEEP_FINISHED
    ).delete()
    log.info("housekeeping: forgot %s processed registry events", pruned)


def maintain() -> None:
    """What each worker does every few seconds besides its tasks and its heartbeat."""
    rows.ensure_rows()
    recover()
    schedule_due()
    if events_due():
        ensure_drain()
    ensure_figures()  # after a day, a changed stale setting, a deletion from the command line
