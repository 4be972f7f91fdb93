"""`python manage.py db_worker`: django-tasks-db's worker, with what hubimages adds.

Same options as django-tasks-db's command. Besides running tasks, each worker:
- beats a heartbeat every few seconds, so the others can tell when it died;
- recovers the tasks of workers that stopped beating and lines every unfinished job up
  with its task (`jobs.worker.recover`);
- starts what the schedule says is due (the periodic full sync, housekeeping);
- makes sure registry events waiting to be stored have a task to store them.
The heartbeat has a thread of its own that does nothing else: the maintenance, which may
wait on a slow registry (settling an interrupted deletion asks it about each manifest)
or on a busy database, runs in a second thread. Both go on while a long task runs, and
neither runs in a web process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from django.conf import settings
from django.db import connection
from django.utils import timezone
from django_tasks_db.management.commands import db_worker

from hubimages.jobs import worker

log = logging.getLogger("hubimages.worker")


class Every(threading.Thread):
    """Calls `action` every `WORKER_LEASE_SECONDS / 6` (at least every half second) until
    stopped; an error (the database restarting) is logged and tried again next round."""

    def __init__(self, name: str, action: Callable[[], None]) -> None:
        super().__init__(name=name, daemon=True)
        self.action = action
        self.stopping = threading.Event()

    @property
    def interval(self) -> float:
        return max(0.5, settings.WORKER_LEASE_SECONDS / 6)

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    self.action()
                except Exception:
                    log.exception("worker %s failed", self.name)
                    connection.close()
                self.stopping.wait(self.interval)
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)


class Command(db_worker.Command):
    help = (
        "Run hubimages's tasks (django-tasks-db's worker) with a heartbeat, recovery of the "
        "tasks of dead workers, and the schedule (SYNC_INTERVAL_MINUTES)."
    )

    def add_arguments(self, parser) -> None:
        super().add_arguments(parser)
        # The reloader would run a second process with the same worker id; a push waits
        # for the next poll, so poll more often than once a second (a cheap query).
        parser.set_defaults(reload=False, interval=0.25)

    def handle(self, *args, worker_id: str, **options) -> None:
        started_at = timezone.now()
        worker.beat(worker_id, started_at)  # alive before the first claim
        heartbeat = Every("hubimages-heartbeat", lambda: worker.beat(worker_id, started_at))
        maintenance = Every("hubimages-maintenance", worker.maintain)
        heartbeat.start()
        maintenance.start()
        try:
            super().handle(*args, worker_id=worker_id, **options)
        finally:
            maintenance.stop()
            heartbeat.stop()
            try:
                worker.stop_beating(worker_id)
            finally:
                connection.close()
