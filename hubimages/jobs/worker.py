"""What every worker does besides its tasks: beat its heartbeat, recover the tasks of
workers that died, start what the schedule says is due, keep the tables bounded."""

from __future__ import annotations

import logging
import os
import socket
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.tasks import TaskResultStatus
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from hubimages.deletion import execution
from hubimages.jobs.queue import Kind, State, fail_job, retry_or_fail, start_retention, start_sync
from hubimages.jobs.tasks import ensure_drain, events_due
from hubimages.models import Deletion, Job, Schedule, WorkerHeartbeat
from hubimages.registries import rows
from hubimages.registries.client import registry_client
from hubimages.retention import runs
from hubimages.sync import events
from hubimages.trash import lifetime
from registry.errors import RegistryError

log = logging.getLogger("hubimages.jobs")
KEEP_FINISHED = timedelta(days=30)
SCHEDULE_SYNC = "sync"
SCHEDULE_HOUSEKEEPING = "housekeeping"
HOUSEKEEPING_EVERY = timedelta(hours=1)


# -- the workers' housekeeping ------------------------------------------------------------------


def beat(worker_id: str, started_at: datetime) -> None:
    """This worker is alive (called every few seconds by its heartbeat thread)."""
    now = timezone.now()
    WorkerHeartbeat.objects.update_or_create(
        worker_id=worker_id,
        defaults={"beat_at": now},
        create_defaults={
            "beat_at": now,
            "host": socket.gethostname()[:255],
            "pid": os.getpid(),
            "started_at": started_at,
        },
    )


def stop_beating(worker_id: str) -> None:
    """A worker that stops cleanly says so, so nobody waits for its lease."""
    WorkerHeartbeat.objects.filter(worker_id=worker_id).delete()


def dead_workers(now: datetime | None = None) -> set[str]:
    cutoff = (now or timezone.now()) - timedelta(seconds=settings.WORKER_LEASE_SECONDS)
    return set(
        WorkerHeartbeat.objects.filter(beat_at__lt=cutoff).values_list("worker_id", flat=True)
    )


def recover(now: datetime | None = None) -> list[int]:
    """Tasks whose worker died mid-run (SIGKILL, a lost host): mark them failed in the
    queue, and run their jobs again, or fail them when they may not run twice. Returns the
    recovered jobs' ids."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.WORKER_LEASE_SECONDS)
    alive = set(
        WorkerHeartbeat.objects.filter(beat_at__gte=cutoff).values_list("worker_id", flat=True)
    )
    recovered = []
    running = DBTaskResult.objects.filter(status=TaskResultStatus.RUNNING, started_at__lt=cutoff)
    for task in running.only("id", "worker_ids", "started_at"):
        worker = task.worker_ids[-1] if task.worker_ids else ""
        if worker in alive:
            continue
        marked = DBTaskResult.objects.filter(id=task.id, status=TaskResultStatus.RUNNING).update(
            status=TaskResultStatus.FAILED,
            finished_at=now,
            exception_class_path="hubimages.jobs.queue.WorkerLost",
            traceback=f"worker {worker or '?'} stopped beating while running this task",
        )
        if not marked:
            continue  # another worker recovered it first
        job = Job.objects.filter(task_id=str(task.id)).first()
        if job is not None and not job.finished:
            _recover_job(job, worker)
            recovered.append(job.pk)
    WorkerHeartbeat.objects.filter(beat_at__lt=now - timedelta(days=1)).delete()
    return recovered


def _recover_job(job: Job, worker: str) -> None:
    reason = f"worker {worker or '?'} stopped during attempt {job.attempts or 1}"
    if job.kind == Kind.DELETION:
        _recover_deletion(job, reason)
        return
    Job.objects.filter(pk=job.pk).update(state=State.RUNNING)
    retry_or_fail(job, reason)


def _recover_deletion(job: Job, reason: str) -> None:
    """A deletion is never run twice: what went is settled from the registry, and a sync
    of the repository makes the list true again."""
    registry = job.registry or rows.default_name()
    operations = Deletion.objects.filter(
        registry=registry,
        repository=job.repository,
        state=Deletion.State.RUNNING,
        started_at__gte=job.created_at,
    )
    try:
        with registry_client(registry) as client:
            for operation in operations:
                execution.resolve_interrupted(client, operation)
    except RegistryError as error:
        log.warning("could not settle the interrupted deletion of job %s: %s", job.pk, error)
    fail_job(job, f"{reason}; nothing more was deleted; the deletion history says what went")
    start_sync(registry=registry, started_by="recovery", repository=job.repository)


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


def maintain(worker_id: str, started_at: datetime) -> None:
    """What each worker does every few seconds besides its tasks."""
    beat(worker_id, started_at)
    rows.ensure_rows()
    recover()
    schedule_due()
    if events_due():
        ensure_drain()
