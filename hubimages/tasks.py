"""The tasks the workers run (`python manage.py db_worker`): thin wrappers over services,
so each service runs the same from a task, a command or a test."""

from django.tasks import TaskContext, task

from hubimages import events, jobs

# How long one drain task keeps claiming events before it hands over to a fresh task.
DRAIN_SECONDS = 30.0


def _worker_id(context: TaskContext) -> str:
    workers = context.task_result.worker_ids
    return workers[-1] if workers else ""


@task(takes_context=True)
def run_job(context: TaskContext, job_id: int) -> None:
    """A sync, a deletion or a retention run someone (or the schedule) started."""
    jobs.run(job_id, worker_id=_worker_id(context))


@task()
def drain_events() -> dict:
    """Store the pushes (and deferred deletes) the registry notified us of."""
    result = events.drain_for(DRAIN_SECONDS)
    if result.retry_at:
        jobs.ensure_drain(run_after=result.retry_at)
    elif jobs.events_due():
        jobs.ensure_drain()
    return {"processed": result.processed, "retried": result.retried}
