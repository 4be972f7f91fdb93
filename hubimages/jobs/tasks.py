"""The tasks the workers run (`python manage.py db_worker`): thin wrappers over services,
so each service runs the same from a task, a command or a test."""

import logging
from datetime import datetime

from django.tasks import TaskContext, TaskResultStatus, task
from django_tasks_db.models import DBTaskResult

from hubimages.jobs import runner
from hubimages.storage import figures
from hubimages.sync import events

log = logging.getLogger("hubimages.jobs")
# How long one drain task keeps claiming events before it hands over to a fresh task.
DRAIN_SECONDS = 30.0


def _worker_id(context: TaskContext) -> str:
    workers = context.task_result.worker_ids
    return workers[-1] if workers else ""


@task(takes_context=True)
def run_job(context: TaskContext, job_id: int) -> None:
    """A sync, a deletion or a retention run someone (or the schedule) started."""
    runner.run(job_id, worker_id=_worker_id(context))
    try:  # a sync, a deletion or a run changes what the Storage page shows
        ensure_figures()
    except Exception:  # the job is done either way; the workers' loop asks again
        log.exception("could not enqueue the storage figures after job %s", job_id)


@task()
def drain_events() -> dict:
    """Store the pushes (and deferred deletes) the registry notified us of."""
    result = events.drain_for(DRAIN_SECONDS)
    if result.retry_at:
        ensure_drain(run_after=result.retry_at)
    elif events_due():
        ensure_drain()
    return {"processed": result.processed, "retried": result.retried}


def ensure_drain(run_after: datetime | None = None) -> None:
    """Enqueue a drain of the registry events unless one is already due. A new event
    gets a drain now even while older ones wait for a retry time: the registry that sent
    it is up. A retry (`run_after`) is enqueued unless any drain is waiting."""
    waiting = DBTaskResult.objects.ready().filter(task_path=drain_events.module_path)
    if run_after:
        waiting = DBTaskResult.objects.filter(
            status=TaskResultStatus.READY, task_path=drain_events.module_path
        )
    if not waiting.exists():
        (drain_events.using(run_after=run_after) if run_after else drain_events).enqueue()


@task()
def refresh_storage_figures() -> bool:
    """Compute each registry's Storage figures if its state moved on since they were (one
    computation a registry at a time across all workers: `storage.figures.refresh`)."""
    return figures.refresh(owner="storage-figures task")


def ensure_figures() -> None:
    """Enqueue a computation of the storage figures when some registry's are out of date,
    unless one is already waiting. Pages never compute them (SPEC §7): they show their
    age. (A registry being computed is skipped by the task: its holder checks the state
    again when it is done.)"""
    if not figures.outdated():
        return
    waiting = DBTaskResult.objects.ready().filter(task_path=refresh_storage_figures.module_path)
    if not waiting.exists():
        refresh_storage_figures.enqueue()


def events_due() -> bool:
    return events.due_events().exists()
