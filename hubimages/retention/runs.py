"""Runs of a retention policy: exactly the previewed dry run or nothing, repository by
repository under their leases, and the schedule that starts them."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone
from django.utils.text import capfirst

from hubimages.deletion import execution, planning
from hubimages.inuse.matching import Blocking
from hubimages.lib import leases
from hubimages.lib.formatting import human_size, plural
from hubimages.lib.leases import RepositoryBusy, repository_lock
from hubimages.models import (
    Deletion,
    DeletionRecord,
    Job,
    Registry,
    Repository,
    RetentionPolicy,
    RetentionRun,
)
from hubimages.retention.engine import (
    DryRun,
    RepositoryDryRun,
    blocked_message,
    dry_run,
    dry_run_fingerprint,
)
from hubimages.retention.policies import InvalidPolicy, PatternTooSlow, Policy, policy_of
from hubimages.sync.service import sync_repository
from registry.client import RegistryClient

# A scheduled run waits this long for a repository a sync or a deletion holds.
SCHEDULED_LOCK_WAIT = 30.0


# -- runs ----------------------------------------------------------------------------------


# A client for each registry a run touches (`registries.client.ClientsByRegistry`).
ClientFor = Callable[[Registry | str], RegistryClient]


@dataclass
class RunResult:
    """A run's record and the dry run it executed (or, when the plan changed, the fresh
    one to show instead)."""

    record: RetentionRun
    dry_run: DryRun

    @property
    def changed(self) -> bool:
        return self.record.outcome == RetentionRun.Outcome.CHANGED


def run(
    *,
    policy: Policy,
    now: datetime,
    fingerprint: str | None,
    client_for: ClientFor,
    trigger: str,
    started_by: str,
    user=None,
    brake: bool = False,
    registry: str | None = None,
    repositories: Collection[str] | None = None,
    row: RetentionPolicy | None = None,
    lock_wait: float = 0.0,
    job: Job | None = None,
) -> RunResult:
    """Execute the dry run previewed as `fingerprint` (as of its `now`), or nothing.

    Under the locks of every covered repository, each is re-read from its registry (through
    `client_for(registry)`) and the
    dry run computed again; only if it is still the one previewed does anything go, each
    repository through `deletion.execute_deletion` (which checks its own plan once more).
    A scheduled run passes `fingerprint=None` (it previews and executes in one go) and
    `brake=True`: it deletes nothing in a repository where it would delete more than
    `max_delete_fraction` of the top-level items, and says so in the record.

    The run is recorded as it starts (outcome "running"), held by its own lease
    (`leases.run_lease_name`) until it ends: a run whose process stopped mid-way is settled
    by the workers (`settle_interrupted`), its record then saying what went.

    While a required in-use source is out of date on a covered registry (SPEC §13), the run
    deletes nothing on that registry (its repositories are neither locked nor re-read) and
    its record says why: outcome "blocked" when that is every covered registry. This is
    checked again under the locks.

    A job runs it (`jobs.start_retention`): a web request only enqueues it. A pattern of
    the policy too slow to match (`PatternTooSlow`) deletes nothing and says which.
    """
    try:
        first = dry_run(policy, now=now, registry=registry, repositories=repositories)
    except PatternTooSlow as slow:
        return _not_run(row, policy.name, now, trigger, started_by, f"Nothing was deleted: {slow}")
    record, taken = _start(
        RetentionRun(
            policy=row,
            policy_name=policy.name,
            trigger=trigger,
            started_by=started_by,
            started_at=now,
            planned_bytes=first.reclaimable_bytes,
            job=job,
        )
    )
    with leases.holding(taken):
        if first.blocks_everything:
            return _finish(record, first, RetentionRun.Outcome.BLOCKED, _blocked(first))
        if fingerprint is not None and first.fingerprint != fingerprint:
            return _finish(record, first, RetentionRun.Outcome.CHANGED, CHANGED_MESSAGE)
        covered = [
            r.repository for r in first.repositories if r.registry not in first.blocked_registries
        ]
        try:
            with ExitStack() as stack:
                for repository in covered:
                    stack.enter_context(
                        repository_lock(
                            repository, owner=f"retention:{policy.name}", wait=lock_wait
                        )
                    )
                failure = _recheck(client_for, covered)
                if failure:
                    return _finish(record, first, RetentionRun.Outcome.FAILED, failure)
                try:
                    checked = dry_run(policy, now=now, registry=registry, repositories=repositories)
                except PatternTooSlow as slow:
                    message = f"Nothing was deleted: {slow}"
                    return _finish(record, first, RetentionRun.Outcome.FAILED, message)
                record.planned_bytes = checked.reclaimable_bytes
                if checked.blocks_everything:
                    outcome = RetentionRun.Outcome.BLOCKED
                    return _finish(record, checked, outcome, _blocked(checked))
                if fingerprint is not None and checked.fingerprint != fingerprint:
                    return _finish(record, checked, RetentionRun.Outcome.CHANGED, CHANGED_MESSAGE)
                # Blocked by either: a source that reported again meanwhile does not open
                # a registry this run did not lock and re-read.
                blocked = {b.source: b for b in (*first.blocked, *checked.blocked)}
                return _execute(
                    record,
                    checked,
                    client_for,
                    user=user,
                    brake=brake,
                    blocked=tuple(blocked.values()),
                )
        except RepositoryBusy as busy:
            return _finish(
                record, first, RetentionRun.Outcome.BUSY, f"Nothing was deleted: {busy}."
            )


def _start(record: RetentionRun) -> tuple[RetentionRun, leases.HeldLease]:
    """Write the run and take its lease in one transaction: no worker ever sees the run
    without its lease (and settles it while it runs)."""
    with transaction.atomic():
        record.outcome = RetentionRun.Outcome.RUNNING
        record.save()
        taken = leases.acquire_new(
            leases.run_lease_name("retention", record.pk), owner=f"retention:{record.policy_name}"
        )
    return record, taken


def _blocked(dry: DryRun) -> str:
    return f"Nothing was deleted: {dry.blocked_message}"


CHANGED_MESSAGE = (
    "The registry changed since the preview, so the plan would differ: nothing was deleted."
)


def _recheck(client_for: ClientFor, repositories: list[Repository]) -> str:
    for repository in repositories:
        client = client_for(repository.registry)
        result = sync_repository(client, repository.name, registry=repository.registry)
        if result.error:
            return (
                f"Nothing was deleted: could not re-check {repository.name} against "
                f"registry {repository.registry.name}: {result.error}"
            )
    return ""


def _execute(
    record: RetentionRun,
    checked: DryRun,
    client_for: ClientFor,
    *,
    user,
    brake: bool,
    blocked: tuple[Blocking, ...] = (),
) -> RunResult:
    """Each repository in turn, but those on the registries of `blocked` (required in-use
    sources out of date), which are noted and left alone. A repository whose lease was
    taken over mid-way (its host stalled past the lease) stops the whole run: the others'
    leases are as old."""
    notes, incomplete, stopped = [], False, ""
    for repo in checked.repositories:
        if stopped:
            notes.append(_note(repo, note=f"not reached: the run stopped ({stopped})"))
            continue
        sources = [b.source for b in blocked if repo.registry in b.registries]
        if sources:
            why = f"the required in-use source {' and '.join(sources)} is out of date"
            notes.append(_note(repo, note=f"nothing deleted here: {why}"))
            incomplete = incomplete or bool(repo.plan.delete)
            continue
        client = client_for(repo.repository.registry)
        try:
            note, done = _execute_repository(
                repo, checked.policy, client, user=user, brake=brake, record=record
            )
        except execution.DeletionStopped as lost:
            stopped = str(lost)
            note, done = {**deleted_by(lost.operation_id), "note": f"stopped: {lost}"}, False
        notes.append(_note(repo, **note))
        incomplete = incomplete or not done
    record.repositories = notes
    record.manifests_deleted = sum(n["deleted"] for n in notes)
    record.tags_deleted = sum(n["tags"] for n in notes)
    record.reclaimed_bytes = sum(n["reclaimed_bytes"] for n in notes)
    outcome = RetentionRun.Outcome.INCOMPLETE if incomplete else RetentionRun.Outcome.DONE
    message = _summary(record, incomplete) + (f" Stopped: {stopped}." if stopped else "")
    if blocked:
        message += f" {capfirst(blocked_message(blocked))}"
    return _finish(record, checked, outcome, message)


def _note(repo: RepositoryDryRun, **note: Any) -> dict[str, Any]:
    return {
        "registry": repo.registry,
        "repository": repo.name,
        "selected": len(repo.selected),
        "deleted": 0,
        "tags": 0,
        "reclaimed_bytes": 0,
        **note,
    }


def deleted_by(operation_id: int) -> dict[str, int]:
    """What a deletion operation deleted, as its records say (each written before its
    DELETE and settled after, so they are the truth even for an operation cut short)."""
    done = DeletionRecord.objects.filter(operation_id=operation_id, state=DeletionRecord.State.DONE)
    rows = list(done.values_list("tags", "reclaimed_bytes"))
    return {
        "deleted": len(rows),
        "tags": sum(len(tags) for tags, _ in rows),
        "reclaimed_bytes": sum(reclaimed for _, reclaimed in rows),
    }


def _execute_repository(
    repo: RepositoryDryRun,
    policy: Policy,
    client: RegistryClient,
    *,
    user,
    brake: bool,
    record: RetentionRun,
) -> tuple[dict[str, Any], bool]:
    """Delete one repository's part of a checked dry run: (its note, whether it went as
    planned).

    Its plan is computed again first: a blob shared only with an item of a repository this
    run already cleaned is now reclaimable here too, so the bytes (and the fingerprint) may
    have grown. Only the bytes may differ; what goes, what stays and why must not."""
    if not repo.plan.delete:
        return {"note": "nothing to delete"}, True
    if brake and repo.over(policy.max_delete_fraction):
        return {
            "note": f"stopped: would delete {len(repo.selected)} of {repo.candidates} top-level "
            f"items ({repo.delete_fraction:.0%}), more than max_delete_fraction "
            f"{policy.max_delete_fraction:g}; nothing deleted here"
        }, False
    if repo.plan.refused:
        refused = "; ".join(f"{item.digest}: {item.reason}" for item in repo.plan.refused)
        return {"note": f"nothing deleted here: {refused}"}, False
    current = planning.plan_deletion(repository=repo.repository, digests=repo.selected)
    if not current.same_items_as(repo.plan):
        return {"note": CHANGED_WHILE_RUNNING}, False
    try:
        outcome = execution.execute_deletion(
            repository=repo.repository,
            digests=repo.selected,
            fingerprint=current.fingerprint,
            user=user,
            client=client,
            username=run_by(record),
            retention_run=record,
        )
    except execution.RecheckFailed as failure:
        return {"note": f"nothing deleted here: {failure}"}, False
    return _outcome_note(outcome), outcome.succeeded


CHANGED_WHILE_RUNNING = "the repository changed while the run went on: nothing deleted here"


def run_by(record: RetentionRun) -> str:
    """Who a run's deletions are recorded as: the person who pressed Run now (or the
    command line's `cli:user`) and the policy, "alice · policy nightly", or "scheduled ·
    policy nightly"; History, the Trash, the CSV and the API name them so."""
    who = "scheduled" if record.trigger == RetentionRun.Trigger.SCHEDULED else record.started_by
    return f"{who or 'someone'} · policy {record.policy_name}"[:150]


def _outcome_note(outcome: execution.DeletionOutcome) -> dict[str, Any]:
    if outcome.stale:
        return {"note": CHANGED_WHILE_RUNNING}
    problems = [f"failed {i.digest}: {i.reason}" for i in outcome.failed]
    problems += [f"skipped {i.digest}: {i.reason}" for i in outcome.skipped]
    return {
        "deleted": len(outcome.deleted),
        "tags": sum(len(item.tags) for item in outcome.deleted),
        "reclaimed_bytes": outcome.reclaimed_bytes,
        "note": "; ".join(problems) or "deleted as planned",
    }


def _summary(record: RetentionRun, incomplete: bool) -> str:
    text = (
        f"Deleted {plural(record.manifests_deleted, 'manifest')}"
        f" and {plural(record.tags_deleted, 'tag')}; "
        f"{human_size(record.reclaimed_bytes)} ({record.reclaimed_bytes:,} bytes) will be freed "
        "at the next garbage collection."
    )
    return text + (
        " Some repositories were not cleaned: see the run's notes." if incomplete else ""
    )


def _finish(record: RetentionRun, shown: DryRun, outcome: str, message: str) -> RunResult:
    record.outcome = outcome
    record.message = message
    record.finished_at = timezone.now()
    if not record.repositories:
        record.repositories = [
            {
                "registry": r.registry,
                "repository": r.name,
                "selected": len(r.selected),
                "deleted": 0,
                "tags": 0,
                "reclaimed_bytes": 0,
                "note": "nothing deleted",
            }
            for r in shown.repositories
        ]
    record.save()
    return RunResult(record=record, dry_run=shown)


def settle_interrupted(client_for: ClientFor, records: Iterable[RetentionRun]) -> list[int]:
    """Settle the runs a process left running when it stopped (SIGKILL, a lost host): a run
    holds its own lease from its start to its end, so one still running whose lease is
    free was interrupted. Its deletions are settled first, from the registry
    (`execution.settle_interrupted`); then its record says what went, repository by
    repository, from their records. A run whose deletions cannot be settled yet (their
    repository busy, the registry down) waits for the next call. Returns the ids settled."""
    settled = []
    for record in records:
        taken = leases.acquire(leases.run_lease_name("retention", record.pk), owner="recovery")
        if taken is None:
            continue  # its process is alive
        with leases.holding(taken):
            running = record.deletions.filter(state=Deletion.State.RUNNING)
            execution.settle_interrupted(client_for, list(running))
            if not running.exists() and _settle(record):
                settled.append(record.pk)
    return settled


def _settle(record: RetentionRun) -> bool:
    notes = [
        {
            "registry": operation.registry,
            "repository": operation.repository,
            "selected": len(operation.selected),
            **deleted_by(operation.pk),
            "note": operation.message or operation.get_state_display(),
        }
        for operation in record.deletions.order_by("pk")
    ]
    deleted = sum(n["deleted"] for n in notes)
    tags = sum(n["tags"] for n in notes)
    reclaimed = sum(n["reclaimed_bytes"] for n in notes)
    if deleted:
        outcome = RetentionRun.Outcome.INCOMPLETE
        message = (
            f"Interrupted: the process running it stopped. It had deleted "
            f"{plural(deleted, 'manifest')} and {plural(tags, 'tag')}; "
            f"{human_size(reclaimed)} ({reclaimed:,} bytes) will be freed at the next garbage "
            "collection. Nothing more was deleted."
        )
    else:
        outcome = RetentionRun.Outcome.FAILED
        message = "Interrupted: the process running it stopped before deleting anything."
    return bool(
        RetentionRun.objects.filter(pk=record.pk, outcome=RetentionRun.Outcome.RUNNING).update(
            outcome=outcome,
            message=message,
            finished_at=timezone.now(),
            manifests_deleted=deleted,
            tags_deleted=tags,
            reclaimed_bytes=reclaimed,
            repositories=notes,
        )
    )


def claim_due_policies(now: datetime) -> list[RetentionPolicy]:
    """The enabled policies whose schedule is due at `now`, each claimed by moving its
    `next_run_at` forward with a conditional UPDATE, so two workers (on two hosts) never
    start the same policy twice. The workers' schedule (`jobs.schedule_due`) runs each
    claimed policy as a job."""
    due = RetentionPolicy.objects.filter(
        enabled=True, schedule_hours__isnull=False, next_run_at__lte=now
    ).order_by("next_run_at", "pk")
    claimed = []
    for row in due:
        if RetentionPolicy.objects.filter(pk=row.pk, next_run_at=row.next_run_at).update(
            next_run_at=now + timedelta(hours=row.schedule_hours)
        ):
            claimed.append(row)
    return claimed


def run_scheduled(
    row: RetentionPolicy, now: datetime, *, client_for: ClientFor, job: Job | None = None
) -> RunResult:
    """A scheduled run of a claimed policy: previewed and executed in one go, as of `now`,
    with the `max_delete_fraction` brake."""
    try:
        policy = policy_of(row)
    except InvalidPolicy as invalid:  # edited behind the app's back, say in /admin/
        return _unreadable(row, now, invalid)
    return run(
        policy=policy,
        now=now,
        fingerprint=None,
        client_for=client_for,
        trigger=RetentionRun.Trigger.SCHEDULED,
        started_by="schedule",
        brake=True,
        row=row,
        lock_wait=SCHEDULED_LOCK_WAIT,
        job=job,
    )


def run_due_policies(now: datetime, *, client_for: ClientFor) -> list[RunResult]:
    """Claim the due policies and run each now, here (what the jobs do, in one call)."""
    return [run_scheduled(row, now, client_for=client_for) for row in claim_due_policies(now)]


def _unreadable(row: RetentionPolicy, now: datetime, invalid: InvalidPolicy) -> RunResult:
    message = f"Nothing was deleted: the stored policy is not valid: {invalid}"
    return _not_run(row, row.name, now, RetentionRun.Trigger.SCHEDULED, "schedule", message)


def _not_run(
    row: RetentionPolicy | None, name: str, now: datetime, trigger: str, started_by: str, why: str
) -> RunResult:
    """A run that failed before it had a dry run: its record says why."""
    record = RetentionRun.objects.create(
        policy=row,
        policy_name=name,
        trigger=trigger,
        started_by=started_by,
        started_at=now,
        finished_at=timezone.now(),
        outcome=RetentionRun.Outcome.FAILED,
        message=why,
    )
    empty = DryRun(
        Policy(name=name, rules=()), now, (), 0, dry_run_fingerprint(Policy(name, ()), now, [], 0)
    )
    return RunResult(record=record, dry_run=empty)
