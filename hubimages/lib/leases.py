"""Named leases, so a deletion and a sync never interleave on one repository and two full
syncs never overlap, whichever processes and hosts they run in.

A lease is a row (`Lease`) that exists while someone holds the name: taking it is an
INSERT the unique name lets only one process win, after deleting the row of a holder whose
lease ran out. Each taking is a new row, so the row's id is the lease's **generation**: it
only grows (PostgreSQL's sequences and SQLite's AUTOINCREMENT never hand an id out twice)
and names one holder for ever. It is the fencing token: `HeldLease.check()`, called right
before each irreversible step (a registry DELETE), is one conditional UPDATE "push the
lease named by this generation forward", so a holder whose lease was taken over learns it
from the database itself, however its callers nested their leases.

While a process holds leases, one thread of that process renews them every quarter of
`LOCK_LEASE_SECONDS`; a process that dies (SIGKILL included) stops renewing, and after the
lease anyone may take over. Expiries are on the database's clock (`Now()`), never a host's:
a host whose clock runs ahead cannot take a live lease. Only workers and command-line
processes hold leases: a web request never does.

Leases are re-entrant within one thread of execution (a context variable remembers what
this context holds): a deletion holds its repository's while it re-reads the repository
through `hubimages.sync.service.sync_repository`, whose write path takes the same lease, and
a retention run holds every repository's while each one's deletion runs. A nested `lease()`
yields the very lease its caller holds, so the check before a DELETE is the outer one's.

Take them outside any transaction: inside one, the INSERT would only be seen by others at
commit time (PostgreSQL would make them wait on the row instead of answering "busy"). The
one exception is `acquire_new`, for a name nobody can know yet (a run's own lease, taken in
the transaction that writes the run: see `run_lease_name`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.db.models.functions import Now

from hubimages.models import Lease, Repository

log = logging.getLogger("hubimages.locks")

POLL_INTERVAL = 0.2

# Lease name -> the lease this context holds (never mutated: replaced).
_held: ContextVar[dict[str, HeldLease] | None] = ContextVar("hubimages_leases", default=None)


def lease_duration() -> timedelta:
    return timedelta(seconds=settings.LOCK_LEASE_SECONDS)


class LeaseBusy(Exception):
    """Someone else holds the lease right now."""

    def __init__(self, what: str, holder: str, since: datetime | None) -> None:
        self.what = what
        self.holder = holder
        self.since = since
        when = f" since {since:%H:%M:%S} UTC" if since else ""
        super().__init__(
            f"{what} is busy: {holder or 'another process'} is working on it{when}; "
            "try again in a moment"
        )


class RepositoryBusy(LeaseBusy):
    """A deletion or a sync is working on this repository right now."""

    def __init__(self, repository: str, holder: str, since: datetime | None) -> None:
        self.repository = repository
        super().__init__(f"repository {repository}", holder, since)


class LeaseLost(Exception):
    """The lease ran out and another process took it over: stop before doing more."""


@dataclass(frozen=True)
class HeldLease:
    name: str
    generation: int

    def check(self) -> None:
        """Raise LeaseLost unless this generation still holds the lease, and push it
        forward: call right before each irreversible step."""
        if not self.renew():
            raise LeaseLost(f"lost the lease on {self.name}: another process took it over")

    def renew(self) -> bool:
        """Push the lease forward; False when another process took it over. (A lease that
        ran out but that nobody took is still this generation's: nobody else held it.)"""
        return bool(
            Lease.objects.filter(pk=self.generation).update(expires_at=Now() + lease_duration())
        )


DEFAULT_REGISTRY = "default"


def repository_lease_name(name: str, registry: str = DEFAULT_REGISTRY) -> str:
    """`repository:prod/team/api`: repositories of two registries are two leases."""
    return f"repository:{registry}/{name}"


def run_lease_name(kind: str, pk: int) -> str:
    """The lease a run record (`SyncRun`, `RetentionRun`) is held by while its process
    works on it: a record still running whose lease is free was left by a process that
    stopped, and the workers settle it."""
    return f"run:{kind}:{pk}"


def acquire(name: str, *, owner: str) -> HeldLease | None:
    """Take the lease if it is free or ran out; None if someone holds it. Not re-entrant."""
    Lease.objects.filter(name=name).filter(
        Q(expires_at__isnull=True) | Q(expires_at__lt=Now())
    ).delete()
    try:
        with transaction.atomic():
            row = Lease.objects.create(
                name=name, owner=owner[:200], acquired_at=Now(), expires_at=Now() + lease_duration()
            )
    except IntegrityError:  # someone holds it, or took it just now
        return None
    return HeldLease(name, row.pk)


def acquire_new(name: str, *, owner: str) -> HeldLease:
    """Take the lease of a name nobody can know yet (a run's own, in the transaction that
    writes the run: see `run_lease_name`)."""
    taken = acquire(name, owner=owner)
    if taken is None:
        raise RuntimeError(f"the new lease {name} is taken")
    return taken


def release(held: HeldLease) -> None:
    Lease.objects.filter(pk=held.generation).delete()


def holder(name: str) -> Lease | None:
    """The live lease on `name`, if someone holds one."""
    return Lease.objects.filter(name=name, expires_at__gte=Now()).first()


@contextmanager
def lease(
    name: str, *, owner: str, wait: float = 0.0, busy=LeaseBusy, what: str = ""
) -> Iterator[HeldLease]:
    """Hold the lease `name` for the block, waiting up to `wait` seconds for it; renewed in
    the background meanwhile. Raises `busy(what, …)` when another holder keeps it longer."""
    held = _held.get() or {}
    if name in held:
        yield held[name]
        return
    deadline = time.monotonic() + wait
    while (taken := acquire(name, owner=owner)) is None:
        if time.monotonic() >= deadline:
            current = holder(name)
            raise busy(
                what or name.partition(":")[2] or name,
                current.owner if current else "",
                current.acquired_at if current else None,
            )
        time.sleep(POLL_INTERVAL)
    with holding(taken) as kept:
        yield kept


@contextmanager
def holding(taken: HeldLease) -> Iterator[HeldLease]:
    """Keep a lease `acquire` took for the block (renewed in the background, re-entrant
    within this context), then release it."""
    reset = _held.set({**(_held.get() or {}), taken.name: taken})
    _renewer.add(taken)
    try:
        yield taken
    finally:
        _renewer.discard(taken)
        _held.reset(reset)
        release(taken)


@contextmanager
def repository_lock(
    repository: Repository | str,
    *,
    owner: str,
    wait: float = 0.0,
    registry: str = DEFAULT_REGISTRY,
) -> Iterator[HeldLease]:
    """Hold a repository's lease: see `lease`. Raises `RepositoryBusy`. A name alone is a
    repository of `registry`."""
    if isinstance(repository, Repository):
        name, registry = repository.name, repository.registry.name
    else:
        name = repository
    with lease(
        repository_lease_name(name, registry),
        owner=owner,
        wait=wait,
        busy=RepositoryBusy,
        what=name if registry == DEFAULT_REGISTRY else f"{registry}/{name}",
    ) as held:
        yield held


def repository_locked(name: str, registry: str = DEFAULT_REGISTRY) -> bool:
    return holder(repository_lease_name(name, registry)) is not None


class _Renewer:
    """One thread per process renews every lease the process holds, and stops when it holds
    none (so a process that holds no lease runs no thread)."""

    def __init__(self) -> None:
        self._objects: set[HeldLease] = set()
        self._state = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, held: HeldLease) -> None:
        with self._state:
            self._objects.add(held)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="lease-renewer", daemon=True)
                self._thread.start()

    def discard(self, held: HeldLease) -> None:
        with self._state:
            self._objects.discard(held)
            self._state.notify()

    def _holds(self, held: HeldLease) -> bool:
        with self._state:
            return held in self._objects

    def _run(self) -> None:
        try:
            while True:
                due = time.monotonic() + lease_duration().total_seconds() / 4
                with self._state:
                    # Woken early only to learn that nothing is held any more.
                    while self._objects and (left := due - time.monotonic()) > 0:
                        self._state.wait(left)
                    if not self._objects:
                        self._thread = None
                        return
                    holding = list(self._objects)
                for held in holding:
                    try:
                        if not held.renew() and self._holds(held):
                            # Its holder learns it at its next `check()`. (A lease released
                            # since `holding` was read is not lost.)
                            log.warning("lease %s was taken over by another process", held.name)
                            self.discard(held)
                    except Exception:  # a database hiccup: try again next round
                        log.exception("renewing lease %s failed", held.name)
        finally:
            connection.close()


_renewer = _Renewer()
