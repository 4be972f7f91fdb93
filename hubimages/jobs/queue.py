"""Starting jobs: a `Job` row and its task enqueued in one transaction; retries
enqueued again with back-off. The task is named by its path (`RUN_JOB`), so this module
needs nothing of the modules that run jobs."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Case, F, Q, QuerySet, Value, When
from django.tasks import TaskResultStatus
from django.utils import timezone
from django.utils.module_loading import import_string
from django_tasks_db.models import DBTaskResult

from hubimages.lib import audit
from hubimages.lib.audit import Action, Actor
from hubimages.models import Deletion, Job, Repository
from hubimages.registries.config import DEFAULT

log = logging.getLogger("hubimages.jobs")

Kind = Job.Kind
State = Job.State
RETRY_DELAYS = (15, 60, 300)  # seconds before the 2nd, 3rd… attempt
# The task that runs a job, by its path: it imports the modules that run jobs, which use
# this one to retry.
RUN_JOB = "hubimages.jobs.tasks.run_job"


class Retry(Exception):
    """The job failed for a reason that may pass: try again later."""


# -- starting ---------------------------------------------------------------------------------


def start(
    kind: str,
    *,
    user=None,
    started_by: str = "",
    registry: str = "",
    repository: str = "",
    params: dict | None = None,
    max_attempts: int = 3,
    audited: tuple[str, Actor, str] | None = None,
) -> Job:
    """Record the job and enqueue its task, in one transaction; with `audited` (action,
    actor, target), its audit entry too, naming the job and its parameters."""
    run_job = import_string(RUN_JOB)
    with transaction.atomic():
        job = Job.objects.create(
            kind=kind,
            user=user,
            started_by=started_by or (user.get_username() if user else ""),
            registry=registry,
            repository=repository,
            params=params or {},
            max_attempts=max_attempts,
        )
        result = run_job.enqueue(job.pk)
        Job.objects.filter(pk=job.pk).update(task_id=str(result.id))
        job.task_id = str(result.id)
        if audited is not None:
            action, by, target = audited
            audit.record(action, by=by, target=target, job=job.pk, **job.params)
    return job


def start_sync(*, registry: str = "", user=None, started_by: str = "", repository: str = "") -> Job:
    """A full sync of `registry` (or of one repository), unless the same one is already
    queued or running: then that job, so a second click follows the first. Only a job
    whose task still waits or runs is followed: one whose task ended without closing it is
    the workers' to line up (`jobs.worker.recover`), and never holds up a new sync."""
    kind = Kind.SYNC_REPOSITORY if repository else Kind.SYNC
    for waiting in Job.objects.filter(
        kind=kind,
        registry=registry,
        repository=repository,
        state__in=(State.QUEUED, State.RUNNING),
    ):
        live = (TaskResultStatus.READY, TaskResultStatus.RUNNING)
        if DBTaskResult.objects.filter(id=waiting.task_id, status__in=live).exists():
            return waiting
    return start(kind, user=user, started_by=started_by, registry=registry, repository=repository)


def start_retention(
    *,
    policy: str,
    now: datetime,
    fingerprint: str | None,
    user=None,
    started_by: str = "",
    scheduled: bool = False,
    by: Actor | None = None,
) -> Job:
    """A retention run of the stored policy `policy` as of `now`: exactly the dry run
    previewed as `fingerprint`, or (scheduled, no fingerprint) previewed and executed in
    one go with the brake. Audited as run `by` whom (else the user, or who started it)."""
    params = {
        "policy": policy,
        "now": now.isoformat(),
        "fingerprint": fingerprint,
        "scheduled": scheduled,
    }
    by = by or _actor(user, started_by)
    return start(
        Kind.RETENTION,
        user=user,
        started_by=started_by,
        params=params,
        audited=(Action.POLICY_RUN, by, policy),
    )


def start_deletion(
    *,
    repository: Repository,
    digests: list[str],
    fingerprint: str,
    user,
    by: Actor | None = None,
) -> Job:
    """The deletion of a previewed plan: executed by a worker, exactly that plan or nothing.
    Not retried once it may have deleted something (see `_run_deletion`). Audited as
    started `by` whom (else the user)."""
    params = {"digests": digests, "fingerprint": fingerprint}
    return start(
        Kind.DELETION,
        user=user,
        registry=repository.registry.name,
        repository=repository.name,
        params=params,
        audited=(Action.DELETION_STARTED, by or _actor(user, ""), _target(repository)),
    )


def start_restore(
    *,
    operations: list[Deletion],
    digests: list[str] | None = None,
    move_tags: bool = False,
    user=None,
    started_by: str = "",
    by: Actor | None = None,
) -> Job:
    """Put back what deletion operations deleted (one, or a retention run's), or only
    `digests` of them, from the Trash. Safe to run twice, so retried like a sync. Audited
    as a restore started `by` whom (else the user), naming each operation's repository."""
    registries = {operation.registry for operation in operations}
    repositories = {operation.repository for operation in operations}
    params = {
        "operations": [operation.pk for operation in operations],
        "digests": list(digests or []),
        "move_tags": move_tags,
    }
    return start(
        Kind.RESTORE,
        user=user,
        started_by=started_by,
        registry=registries.pop() if len(registries) == 1 else "",
        repository=repositories.pop() if len(repositories) == 1 else "",
        params=params,
        audited=(Action.RESTORE, by or _actor(user, started_by), restore_target(operations)),
    )


def restore_target(operations: list[Deletion]) -> str:
    """The repositories a restore puts back into, as the audit log names them."""
    names = dict.fromkeys(
        op.repository if op.registry == "default" else f"{op.registry}/{op.repository}"
        for op in operations
    )
    return ", ".join(names)


def start_trash_check(*, registry: str, user=None, started_by: str = "") -> Job:
    """Ask the registry about everything its Trash holds, unless that is queued or running
    already (its task still waiting or running, as `start_sync` follows): then that job."""
    for waiting in Job.objects.filter(
        kind=Kind.TRASH_CHECK, registry=registry, state__in=(State.QUEUED, State.RUNNING)
    ):
        live = (TaskResultStatus.READY, TaskResultStatus.RUNNING)
        if DBTaskResult.objects.filter(id=waiting.task_id, status__in=live).exists():
            return waiting
    return start(Kind.TRASH_CHECK, user=user, started_by=started_by, registry=registry)


def _actor(user, started_by: str) -> Actor:
    return Actor.of_user(user) if user is not None else Actor(name=started_by)


def _target(repository: Repository) -> str:
    """A repository as the audit log names it: `prod/team/api`, `team/api` in `default`."""
    registry = repository.registry.name
    return repository.name if registry == "default" else f"{registry}/{repository.name}"


def visible_to(user, within: Q | None = None) -> QuerySet[Job]:
    """The jobs `user` may follow: their own; for admins (`is_staff`) also every full
    sync (theirs to watch) and everyone's jobs in the repositories `within` lets through
    (a filter on `registry_name`, the job's registry with `default` for the jobs made
    before there were several, and `repository`: those the admin may see; None: every
    job, for who sees everything). A retention run spans repositories: an admin who does
    not see everything follows their own only."""
    own = Q(user=user)
    if not user.is_staff:
        return Job.objects.filter(own)
    if within is None:
        return Job.objects.all()
    jobs = Job.objects.annotate(
        registry_name=Case(When(registry="", then=Value(DEFAULT)), default=F("registry"))
    )
    return jobs.filter(own | Q(kind=Job.Kind.SYNC) | (~Q(repository="") & within))


def fail_job(job: Job, message: str) -> None:
    Job.objects.filter(pk=job.pk).update(
        state=State.FAILED, message=message, progress="", finished_at=timezone.now()
    )


def retry_or_fail(job: Job, reason: str) -> None:
    job.refresh_from_db(fields=["attempts", "max_attempts"])
    if job.attempts >= job.max_attempts:
        fail_job(job, f"gave up after {job.attempts} attempts: {reason}")
        return
    run_job = import_string(RUN_JOB)
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
