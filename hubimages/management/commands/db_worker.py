"""`python manage.py db_worker`: django-tasks-db's worker, with what hubimages adds.

Same options as django-tasks-db's command. Besides running tasks, each worker:
- beats a heartbeat every few seconds, so the others can tell when it died;
- recovers the tasks of workers that stopped beating (`jobs.recover`);
- starts what the schedule says is due (the periodic full sync, housekeeping);
- makes sure registry events waiting to be stored have a task to store them.
All of that runs in one thread of the worker process (never in a web process), so it
goes on while a long task runs.
"""

from __future__ import annotations

import logging
import threading

from django.conf import settings
from django.db import connection
from django.utils import timezone
from django_tasks_db.management.commands import db_worker

from hubimages.jobs import worker

log = logging.getLogger("hubimages.worker")


class Housekeeper(threading.Thread):
    def __init__(self, worker_id: str) -> None:
        super().__init__(name="hubimages-housekeeper", daemon=True)
        self.worker_id = worker_id
        self.started_at = timezone.now()
        self.stopping = threading.Event()

    @property
    def interval(self) -> float:
        return max(0.5, settings.WORKER_LEASE_SECONDS / 6)

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    worker.maintain(self.worker_id, self.started_at)
                except Exception:  # the database restarting: try again next round
                    log.exception("worker housekeeping failed")
                    connection.close()
                self.stopping.wait(self.interval)
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)
        try:
            worker.stop_beating(self.worker_id)
        finally:
            connection.close()


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
        housekeeper = Housekeeper(worker_id)
        worker.beat(worker_id, housekeeper.started_at)  # alive before the first claim
        housekeeper.start()
        try:
            super().handle(*args, worker_id=worker_id, **options)
        finally:
            housekeeper.stop()
