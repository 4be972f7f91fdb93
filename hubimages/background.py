"""Processes RECEIVED registry events after the webhook has answered, in one background
thread per process, retrying what failed a few times (a registry restarting, a busy
database), then leaving it to the next event, `process_events` or `sync_registry`.
"""

from __future__ import annotations

import logging
import threading

from django.conf import settings
from django.db import connections

from hubimages import events
from hubimages.models import RegistryEvent

log = logging.getLogger("hubimages.events")

RETRY_DELAYS = (1.0, 5.0, 30.0)

_drain_lock = threading.Lock()
_worker_state = threading.Condition()
_worker: threading.Thread | None = None
_more_work = False


def process_soon() -> None:
    """Drain received events in this process's background thread (started if idle).

    With `EVENTS_PROCESS_INLINE` (tests) the drain runs now, in the caller's thread.
    """
    global _worker, _more_work
    if getattr(settings, "EVENTS_PROCESS_INLINE", False):
        drain()
        return
    with _worker_state:
        _more_work = True
        _worker_state.notify()
        if _worker is None:
            _worker = threading.Thread(target=_work, name="registry-events", daemon=True)
            _worker.start()


def drain() -> int:
    """One drain at a time per process."""
    with _drain_lock:
        return events.process_received()


def wait_for_background(timeout: float = 30.0) -> bool:
    """Wait for the background thread to finish its drains; False on timeout."""
    with _worker_state:
        worker = _worker
    if worker is None:
        return True
    worker.join(timeout)
    return not worker.is_alive()


def _work() -> None:
    global _worker, _more_work
    retries = 0
    left = False
    try:
        while True:
            with _worker_state:
                if not _more_work:
                    if not left or retries >= len(RETRY_DELAYS):
                        _worker = None
                        return
                    _worker_state.wait(RETRY_DELAYS[retries])
                    retries += 1
                _more_work = False
            try:
                drain()
                left = RegistryEvent.objects.filter(state=RegistryEvent.State.RECEIVED).exists()
            except Exception:
                log.exception("processing registry events failed")
                left = True
            if not left:
                retries = 0
    finally:
        connections.close_all()
