"""A per-repository advisory lock, so a deletion and a sync never interleave on one repository.

The lock is a token written into the repository's row by a conditional UPDATE ("set it
where nobody holds it, or where the holder's lease ran out"): it works alike on SQLite and
PostgreSQL, and a process that crashes while holding it leaves nothing behind that needs a
person: after `LOCK_LEASE` without renewal anyone may take it over. Long holders call
`HeldLock.renew()` now and then.

The lock is re-entrant within one thread of execution (a context variable remembers what
this context holds): a deletion holds it while it re-reads the repository through
`hubimages.sync.sync_repository`, whose write path takes the same lock.

Take it outside any transaction: inside one, the UPDATE would only be seen by others at
commit time (PostgreSQL would make them wait on the row instead of answering "busy").
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Q
from django.utils import timezone

from hubimages.models import Repository

LOCK_LEASE = timedelta(minutes=10)
POLL_INTERVAL = 0.2
_OWNER_CHARS = 15  # lock_token holds 32 characters: 16 hex, ":", the owner's first 15

# Repository id -> token of the locks this context holds (never mutated: replaced).
_held: ContextVar[dict[int, str] | None] = ContextVar("hubimages_repository_locks", default=None)


class RepositoryBusy(Exception):
    """Someone else (a deletion, a sync) is working on this repository right now."""

    def __init__(self, repository: str, holder: str, since: datetime | None) -> None:
        self.repository = repository
        self.holder = holder
        self.since = since
        when = f" since {since:%H:%M:%S} UTC" if since else ""
        super().__init__(
            f"repository {repository} is busy: {holder or 'another process'} is working on it"
            f"{when}; try again in a moment"
        )


@dataclass(frozen=True)
class HeldLock:
    repository_id: int
    token: str

    def renew(self) -> bool:
        """Push the lease forward; False if the lock was lost (taken over after expiry)."""
        return bool(
            Repository.objects.filter(pk=self.repository_id, lock_token=self.token).update(
                locked_at=timezone.now()
            )
        )


def acquire(repository: Repository, *, owner: str) -> HeldLock | None:
    """Take the lock if it is free or its lease expired; None if someone holds it.

    Not re-entrant: `repository_lock` is what callers normally use.
    """
    now = timezone.now()
    token = f"{secrets.token_hex(8)}:{owner[:_OWNER_CHARS]}"
    free = Q(lock_token="") | Q(locked_at__isnull=True) | Q(locked_at__lt=now - LOCK_LEASE)
    taken = (
        Repository.objects.filter(pk=repository.pk)
        .filter(free)
        .update(lock_token=token, locked_at=now)
    )
    return HeldLock(repository.pk, token) if taken else None


def release(lock: HeldLock) -> None:
    Repository.objects.filter(pk=lock.repository_id, lock_token=lock.token).update(
        lock_token="", locked_at=None
    )


@contextmanager
def repository_lock(repository: Repository, *, owner: str, wait: float = 0.0) -> Iterator[HeldLock]:
    """Hold `repository`'s lock for the block, waiting up to `wait` seconds for it.

    Raises `RepositoryBusy` when another holder keeps it longer than that.
    """
    held = _held.get() or {}
    if repository.pk in held:
        yield HeldLock(repository.pk, held[repository.pk])
        return
    deadline = time.monotonic() + wait
    while (lock := acquire(repository, owner=owner)) is None:
        if time.monotonic() >= deadline:
            raise _busy(repository)
        time.sleep(POLL_INTERVAL)
    reset = _held.set({**held, repository.pk: lock.token})
    try:
        yield lock
    finally:
        _held.reset(reset)
        release(lock)


def _busy(repository: Repository) -> RepositoryBusy:
    row = Repository.objects.filter(pk=repository.pk).values("lock_token", "locked_at").first()
    token = row["lock_token"] if row else ""
    return RepositoryBusy(
        repository.name, token.partition(":")[2], row["locked_at"] if row else None
    )
