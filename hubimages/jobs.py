"""Jobs: the long or registry-bound work that people (or the schedule) start, run by the
workers as `django.tasks` on django-tasks-db's queue (SPEC §7).

A web request only calls `start_…`, which writes a `Job` and enqueues its task in one
transaction, and answers at once; the page then follows the job's progress. The task
(`hubimages.tasks.run_job`) calls `run`, which runs the job's service and records its
progress, outcome or failure. A failure that may pass (the registry unreachable, the
repository busy) is retried with back-off, at most `max_attempts` times.

django-tasks-db leaves a task whose worker died in RUNNING for ever. Every worker beats a
`WorkerHeartbeat`; `recover`, which the workers run every few seconds, finds the tasks of
workers that stopped beating and runs their jobs again or marks them failed. Their leases
(repository locks) expire by themselves.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import F, Q, QuerySet
from django.tasks import TaskResultStatus
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from hubimages import deletion, events, retention, storage, sync
from hubimages.connection import registry_client
from hubimages.locks import LeaseBusy, LeaseLost
from hubimages.models import (
    Deletion,
    Job,
    Repository,
    RetentionPolicy,
    RetentionRun,
    Schedule,
    WorkerHeartbeat,
)
from registry.errors import RegistryError

log = logging.getLogger("hubimages.jobs")

Kind = Job.Kind
State = Job.State
RETRY_DELAYS = (15, 60, 300)  # seconds before the 2nd, 3rd… attempt
PROGRESS_EVERY = 0.5  # seconds between two progress writes
KEEP_FINISHED = timedelta(days=30)
SCHEDULE_SYNC = "sync"
SCHEDULE_HOUSEKEEPING = "housekeeping"
HOUSEKEEPING_EVERY = timedelta(hours=1)


class Retry(Exception):
    """The job failed for a reason that may pass: try again later."""


# -- starting ---------------------------------------------------------------------------------


def start(
    kind: str,
    *,
    user=None,
    started_by: str = "",
    repository: str = "",
    params: dict | None = None,
    max_attempts: int = 3,
) -> Job:
    """Record the job and enqueue its task, in one transaction."""
    from hubimages.tasks import run_job

    with transaction.atomic():
        job = Job.objects.create(
            kind=kind,
            user=user,
            started_by=started_by or (user.get_username() if user else ""),
            repository=repository,
            params=params or {},
            max_attempts=max_attempts,
        )
        result = run_job.enqueue(job.pk)
        Job.objects.filter(pk=job.pk).update(task_id=str(result.id))
        job.task_id = str(result.id)
    return job


def start_sync(*, user=None, started_by: str = "", repository: str = "") -> Job:
    """A full sync (or one repository's), unless the same one is already queued or running:
    then that job, so a second click follows the first."""
    kind = Kind.SYNC_REPOSITORY if repository else Kind.SYNC
    waiting = Job.objects.filter(
        kind=kind, repository=repository, state__in=(State.QUEUED, State.RUNNING)
    ).first()
    return waiting or start(kind, user=user, started_by=started_by, repository=repository)


def start_retention(
    *,
    policy: str,
    now: datetime,
    fingerprint: str | None,
    user=None,
    started_by: str = "",
    scheduled: bool = False,
) -> Job:
    """A retention run of the stored policy `policy` as of `now`: exactly the dry run
    previewed as `fingerprint`, or (scheduled, no fingerprint) previewed and executed in
    one go with the brake."""
    params = {
        "policy": policy,
        "now": now.isoformat(),
        "fingerprint": fingerprint,
        "scheduled": scheduled,
    }
    return start(Kind.RETENTION, user=user, started_by=started_by, params=params)


def start_deletion(*, repository: Repository, digests: list[str], fingerprint: str, user) -> Job:
    """The deletion of a previewed plan: executed by a worker, exactly that plan or nothing.
    Not retried once it may have deleted something (see `_run_deletion`)."""
    params = {"digests": digests, "fingerprint": fingerprint}
    return start(Kind.DELETION, user=user, repository=repository.name, params=params)


def visible_to(user) -> QuerySet[Job]:
    """The jobs `user` may follow: admins everyone's, others their own."""
    return Job.objects.all() if user.is_staff else Job.objects.filter(user=user)


# -- running (in a worker) ----------------------------------------------------------------------


def run(job_id: int, *, worker_id: str = "") -> None:
    """Run a queued job once; called by its task."""
    now = timezone.now()
    claimed = Job.objects.filter(pk=job_id, state=State.QUEUED).update(
        state=State.RUNNING,
        started_at=now,
        finished_at=None,
        attempts=F("attempts") + 1,
        worker_id=worker_id[:64],
        progress="Started",
    )
    if not claimed:
        return  # finished or taken over meanwhile
    job = Job.objects.get(pk=job_id)
    try:
        outcome = HANDLERS[job.kind](job, _progress_writer(job))
    except Retry as reason:
        _retry_or_fail(job, str(reason))
    except (LeaseBusy, RegistryError, DatabaseError) as error:
        retryable = not isinstance(error, RegistryError) or error.retryable
        if retryable:
            _retry_or_fail(job, str(error))
        else:
            _fail(job, str(error))
    except Exception as error:
        log.exception("job %s (%s) failed", job.pk, job.kind)
        _fail(job, f"internal error: {error!r}")
    else:
        _finish(job, outcome)


def _progress_writer(job: Job) -> Callable[[str], None]:
    last = 0.0

    def write(line: str) -> None:
        nonlocal last
        if time.monotonic() - last >= PROGRESS_EVERY:
            last = time.monotonic()
            Job.objects.filter(pk=job.pk).update(progress=line[:500])

    return write


def _finish(job: Job, outcome: dict) -> None:
    failed = outcome.pop("failed_because", "")
    Job.objects.filter(pk=job.pk).update(
        state=State.FAILED if failed else State.SUCCEEDED,
        outcome=outcome,
        message=failed,
        progress="",
        finished_at=timezone.now(),
    )


def _fail(job: Job, message: str) -> None:
    Job.objects.filter(pk=job.pk).update(
        state=State.FAILED, message=message, progress="", finished_at=timezone.now()
    )


def _retry_or_fail(job: Job, reason: str) -> None:
    job.refresh_from_db(fields=["attempts", "max_attempts"])
    if job.attempts >= job.max_attempts:
        _fail(job, f"gave up after {job.attempts} attempts: {reason}")
        return
    from hubimages.tasks import run_job

    delay = RETRY_DELAYS[min(max(job.attempts - 1, 0), len(RETRY_DELAYS) - 1)]
    run_after = timezone.now() + timedelta(seconds=delay)
    with transaction.atomic():
        result = run_job.using(run_after=run_after).enqueue(job.pk)
        Job.objects.filter(pk=job.pk).update(
            state=State.QUEUED,
            task_id=str(result.id),
            progress="",
            message=f"attempt {job.attempts} of {job.max_attempts} failed: {reason}; "
            f"trying again at {run_after:%H:%M:%S} UTC",
        )


def _run_full_sync(job: Job, progress: Callable[[str], None]) -> dict:
    with registry_client() as client:
        summary = sync.sync_registry(
            client,
            catalog=settings.REGISTRY_REPOSITORIES,
            workers=settings.SYNC_WORKERS,
            progress=progress,
        )
    if summary.succeeded:
        # The Storage page's figures for the state the sync left, computed here rather
        # than by the first person who opens the page.
        progress("Computing the storage figures")
        storage.insights()
    return _sync_outcome(summary)


def _run_repository_sync(job: Job, progress: Callable[[str], None]) -> dict:
    with registry_client() as client:
        summary = sync.sync_registry(
            client, repositories=[job.repository], workers=settings.SYNC_WORKERS, progress=progress
        )
    return _sync_outcome(summary)


def _sync_outcome(summary: sync.SyncSummary) -> dict:
    outcome = summary.as_dict()
    if summary.errors:
        count = len(summary.errors)
        outcome["failed_because"] = (
            f"{count} error{'s' if count != 1 else ''}: {'; '.join(summary.errors[:3])}"
        )
    return outcome


def _run_deletion(job: Job, progress: Callable[[str], None]) -> dict:
    """Retried only while nothing can have been deleted: the registry unreachable for the
    re-check, the repository busy. Once DELETEs went out, a failure is final and the
    history says what went."""
    repository = Repository.objects.filter(name=job.repository).first()
    if repository is None:
        return {"failed_because": f"repository {job.repository} is no longer known"}
    try:
        with registry_client() as client:
            outcome = deletion.execute_deletion(
                repository=repository,
                digests=job.params["digests"],
                fingerprint=job.params["fingerprint"],
                user=job.user,
                client=client,
                username=job.started_by,
                progress=progress,
            )
    except deletion.RecheckFailed as error:
        raise Retry(f"nothing was deleted: {error}") from None
    except LeaseLost as error:
        return {"failed_because": f"stopped: {error}; the deletion history says what went"}
    return deletion_outcome(outcome)


def deletion_outcome(outcome: deletion.DeletionOutcome) -> dict:
    """A deletion's outcome as a job records it (and the API returns it)."""
    result = {
        "deletion_id": outcome.operation_id,
        "stale": outcome.stale,
        "deleted": [
            {"digest": i.digest, "kind": i.kind, "tags": list(i.tags), "size": i.size}
            for i in outcome.deleted
        ],
        "failed": [{"digest": i.digest, "reason": i.reason} for i in outcome.failed],
        "skipped": [{"digest": i.digest, "reason": i.reason} for i in outcome.skipped],
        "reclaimed_bytes": outcome.reclaimed_bytes,
        "deletes_disabled": outcome.deletes_disabled,
    }
    if outcome.stale:
        result["failed_because"] = deletion.CHANGED_MESSAGE
        result["plan"] = {**outcome.plan.as_dict(), "fingerprint": outcome.plan.fingerprint}
    elif outcome.failed or outcome.skipped:
        count = len(outcome.failed) + len(outcome.skipped)
        result["failed_because"] = f"{count} manifest{'s' if count != 1 else ''} not deleted"
    return result


def _run_retention(job: Job, progress: Callable[[str], None]) -> dict:
    """A busy repository (nothing deleted) is retried; a plan that changed or a registry
    that failed the re-check ends the job with the run's record saying why."""
    row = RetentionPolicy.objects.filter(name=job.params["policy"]).first()
    if row is None:
        return {"failed_because": f"policy {job.params['policy']} no longer exists"}
    now = datetime.fromisoformat(job.params["now"])
    progress(f"Running policy {row.name} as of {now:%Y-%m-%d %H:%M:%S} UTC")
    with registry_client() as client:
        if job.params.get("scheduled"):
            result = retention.run_scheduled(row, now, client=client)
        else:
            result = retention.run(
                policy=retention.policy_of(row),
                now=now,
                fingerprint=job.params["fingerprint"],
                client=client,
                trigger=RetentionRun.Trigger.MANUAL,
                started_by=job.started_by,
                user=job.user,
                row=row,
            )
    record = result.record
    if record.outcome == RetentionRun.Outcome.BUSY:
        raise Retry(record.message)
    outcome = {
        "policy": row.name,
        "retention_run": record.pk,
        "run_outcome": record.outcome,
        "message": record.message,
    }
    if record.outcome != RetentionRun.Outcome.DONE:
        outcome["failed_because"] = record.message
    return outcome


HANDLERS: dict[str, Callable[[Job, Callable[[str], None]], dict]] = {
    Kind.SYNC: _run_full_sync,
    Kind.SYNC_REPOSITORY: _run_repository_sync,
    Kind.DELETION: _run_deletion,
    Kind.RETENTION: _run_retention,
}


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
            exception_class_path="hubimages.jobs.WorkerLost",
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
    _retry_or_fail(job, reason)


def _recover_deletion(job: Job, reason: str) -> None:
    """A deletion is never run twice: what went is settled from the registry, and a sync
    of the repository makes the list true again."""
    operations = Deletion.objects.filter(
        repository=job.repository, state=Deletion.State.RUNNING, started_at__gte=job.created_at
    )
    try:
        with registry_client() as client:
            for operation in operations:
                deletion.resolve_interrupted(client, operation)
    except RegistryError as error:
        log.warning("could not settle the interrupted deletion of job %s: %s", job.pk, error)
    _fail(job, f"{reason}; nothing more was deleted; the deletion history says what went")
    start_sync(started_by="recovery", repository=job.repository)


def schedule_due(now: datetime | None = None) -> list[Job]:
    """Start what the schedule says is due: the periodic full sync, the retention policies
    whose time has come. Any number of workers may call this at once; conditional UPDATEs
    (`Schedule`, each policy's `next_run_at`) let one of them win each."""
    now = now or timezone.now()
    started = []
    interval = settings.SYNC_INTERVAL_MINUTES
    if interval and claim_schedule(SCHEDULE_SYNC, now, timedelta(minutes=interval)):
        started.append(start_sync(started_by="schedule"))
    for policy in retention.claim_due_policies(now):
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
    """Keep the tables bounded: processed events, finished tasks and jobs."""
    pruned = events.prune(now - timedelta(days=settings.EVENTS_KEEP_DAYS))
    finished = Q(status=TaskResultStatus.SUCCESSFUL) | Q(status=TaskResultStatus.FAILED)
    DBTaskResult.objects.filter(finished, finished_at__lt=now - KEEP_FINISHED).delete()
    Job.objects.filter(
        state__in=(State.SUCCEEDED, State.FAILED), finished_at__lt=now - KEEP_FINISHED
    ).delete()
    log.info("housekeeping: forgot %s processed registry events", pruned)


def ensure_drain(run_after: datetime | None = None) -> None:
    """Enqueue a drain of the registry events unless one is already due. A new event
    gets a drain now even while older ones wait for a retry time: the registry that sent
    it is up. A retry (`run_after`) is enqueued unless any drain is waiting."""
    from hubimages.tasks import drain_events

    waiting = DBTaskResult.objects.ready().filter(task_path=drain_events.module_path)
    if run_after:
        waiting = DBTaskResult.objects.filter(
            status=TaskResultStatus.READY, task_path=drain_events.module_path
        )
    if not waiting.exists():
        (drain_events.using(run_after=run_after) if run_after else drain_events).enqueue()


def events_due() -> bool:
    return events.due_events().exists()


def maintain(worker_id: str, started_at: datetime) -> None:
    """What each worker does every few seconds besides its tasks."""
    beat(worker_id, started_at)
    recover()
    schedule_due()
    if events_due():
        ensure_drain()
