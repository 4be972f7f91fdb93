"""Named leases, so a deletion and a sync never interleave on one repository and two full
syncs never overlap, whichever processes and hosts they run in.

A lease is a row (`Lease`) taken by a conditional UPDATE ("where nobody holds it, or where
the holder's lease ran out"): it works alike on SQLite and PostgreSQL. While a process
holds leases, one thread of that process renews them every quarter of `LOCK_LEASE_SECONDS`;
a process that dies (SIGKILL included) stops renewing, and after the lease anyone may take
over. A holder whose lease was taken over meanwhile learns it from `HeldLease.check()`.
Only workers and command-line processes hold leases: a web request never does.

Leases are re-entrant within one thread of execution (a context variable remembers what
this context holds): a deletion holds its repository's while it re-reads the repository
through `hubimages.sync.service.sync_repository`, whose write path takes the same lease.

Take them outside any transaction: inside one, the UPDATE would only be seen by others at
commit time (PostgreSQL would make them wait on the row instead of answering "busy").
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, connection
from django.db.models import Q
from django.utils import timezone

from hubimages.models import Lease, Repository

log = logging.getLogger("hubimages.locks")

POLL_INTERVAL = 0.2

# Lease name -> token of the leases this context holds (never mutated: replaced).
_held: ContextVar[dict[str, str] | None] = ContextVar("hubimages_leases", default=None)


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


@dataclass
class HeldLease:
    name: str
    token: str
    lost: threading.Event = field(default_factory=threading.Event, compare=False)

    def check(self) -> None:
        """Raise LeaseLost when the lease was taken over; call before each irreversible step."""
        if self.lost.is_set():
            raise LeaseLost(f"lost the lease on {self.name}: another process took it over")

    def renew(self) -> bool:
        """Push the lease forward; False (and `lost` set) when it was taken over."""
        renewed = Lease.objects.filter(name=self.name, token=self.token).update(
            expires_at=timezone.now() + lease_duration()
        )
        if not renewed:
            self.lost.set()
        return bool(renewed)


DEFAULT_REGISTRY = "default"


def repository_lease_name(name: str, registry: str = DEFAULT_REGISTRY) -> str:
    """`repository:prod/team/api`: repositories of two registries are two leases."""
    return f"repository:{registry}/{name}"


def acquire(name: str, *, owner: str) -> HeldLease | None:
    """Take the lease if it is free or expired; None if someone holds it. Not re-entrant."""
    now = timezone.now()
    token = secrets.token_hex(16)
    fields = {"token": token, "owner": owner[:200], "acquired_at": now}
    free = Q(token="") | Q(expires_at__isnull=True) | Q(expires_at__lt=now)
    if (
        Lease.objects.filter(name=name)
        .filter(free)
        .update(expires_at=now + lease_duration(), **fields)
    ):
        return HeldLease(name, token)
    if Lease.objects.filter(name=name).exists():
        return None
    try:
        Lease.objects.create(name=name, expires_at=now + lease_duration(), **fields)
    except IntegrityError:  # someone created it first
        return None
    return HeldLease(name, token)


def release(held: HeldLease) -> None:
    Lease.objects.filter(name=held.name, token=held.token).update(token="", expires_at=None)


def holder(name: str) -> Lease | None:
    """The live lease on `name`, if someone holds one."""
    return Lease.objects.filter(name=name, expires_at__gte=timezone.now()).exclude(token="").first()


@contextmanager
def lease(
    name: str, *, owner: str, wait: float = 0.0, busy=LeaseBusy, what: str = ""
) -> Iterator[HeldLease]:
    """Hold the lease `name` for the block, waiting up to `wait` seconds for it; renewed in
    the background meanwhile. Raises `busy(what, …)` when another holder keeps it longer."""
    held = _held.get() or {}
    if name in held:
        yield HeldLease(name, held[name])
        return
    deadline = time.monotonic() + wait
    while (taken := acquire(name, owner=owner)) is None:
        if time.monotonic() >= deadline:
            current = Lease.objects.filter(name=name).first()
            raise busy(
                what or name.partition(":")[2] or name,
                current.owner if current else "",
                current.acquired_at if current else None,
            )
        time.sleep(POLL_INTERVAL)
    reset = _held.set({**held, name: taken.token})
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
        self._objects: dict[tuple[str, str], HeldLease] = {}
        self._state = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, held: HeldLease) -> None:
        with self._state:
            self._objects[(held.name, held.token)] = held
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="lease-renewer", daemon=True)
                self._thread.start()

    def discard(self, held: HeldLease) -> None:
        with self._state:
            self._objects.pop((held.name, held.token), None)
            self._state.notify()

    def _holds(self, held: HeldLease) -> bool:
        with self._state:
            return (held.name, held.token) in self._objects

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
                    holding = list(self._objects.values())
                for held in holding:
                    try:
                        if not held.renew() and self._holds(held):
                            # (A lease released since `holding` was read is not lost.)
                            log.warning("lease %s was taken over by another process", held.name)
                    except Exception:  # a database hiccup: try again next round
                        log.exception("renewing lease %s failed", held.name)
        finally:
            connection.close()


_renewer = _Renewer()
