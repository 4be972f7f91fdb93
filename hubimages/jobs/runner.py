"""Jobs: the long or registry-bound work that people (or the schedule) start, run by the
workers as `django.tasks` on django-tasks-db's queue (SPEC §7).

A web request only calls `start_…`, which writes a `Job` and enqueues its task in one
transaction, and answers at once; the page then follows the job's progress. The task
(`hubimages.jobs.tasks.run_job`) calls `run`, which runs the job's service and records its
progress, outcome or failure. A failure that may pass (the registry unreachable, the
repository busy) is retried with back-off, at most `max_attempts` times.

django-tasks-db leaves a task whose worker died in RUNNING for ever. Every worker beats a
`WorkerHeartbeat`; `worker.recover`, which the workers run every few seconds, lines every
unfinished job up with its task (lost with its worker, ended without closing the job, gone
from the queue) and runs it again or closes it. Their leases (repository locks) expire by
themselves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import F, Q
from django.utils import timezone

from hubimages.deletion import execution
from hubimages.jobs import recovery
from hubimages.jobs.queue import Kind, Retry, State, fail_job, retry_or_fail
from hubimages.lib.formatting import plural
from hubimages.lib.leases import LeaseBusy, LeaseLost
from hubimages.models import Deletion, Job, Repository, RetentionPolicy, RetentionRun
from hubimages.registries import probes, rows
from hubimages.registries.client import ClientsByRegistry, registry_client
from hubimages.retention import policies, runs
from hubimages.storage import figures
from hubimages.sync import service
from hubimages.trash import restore, states
from registry.errors import RegistryError

log = logging.getLogger("hubimages.jobs")
PROGRESS_EVERY = 0.5  # seconds between two progress writes
# What changes the registry's stored bytes between two full syncs: a point of the Storage
# page's history after each (`storage.figures.record_change`).
CHANGES_STORAGE = (Kind.DELETION, Kind.RETENTION, Kind.RESTORE)


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
    except Retry as reason:  # raised only while nothing can have been deleted
        retry_or_fail(job, str(reason))
    except Exception as error:
        if job.kind in recovery.DELETING and recovery.may_have_deleted(job):
            log.exception("job %s (%s) stopped after its DELETEs began", job.pk, job.kind)
            _close_after_deletes(job, f"stopped by an error after its DELETEs began: {error}")
        elif isinstance(error, (LeaseBusy, DatabaseError)) or (
            isinstance(error, RegistryError) and error.retryable
        ):
            retry_or_fail(job, str(error))
        elif isinstance(error, RegistryError):
            fail_job(job, str(error))
        else:
            log.exception("job %s (%s) failed", job.pk, job.kind)
            fail_job(job, f"internal error: {error!r}")
    else:
        _finish(job, outcome)
    if job.kind in CHANGES_STORAGE:
        try:  # even a failed one may have deleted some
            figures.record_change(_registries_changed(job))
        except DatabaseError:  # the next full sync adds a point anyway
            log.exception("could not add a storage history point after job %s", job.pk)


def _registries_changed(job: Job) -> set[str]:
    """The registries whose stored bytes a deletion, retention or restore job may have
    changed: those of the deletions it made or restored. One query."""
    touched = Q(job=job) | Q(retention_run__job=job) | Q(pk__in=job.params.get("operations", []))
    return set(Deletion.objects.filter(touched).values_list("registry", flat=True))


def _close_after_deletes(job: Job, reason: str) -> None:
    """Never retried once a DELETE may have gone out: what it recorded is settled from the
    registry and the job closed saying what went (`recovery.close_job`). If that cannot be
    done now (the database still away, the repository busy), the job stays running and
    the workers' sweep closes it (`worker.recover`)."""
    recovery.settle_interrupted()
    if not recovery.records_settled(job):
        Job.objects.filter(pk=job.pk).update(message=f"{reason}; settling what went")
        return
    with transaction.atomic():
        recovery.close_job(job, reason)


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


def _run_full_sync(job: Job, progress: Callable[[str], None]) -> dict:
    registry = rows.get(job.registry or None)
    config = rows.configuration(registry.name)
    with registry_client(registry) as client:
        summary = service.sync_registry(
            client,
            registry=registry,
            catalog=config.repositories if config else (),
            workers=settings.SYNC_WORKERS,
            progress=progress,
            after_full_sync=figures.after_full_sync,
        )
        # What the registry can do, asked anew after each of its full syncs (a handful of
        # cheap requests) for the Registries page.
        progress("Probing what the registry can do")
        try:
            probes.probe(registry, client)
        except RegistryError as error:
            log.warning("could not probe registry %s: %s", registry.name, error)
        if summary.succeeded:
            # A garbage collection the sync noticed may have taken what the Trash holds.
            try:
                if states.after_collection(registry, client, progress=progress):
                    log.info("checked the Trash of %s after a garbage collection", registry.name)
            except RegistryError as error:
                log.warning("could not check the Trash of %s: %s", registry.name, error)
    return _sync_outcome(summary)


def _run_repository_sync(job: Job, progress: Callable[[str], None]) -> dict:
    registry = rows.get(job.registry or None)
    with registry_client(registry) as client:
        summary = service.sync_registry(
            client,
            registry=registry,
            repositories=[job.repository],
            workers=settings.SYNC_WORKERS,
            progress=progress,
        )
    return _sync_outcome(summary)


def _sync_outcome(summary: service.SyncSummary) -> dict:
    outcome = summary.as_dict()
    if summary.errors:
        count = len(summary.errors)
        outcome["failed_because"] = f"{plural(count, 'error')}: {'; '.join(summary.errors[:3])}"
    return outcome


def _run_deletion(job: Job, progress: Callable[[str], None]) -> dict:
    """Retried only while nothing can have been deleted: the registry unreachable for the
    re-check, the repository busy. Once a DELETE may have gone out, a failure (an error of
    the database included) is final, and the history says what went (`run`)."""
    repository = (
        Repository.objects.select_related("registry")
        .filter(registry__name=job.registry or rows.default_name(), name=job.repository)
        .first()
    )
    if repository is None:
        return {"failed_because": f"repository {job.repository} is no longer known"}
    try:
        with registry_client(repository.registry) as client:
            outcome = execution.execute_deletion(
                repository=repository,
                digests=job.params["digests"],
                fingerprint=job.params["fingerprint"],
                user=job.user,
                client=client,
                username=job.started_by,
                progress=progress,
                allow_in_use=bool(job.params.get("allow_in_use")),
                job=job,
            )
    except execution.RecheckFailed as error:
        raise Retry(f"nothing was deleted: {error}") from None
    except LeaseLost as error:
        return {"failed_because": f"stopped: {error}; the deletion history says what went"}
    return deletion_outcome(outcome)


def deletion_outcome(outcome: execution.DeletionOutcome) -> dict:
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
        "warnings": list(outcome.warnings),
    }
    if outcome.stale:
        result["failed_because"] = execution.CHANGED_MESSAGE
        result["plan"] = {**outcome.plan.as_dict(), "fingerprint": outcome.plan.fingerprint}
    elif outcome.failed or outcome.skipped:
        count = len(outcome.failed) + len(outcome.skipped)
        result["failed_because"] = f"{plural(count, 'manifest')} not deleted"
    return result


def _run_retention(job: Job, progress: Callable[[str], None]) -> dict:
    """A busy repository (nothing deleted) is retried; a plan that changed or a registry
    that failed the re-check ends the job with the run's record saying why."""
    row = RetentionPolicy.objects.filter(name=job.params["policy"]).first()
    if row is None:
        return {"failed_because": f"policy {job.params['policy']} no longer exists"}
    now = datetime.fromisoformat(job.params["now"])
    progress(f"Running policy {row.name} as of {now:%Y-%m-%d %H:%M:%S} UTC")
    with ClientsByRegistry() as client_for:
        if job.params.get("scheduled"):
            result = runs.run_scheduled(row, now, client_for=client_for, job=job)
        else:
            result = runs.run(
                policy=policies.policy_of(row),
                now=now,
                fingerprint=job.params["fingerprint"],
                client_for=client_for,
                trigger=RetentionRun.Trigger.MANUAL,
                started_by=job.started_by,
                user=job.user,
                row=row,
                job=job,
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


def _run_restore(job: Job, progress: Callable[[str], None]) -> dict:
    """Idempotent, so a failure that may pass is retried like a sync's, and a job whose
    worker died mid-way is run again (`worker.recover`: not one of `recovery.DELETING`)
    once the dead worker's repository lease ran out; a lease taken over mid-way stops it
    before its next PUT (fenced) and it runs again. A refusal (what was asked can no
    longer be restored) is final, and nothing was sent."""
    ids = job.params["operations"]
    operations = list(Deletion.objects.filter(pk__in=ids).order_by("started_at", "pk"))
    if len(operations) != len(ids):
        return {"failed_because": "that deletion is no longer in the Trash"}
    try:
        with ClientsByRegistry() as client_for:
            outcome = restore.restore_operations(
                operations,
                digests=job.params.get("digests") or None,
                move_tags=job.params.get("move_tags", False),
                client_for=client_for,
                username=job.started_by,
                progress=progress,
            )
    except restore.RestoreRefused as refused:
        return {"operations": ids, "refused": str(refused), "failed_because": str(refused)}
    except LeaseLost as error:
        raise Retry(f"stopped: {error}") from None
    result = {"operations": ids, **outcome.as_dict()}
    if not outcome.complete:
        result["failed_because"] = outcome.message()
    return result


def _run_trash_check(job: Job, progress: Callable[[str], None]) -> dict:
    registry = rows.get(job.registry or None)
    progress(f"Asking registry {registry.name} about what its Trash holds")
    with registry_client(registry) as client:
        counts = states.check_registry(registry, client)
    return {"registry": registry.name, "states": counts}


HANDLERS: dict[str, Callable[[Job, Callable[[str], None]], dict]] = {
    Kind.SYNC: _run_full_sync,
    Kind.SYNC_REPOSITORY: _run_repository_sync,
    Kind.DELETION: _run_deletion,
    Kind.RETENTION: _run_retention,
    Kind.RESTORE: _run_restore,
    Kind.TRASH_CHECK: _run_trash_check,
}
