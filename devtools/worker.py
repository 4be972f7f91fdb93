"""django-tasks-db's worker in this process, for tests and benchmarks that run tasks
without a `db_worker` process (the production-shape tests start real ones)."""

from __future__ import annotations


def task_worker(*, batch: bool, worker_id: str = "in-process-worker"):
    from django_tasks_db.management.commands.db_worker import Worker

    return Worker(
        queue_names=["*"],
        interval=0.05,
        batch=batch,
        backend_name="default",
        startup_delay=False,
        max_tasks=None,
        worker_id=worker_id,
        excluded_queue_names=[],
    )


def run_tasks() -> None:
    """Run every task that is ready now, here, then return.

    The worker closes "old" database connections between tasks, as a long-lived process
    should; here that connection is the caller's (a test's open transaction): keep it."""
    from unittest import mock

    with mock.patch(
        "django_tasks_db.management.commands.db_worker.close_old_connections", lambda: None
    ):
        task_worker(batch=True).run()
