"""Runs of a retention policy: exactly the previewed dry run or nothing, repository by
repository under their leases, and the schedule that starts them."""

from __future__ import annotations

from collections.abc import Callable, Collection
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from hubimages.deletion import execution, planning
from hubimages.lib.formatting import human_size, plural
from hubimages.lib.leases import RepositoryBusy, repository_lock
from hubimages.models import Deletion, Registry, Repository, RetentionPolicy, RetentionRun
from hubimages.retention.engine import DryRun, RepositoryDryRun, dry_run, dry_run_fingerprint
from hubimages.retention.policies import InvalidPolicy, Policy, policy_of
from hubimages.sync.service import sync_repository
from registry.client import RegistryClient

# A scheduled run waits this long for a repository a sync or a deletion holds.
SCHEDULED_LOCK_WAIT = 30.0


# -- runs ----------------------------------------------------------------------------------


# A client for each registry a run touches (`registries.client.ClientsByRegistry`).
ClientFor = Callable[[Registry], RegistryClient]


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
) -> RunResult:
    """Execute the dry run previewed as `fingerprint` (as of its `now`), or nothing.

    Under the locks of every covered repository, each is re-read from its registry (through
    `client_for(registry)`) and the
    dry run computed again; only if it is still the one previewed does anything go, each
    repository through `deletion.execute_deletion` (which checks its own plan once more).
    A scheduled run passes `fingerprint=None` (it previews and executes in one go) and
    `brake=True`: it deletes nothing in a repository where it would delete more than
    `max_delete_fraction` of the top-level items, and says so in the record.

    A job runs it (`jobs.start_retention`): a web request only enqueues it.
    """
    first = dry_run(policy, now=now, registry=registry, repositories=repositories)
    record = RetentionRun(
        policy=row,
        policy_name=policy.name,
        trigger=trigger,
        started_by=started_by,
        started_at=now,
        planned_bytes=first.reclaimable_bytes,
    )
    if fingerprint is not None and first.fingerprint != fingerprint:
        return _finish(record, first, RetentionRun.Outcome.CHANGED, CHANGED_MESSAGE)
    covered = [r.repository for r in first.repositories]
    try:
        with ExitStack() as stack:
            for repository in covered:
                stack.enter_context(
                    repository_lock(repository, owner=f"retention:{policy.name}", wait=lock_wait)
                )
            failure = _recheck(client_for, covered)
            if failure:
                return _finish(record, first, RetentionRun.Outcome.FAILED, failure)
            checked = dry_run(policy, now=now, registry=registry, repositories=repositories)
            record.planned_bytes = checked.reclaimable_bytes
            if fingerprint is not None and checked.fingerprint != fingerprint:
                return _finish(record, checked, RetentionRun.Outcome.CHANGED, CHANGED_MESSAGE)
            return _execute(record, checked, client_for, user=user, brake=brake)
    except RepositoryBusy as busy:
        return _finish(record, first, RetentionRun.Outcome.BUSY, f"Nothing was deleted: {busy}.")


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
    record: RetentionRun, checked: DryRun, client_for: ClientFor, *, user, brake: bool
) -> RunResult:
    notes, incomplete, operations = [], False, []
    for repo in checked.repositories:
        client = client_for(repo.repository.registry)
        note, done = _execute_repository(repo, checked.policy, client, user=user, brake=brake)
        if "operation" in note:
            operations.append(note.pop("operation"))
        notes.append(
            {
                "registry": repo.registry,
                "repository": repo.name,
                "selected": len(repo.selected),
                "deleted": 0,
                "tags": 0,
                "reclaimed_bytes": 0,
                **note,
            }
        )
        incomplete = incomplete or not done
    record.repositories = notes
    record.manifests_deleted = sum(n["deleted"] for n in notes)
    record.tags_deleted = sum(n["tags"] for n in notes)
    record.reclaimed_bytes = sum(n["reclaimed_bytes"] for n in notes)
    outcome = RetentionRun.Outcome.INCOMPLETE if incomplete else RetentionRun.Outcome.DONE
    result = _finish(record, checked, outcome, _summary(record, incomplete))
    # The run's deletions, so the Trash can undo the whole run.
    Deletion.objects.filter(pk__in=operations).update(retention_run=record)
    return result


def _execute_repository(
    repo: RepositoryDryRun, policy: Policy, client: RegistryClient, *, user, brake: bool
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
            username=f"policy:{policy.name}",
        )
    except execution.RecheckFailed as failure:
        return {"note": f"nothing deleted here: {failure}"}, False
    return _outcome_note(outcome), outcome.succeeded


CHANGED_WHILE_RUNNING = "the repository changed while the run went on: nothing deleted here"


def _outcome_note(outcome: execution.DeletionOutcome) -> dict[str, Any]:
    """The repository's note in the run's record, and (taken out before it is stored) the
    deletion operation that ran."""
    if outcome.stale:
        return {"note": CHANGED_WHILE_RUNNING, "operation": outcome.operation_id}
    problems = [f"failed {i.digest}: {i.reason}" for i in outcome.failed]
    problems += [f"skipped {i.digest}: {i.reason}" for i in outcome.skipped]
    return {
        "operation": outcome.operation_id,
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


def run_scheduled(row: RetentionPolicy, now: datetime, *, client_for: ClientFor) -> RunResult:
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
    )


def run_due_policies(now: datetime, *, client_for: ClientFor) -> list[RunResult]:
    """Claim the due policies and run each now, here (what the jobs do, in one call)."""
    return [run_scheduled(row, now, client_for=client_for) for row in claim_due_policies(now)]


def _unreadable(row: RetentionPolicy, now: datetime, invalid: InvalidPolicy) -> RunResult:
    record = RetentionRun.objects.create(
        policy=row,
        policy_name=row.name,
        trigger=RetentionRun.Trigger.SCHEDULED,
        started_by="schedule",
        started_at=now,
        finished_at=timezone.now(),
        outcome=RetentionRun.Outcome.FAILED,
        message=f"Nothing was deleted: the stored policy is not valid: {invalid}",
    )
    empty = DryRun(
        Policy(name=row.name, rules=()),
        now,
        (),
        0,
        dry_run_fingerprint(Policy(row.name, ()), now, [], 0),
    )
    return RunResult(record=record, dry_run=empty)
