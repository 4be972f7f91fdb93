"""Settling what a process left half-done when it stopped (SIGKILL, a lost host, a
database that went away): the deletions, retention runs and syncs it recorded as running.

Each such record is held by a lease while its process works on it (a deletion by its
repository's, a retention run by its own), so "running, and its lease is free" means
"interrupted", whichever process or host ran it: a worker, `delete_images` or
`apply_retention` on someone's terminal. Settling asks the registry what went, holding
that lease (which fences out a holder that was only stalled), and writes it down. The
workers call `settle_interrupted` every few seconds (`jobs.worker.recover`).

A job that deletes (a deletion, a retention run) and stopped is closed from those records
once they are settled: never run again once a DELETE may have gone out (`close_job`)."""

from __future__ import annotations

import logging

from django.core.exceptions import ImproperlyConfigured
from django.db.models import Q
from django.utils import timezone

from hubimages.deletion import execution
from hubimages.jobs.queue import retry_or_fail, start_sync
from hubimages.lib.formatting import plural
from hubimages.models import Deletion, DeletionRecord, Job, RetentionRun
from hubimages.registries.client import ClientsByRegistry
from hubimages.retention import runs
from hubimages.sync import service
from registry.errors import RegistryError

log = logging.getLogger("hubimages.jobs")


def settle_interrupted() -> list[int]:
    """Settle every interrupted sync, deletion and retention run that can be settled now;
    the others (their leases still held, the registry not answering) wait for the next call.
    Returns the ids of the retention runs settled."""
    service.settle_interrupted_syncs()
    deletions = list(Deletion.objects.filter(state=Deletion.State.RUNNING))
    retention_runs = list(RetentionRun.objects.filter(outcome=RetentionRun.Outcome.RUNNING))
    if not deletions and not retention_runs:
        return []
    try:
        with ClientsByRegistry() as client_for:
            execution.settle_interrupted(client_for, deletions)
            return runs.settle_interrupted(client_for, retention_runs)
    except (RegistryError, ImproperlyConfigured) as error:  # e.g. a registry not configured
        log.warning("could not settle interrupted deletions yet: %s", error)
        return []


# -- jobs that delete ---------------------------------------------------------------------------

DELETING = (Job.Kind.DELETION, Job.Kind.RETENTION)


def records_settled(job: Job) -> bool:
    """Whether nothing the job recorded is still running (its deletions, its runs)."""
    return not (
        Deletion.objects.filter(
            Q(job=job) | Q(retention_run__job=job), state=Deletion.State.RUNNING
        ).exists()
        or RetentionRun.objects.filter(job=job, outcome=RetentionRun.Outcome.RUNNING).exists()
    )


def may_have_deleted(job: Job) -> bool:
    """Whether one of the job's DELETEs may have gone out: a record is written before each."""
    return DeletionRecord.objects.filter(
        Q(operation__job=job) | Q(operation__retention_run__job=job)
    ).exists()


def close_job(job: Job, reason: str) -> None:
    """Close a deletion or retention job that stopped before it could (`reason`), once its
    records are settled (`records_settled`): run again if nothing can have been deleted,
    else failed, never run again, its outcome and message saying exactly what went from
    the records, and a sync of each repository it deleted in started (what the database
    says of them may lag the registry). Call it in the transaction that marks its task
    ended: the job is closed and its syncs started together, or neither."""
    if not may_have_deleted(job):
        retry_or_fail(job, f"{reason}; nothing had been deleted")
        return
    if job.kind == Job.Kind.RETENTION:
        outcome, message, touched = _retention_account(job)
    else:
        outcome, message, touched = _deletion_account(job)
    Job.objects.filter(pk=job.pk).update(
        state=Job.State.FAILED,
        outcome=outcome,
        message=f"{reason}: {message}",
        progress="",
        finished_at=timezone.now(),
    )
    for registry, repository in touched:
        start_sync(registry=registry, started_by="recovery", repository=repository)


def _deletion_account(job: Job) -> tuple[dict, str, list[tuple[str, str]]]:
    operation = Deletion.objects.filter(job=job).order_by("pk").last()
    records = list(operation.records.order_by("pk"))
    deleted = [r for r in records if r.state == DeletionRecord.State.DONE]
    outcome = {
        "deletion_id": operation.pk,
        "stale": False,
        "deleted": [
            {"digest": r.digest, "kind": r.kind, "tags": r.tags, "size": r.size} for r in deleted
        ],
        "failed": [
            {"digest": r.digest, "reason": r.message or "not deleted"}
            for r in records
            if r.state == DeletionRecord.State.FAILED
        ],
        "skipped": [],
        "reclaimed_bytes": operation.reclaimed_bytes,
        "deletes_disabled": False,
    }
    message = (
        f"{plural(len(deleted), 'manifest')} had been deleted; nothing more was deleted, and "
        "the deletion is not run again: the deletion history says what went"
    )
    return outcome, message, [(operation.registry, operation.repository)]


def _retention_account(job: Job) -> tuple[dict, str, list[tuple[str, str]]]:
    run = RetentionRun.objects.filter(job=job).order_by("pk").last()
    outcome = {
        "policy": job.params.get("policy", run.policy_name),
        "retention_run": run.pk,
        "run_outcome": run.outcome,
        "message": run.message,
    }
    message = (
        f"the run had deleted {plural(run.manifests_deleted, 'manifest')} and "
        f"{plural(run.tags_deleted, 'tag')}; nothing more was deleted, and the run is not "
        "started again: its record says what went"
    )
    touched = sorted(
        {
            (note.get("registry", "default"), note["repository"])
            for note in run.repositories
            if note.get("deleted")
        }
    )
    return outcome, message, touched
