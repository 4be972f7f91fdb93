"""Registry notifications: record each event once, then apply it (SPEC §2, §5).

The registry delivers each envelope with a short timeout and, in distribution 2.8,
retries a failed delivery forever, blocking the events queued behind it. So the endpoint
does only cheap, local work before answering (`record`): every event is stored once (its
`id` is unique: a redelivered event changes nothing), and pulls and deletes are applied in
the same transaction. Pushes stay `RECEIVED`: storing a pushed manifest means fetching
it, its children and configs from the registry, which `process_received` does later.

Order independence: a pull sets Last pulled to the latest of what we have and its time; a
pull of a manifest not stored yet waits and is applied when its push is stored; a delete
is skipped when the manifest was pushed after it; a push is skipped when a later delete of
the same digest was recorded, stores nothing when the registry no longer has the manifest,
moves its tag only while the registry still points the tag at it, and keeps the newest
push time.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import F, Q
from django.db.models.functions import Now
from django.utils import timezone

from hubimages.lib.leases import LeaseBusy, repository_lock, repository_locked
from hubimages.models import (
    Manifest,
    ManifestBlob,
    PushedFrom,
    Registry,
    RegistryEvent,
    Repository,
    Tag,
)
from hubimages.registries import rows
from hubimages.registries.client import registry_client
from hubimages.sync import activity, rollups, store
from registry import media
from registry.client import RegistryClient
from registry.errors import AuthenticationError, RegistryError, RegistryUnavailable, shorten
from registry.notifications import Event

log = logging.getLogger("hubimages.events")

PULL_METHODS = ("GET", "HEAD")
OWN_USER_AGENT_PREFIX = activity.OWN_USER_AGENT_PREFIX
ACTIONS = ("push", "pull", "delete", "mount")
LOCK_WAIT_SECONDS = 30.0  # then the event waits for the next round
# An event time may run this far ahead of its receipt (the registry's clock is not ours);
# further ahead, or before registries sent events at all, it is replaced by the receipt
# time: a pull "at 9999-12-31" would otherwise be the Last pulled for ever.
CLOCK_SKEW = timedelta(minutes=5)
EARLIEST_EVENT = datetime(2015, 1, 1, tzinfo=UTC)  # distribution 2.0 and its notifications

State = RegistryEvent.State


@dataclass(frozen=True)
class Applied:
    """What applying an event did: its new state, a message for people, and whether the
    repository's list changed."""

    state: str
    message: str
    changed: bool = False


@dataclass
class Recorded:
    """What became of an envelope's events: each is new, a duplicate, or not stored; of
    the new ones, `pending` wait for a worker and `ignored` were stored as ignored."""

    new: int = 0
    duplicates: int = 0
    pending: int = 0
    ignored: int = 0
    not_stored: int = 0


# -- recording -------------------------------------------------------------------------------


def record(events: list[Event], registry: Registry | None = None) -> Recorded:
    """Record the envelope's new events (sent by `registry`, the default one if None) and
    apply pulls and deletes, in one transaction.

    Pulls that never count (hubimages's own, scanners') are answered without touching the
    database: a sync's HEADs and the workers' reads come back as a stream of them."""
    registry = registry or rows.get()
    result = Recorded()
    kept = []
    for event in events:
        if _never_counted(event):
            result.not_stored += 1
        else:
            kept.append(event)
    if not kept:
        return result
    for attempt in range(2):
        try:
            recorded = _record(kept, registry)
            recorded.not_stored += result.not_stored
            return recorded
        except IntegrityError:
            # The registry redelivered while the first delivery was still being recorded:
            # the second pass sees those events as duplicates.
            if attempt:
                raise
    raise AssertionError("unreachable")


def _record(events: list[Event], registry: Registry) -> Recorded:
    result = Recorded()
    with transaction.atomic():
        seen = set(
            RegistryEvent.objects.filter(
                registry=registry, event_id__in=[e.id for e in events]
            ).values_list("event_id", flat=True)
        )
        changed: set[str] = set()
        rows = []
        now = timezone.now()
        corrected = [_plausible_time(event, now) for event in events]
        for event, correction in sorted(corrected, key=lambda pair: pair[0].occurred_at):
            if event.id in seen:
                result.duplicates += 1
                continue
            seen.add(event.id)  # an envelope may hold the same event twice: it counts once
            applied = apply_on_receipt(event, registry)
            if applied.changed:
                changed.add(event.repository)
            rows.append(_row(registry, event, applied, now, correction))
            result.new += 1
            result.pending += applied.state == State.RECEIVED
            result.ignored += applied.state == State.IGNORED
        RegistryEvent.objects.bulk_create(rows)
        _bump(registry, changed)
    return result


def _plausible_time(event: Event, now: datetime) -> tuple[Event, str]:
    """The event with a time that can be true, and a note of the correction ("" if none)."""
    if event.occurred_at > now + CLOCK_SKEW:
        why = "later than its receipt"
    elif event.occurred_at < EARLIEST_EVENT:
        why = "earlier than any registry event"
    else:
        return event, ""
    sent = event.occurred_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    return replace(event, occurred_at=now), f"its time {sent} is {why}: taken as received"


def _row(
    registry: Registry, event: Event, applied: Applied, now: datetime, correction: str = ""
) -> RegistryEvent:
    message = f"{applied.message}; {correction}" if correction else applied.message
    return RegistryEvent(
        registry=registry,
        event_id=event.id,
        action=event.action[:16],
        repository=event.repository,
        digest=event.digest,
        tag=event.tag,
        media_type=event.media_type,
        occurred_at=event.occurred_at,
        user_agent=event.user_agent,
        processed_at=None if applied.state == State.RECEIVED else now,
        state=applied.state,
        message=message[:512],
    )


# -- applying ------------------------------------------------------------------------------


def apply_on_receipt(event: Event, registry: Registry, *, defer_if_locked: bool = True) -> Applied:
    """Apply what is cheap and local now; pushes (and deletes under a lock) stay RECEIVED.

    An event naming a repository or tag the registry API cannot address was forged or
    mangled on the way: recorded as ignored, with the reason, never left pending."""
    if not media.is_repository_name(event.repository):
        return Applied(State.IGNORED, f"invalid repository name {shorten(event.repository, 80)!r}")
    if event.tag and not media.is_tag(event.tag):
        return Applied(State.IGNORED, f"invalid tag {shorten(event.tag, 80)!r}")
    if event.action == "push" and event.is_manifest:
        if not event.digest:
            return Applied(State.IGNORED, "push without a digest")
        return Applied(State.RECEIVED, "")
    if event.action == "pull" and event.is_manifest:
        return apply_pull(event, registry)
    if event.action == "delete":
        if defer_if_locked and repository_locked(event.repository, registry.name):
            # hubimages's own deletion (or a sync) is at work: apply it after, under the lock.
            return Applied(State.RECEIVED, "")
        return apply_delete(event, registry)
    if event.action == "mount":
        return Applied(State.IGNORED, "mount")
    if event.action in ACTIONS:
        return Applied(State.IGNORED, f"{event.action} of a blob")
    return Applied(State.IGNORED, f"unknown action {event.action!r}")


def _never_counted(event: Event) -> bool:
    return event.action == "pull" and ignored_user_agent(event.user_agent) is not None


def ignored_user_agent(user_agent: str) -> str | None:
    """Why a pull from this user agent does not count, or None when it counts (SPEC §2)."""
    agent = user_agent.lower()
    if agent.startswith(OWN_USER_AGENT_PREFIX):
        return "hubimages's own request"
    for fragment in settings.PULL_IGNORE_USER_AGENTS:
        if fragment and fragment.lower() in agent:
            return f"user agent matches {fragment!r}"
    return None


def apply_pull(event: Event, registry: Registry) -> Applied:
    if event.method and event.method not in PULL_METHODS:
        return Applied(State.IGNORED, f"{event.method} is not a pull")
    reason = ignored_user_agent(event.user_agent)
    if reason:
        return Applied(State.IGNORED, reason)
    manifests = Manifest.objects.filter(
        repository__registry=registry, repository__name=event.repository
    )
    if event.digest:
        manifests = manifests.filter(digest=event.digest)
    else:  # 2.8 always names the digest; be lenient with registries that only give the tag
        manifests = manifests.filter(tags__name=event.tag) if event.tag else manifests.none()
    updated = manifests.filter(
        Q(last_pulled_at__isnull=True) | Q(last_pulled_at__lt=event.occurred_at)
    ).update(last_pulled_at=event.occurred_at)
    if updated:
        return Applied(State.APPLIED, "pull counted", changed=True)
    if manifests.exists():
        return Applied(State.APPLIED, "pull counted: not newer than the last one")
    return Applied(State.WAITING, "pull counted: manifest not stored yet")


def apply_delete(event: Event, registry: Registry) -> Applied:
    """Unless the manifest (or tag) was pushed after the delete: by its stored Last pushed,
    or by a push event recorded since (a restore from the Trash keeps the manifest's old
    Last pushed, and its deletion's delete event may be applied only after it)."""
    pushed_later = Q(pushed_at_estimated=False, pushed_at__gt=event.occurred_at)
    pushes_since = RegistryEvent.objects.filter(
        registry=registry,
        action="push",
        repository=event.repository,
        occurred_at__gt=event.occurred_at,
    )
    if event.digest:
        manifest = Manifest.objects.filter(
            repository__registry=registry, repository__name=event.repository, digest=event.digest
        ).first()
        if manifest is None:
            return Applied(State.IGNORED, "delete: manifest not stored")
        if (
            Manifest.objects.filter(pk=manifest.pk).filter(pushed_later).exists()
            or pushes_since.filter(digest=event.digest).exists()
        ):
            return Applied(State.IGNORED, "pushed again after this delete")
        blob_ids = list(
            ManifestBlob.objects.filter(manifest=manifest).values_list("blob_id", flat=True)
        )
        # Only this manifest's neighbourhood is computed again: a notification costs the
        # same in a repository of a million manifests as in one of a thousand.
        with rollups.changing(manifest.repository_id, [manifest.pk]):
            manifest.delete()
            rollups.unused_blobs(blob_ids).delete()
        return Applied(State.APPLIED, "manifest deleted", changed=True)
    tag = Tag.objects.filter(
        repository__registry=registry, repository__name=event.repository, name=event.tag
    ).first()
    if tag is None:
        return Applied(State.IGNORED, "delete: tag not stored")
    if (
        Manifest.objects.filter(pk=tag.manifest_id).filter(pushed_later).exists()
        or pushes_since.filter(tag=event.tag).exists()
    ):
        return Applied(State.IGNORED, "tag pushed again after this delete")
    with rollups.changing(tag.repository_id, [tag.manifest_id]):
        tag.delete()
    return Applied(State.APPLIED, "tag deleted", changed=True)


def _bump(registry: Registry, repositories: set[str]) -> None:
    if repositories:
        registry.repositories.filter(name__in=repositories).update(revision=F("revision") + 1)


# -- what waits for the worker ------------------------------------------------------------

CLAIM_BATCH = 200
MAX_BATCH = 100_000
READ_CONCURRENCY = 8
MAX_ATTEMPTS = 8
RETRY_DELAYS = (5, 15, 60, 180, 600)  # seconds after the 1st, 2nd… failed attempt


@dataclass
class Drained:
    """What one `drain` did; `retry_at` is when the events that failed may be tried again."""

    processed: int = 0
    retried: int = 0
    registry_down: str = ""
    retry_at: datetime | None = None


def due_events(
    now: datetime | None = None, *, now_or_later: bool = False, registry: Registry | None = None
):
    """RECEIVED events that nobody works on and whose next attempt is due (or all of them
    with `now_or_later`: a person at the command line does not wait for the back-off)."""
    now = now or timezone.now()
    events = RegistryEvent.objects.filter(state=State.RECEIVED).filter(
        Q(claimed_until__isnull=True) | Q(claimed_until__lt=Now())  # a lease: the database's clock
    )
    if registry is not None:
        events = events.filter(registry=registry)
    if now_or_later:
        return events
    return events.filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))


def claim(
    batch: int = CLAIM_BATCH, *, now_or_later: bool = False, registry: Registry | None = None
) -> list[RegistryEvent]:
    """Claim up to `batch` due events (of `registry`, or of any) for this worker: rows other
    workers are claiming are skipped, and a claim lapses after the lease, should this
    worker die."""
    now = timezone.now()
    with transaction.atomic():
        ids = list(
            due_events(now, now_or_later=now_or_later, registry=registry)
            .select_for_update(skip_locked=True)
            .order_by("pk")
            .values_list("pk", flat=True)[:batch]
        )
        RegistryEvent.objects.filter(pk__in=ids).update(
            claimed_until=Now() + timedelta(seconds=settings.WORKER_LEASE_SECONDS)
        )
    return list(RegistryEvent.objects.filter(pk__in=ids).select_related("registry").order_by("pk"))


def drain(
    client: RegistryClient | None = None,
    *,
    registry: Registry | None = None,
    batch: int = CLAIM_BATCH,
    now_or_later: bool = False,
) -> Drained:
    """Claim due events and process them, each registry's with its own client: deferred
    deletes one by one, pushes grouped by repository (one read of the registry, one write
    to the database per repository). `client`, if given, reads `registry`.

    An event that fails for a reason that may pass is tried again later with back-off, at
    most MAX_ATTEMPTS times. When a registry is down, its events stop at once and wait for
    the same retry time, rather than each failing on its own; other registries' go on."""
    rows = claim(batch, now_or_later=now_or_later, registry=registry)
    result = Drained()
    by_registry: dict[int, list[RegistryEvent]] = defaultdict(list)
    for row in rows:
        by_registry[row.registry_id].append(row)
    try:
        for group in by_registry.values():
            _drain_registry(group[0].registry, group, client, result)
    finally:
        RegistryEvent.objects.filter(pk__in=[row.pk for row in rows]).update(claimed_until=None)
    return result


def _drain_registry(
    registry: Registry,
    rows: list[RegistryEvent],
    client: RegistryClient | None,
    result: Drained,
) -> None:
    own_client = client is None
    try:
        if client is None:
            client = registry_client(registry)
        pushes: dict[str, list[RegistryEvent]] = defaultdict(list)
        for row in rows:
            if row.action == "push":
                pushes[row.repository].append(row)
            else:
                result.processed += _process_one(row, _process_deferred)
        with ThreadPoolExecutor(READ_CONCURRENCY, thread_name_prefix="events") as pool:
            for name, group in pushes.items():
                result.processed += _store_group(client, pool, registry, name, group, result)
    except (RegistryUnavailable, ImproperlyConfigured) as error:
        result.registry_down = f"{registry.name}: {error}"
        unfinished = RegistryEvent.objects.filter(
            pk__in=[row.pk for row in rows], state=State.RECEIVED
        )
        result.retried += len(unfinished)
        retry_at = _retry_later(list(unfinished), error)
        result.retry_at = min(filter(None, (result.retry_at, retry_at)))
        log.warning("registry %s: events wait until %s: %s", registry.name, retry_at, error)
    finally:
        if own_client and client is not None:
            client.close()


def drain_for(
    seconds: float, client: RegistryClient | None = None, *, now_or_later: bool = False
) -> Drained:
    """Drain until nothing is due, the registry is down, or `seconds` have passed."""
    total = Drained()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = drain(client, now_or_later=now_or_later)
        total.processed += result.processed
        total.retried += result.retried
        total.registry_down = result.registry_down
        total.retry_at = result.retry_at or total.retry_at
        if result.registry_down or not (result.processed or result.retried):
            break
    return total


def process_received(client: RegistryClient | None = None, registry: Registry | None = None) -> int:
    """Try every RECEIVED event (of `registry`, which `client` reads, or of every registry)
    once now, back-off or not (the command line's way); returns how many were done."""
    return drain(client, registry=registry, batch=MAX_BATCH, now_or_later=True).processed


def _store_group(
    client: RegistryClient,
    pool: ThreadPoolExecutor,
    registry: Registry,
    name: str,
    rows: list[RegistryEvent],
    result: Drained,
) -> int:
    """Store one repository's pushes together; if that fails for a reason that will not
    pass, try them one by one so each event gets its own outcome."""
    try:
        return _store_pushes(client, pool, registry, name, rows)
    except RegistryUnavailable:
        raise
    except (RegistryError, DatabaseError, LeaseBusy) as error:
        if len(rows) > 1 and not _retryable(error):
            return sum(_store_group(client, pool, registry, name, [row], result) for row in rows)
        return sum(_failed(row, error, result) for row in rows)
    except Exception as error:  # a bug must not stop the other events
        log.exception("registry events of %s failed", name)
        return sum(_failed(row, error, result) for row in rows)


def _process_one(row: RegistryEvent, process) -> int:
    try:
        process(row)
        return 1
    except RegistryUnavailable:
        raise
    except Exception as error:
        if not isinstance(error, RegistryError | DatabaseError | LeaseBusy):
            log.exception("registry event %s failed", row.event_id)
        return _failed(row, error, Drained())


def _retryable(error: Exception) -> bool:
    if isinstance(error, RegistryError):
        return error.retryable or isinstance(error, AuthenticationError)
    return True  # a busy repository, a database hiccup, a bug fixed by the next release


def _failed(row: RegistryEvent, error: Exception, result: Drained) -> int:
    """Record a failed attempt; 1 when the event is done with (given up), else 0."""
    reason = str(error) if isinstance(error, RegistryError | LeaseBusy) else repr(error)
    if _retryable(error) and row.attempts + 1 < MAX_ATTEMPTS:
        result.retried += 1
        retry_at = _retry_later([row], error)
        result.retry_at = min(filter(None, (result.retry_at, retry_at)))
        return 0
    RegistryEvent.objects.filter(pk=row.pk).update(
        state=State.FAILED,
        processed_at=timezone.now(),
        attempts=F("attempts") + 1,
        message=f"gave up: {reason}"[:512],
    )
    return 1


def _retry_later(rows: list[RegistryEvent], error: Exception) -> datetime:
    attempt = max((row.attempts for row in rows), default=0)
    retry_at = timezone.now() + timedelta(seconds=RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])
    reason = str(error) if isinstance(error, RegistryError | LeaseBusy) else repr(error)
    RegistryEvent.objects.filter(pk__in=[row.pk for row in rows]).update(
        attempts=F("attempts") + 1,
        next_attempt_at=retry_at,
        message=f"will retry at {retry_at:%H:%M:%S} UTC: {reason}"[:512],
    )
    return retry_at


def _finish(row: RegistryEvent, applied: Applied) -> None:
    RegistryEvent.objects.filter(pk=row.pk).update(
        processed_at=timezone.now(), state=applied.state, message=applied.message[:512]
    )


def _event_of(row: RegistryEvent) -> Event:
    return Event(
        id=row.event_id,
        action=row.action,
        occurred_at=row.occurred_at,
        repository=row.repository,
        digest=row.digest,
        tag=row.tag,
        media_type=row.media_type,
        user_agent=row.user_agent,
    )


def _deleted_later(rows: list[RegistryEvent]) -> set[int]:
    """The pushes among `rows` that a delete of the same digest, recorded later, undid."""
    deletes = RegistryEvent.objects.filter(
        registry_id=rows[0].registry_id,
        action="delete",
        repository__in={row.repository for row in rows},
        digest__in={row.digest for row in rows},
    ).values_list("repository", "digest", "occurred_at")
    latest: dict[tuple[str, str], datetime] = {}
    for repository, digest, occurred_at in deletes:
        key = (repository, digest)
        latest[key] = max(latest.get(key, occurred_at), occurred_at)
    return {
        row.pk
        for row in rows
        if (row.repository, row.digest) in latest
        and latest[(row.repository, row.digest)] > row.occurred_at
    }


def _process_deferred(row: RegistryEvent) -> None:
    """An event left RECEIVED at receipt because the repository was locked."""
    repository = Repository.objects.filter(registry_id=row.registry_id, name=row.repository).first()
    if repository is None:
        _finish(row, Applied(State.IGNORED, "repository not stored"))
        return
    with (
        repository_lock(repository, owner="events", wait=LOCK_WAIT_SECONDS),
        transaction.atomic(),
    ):
        applied = apply_on_receipt(_event_of(row), repository.registry, defer_if_locked=False)
        if applied.changed:
            _bump(repository.registry, {repository.name})
        _finish(row, applied)


def _store_pushes(
    client: RegistryClient,
    pool: ThreadPoolExecutor,
    registry: Registry,
    name: str,
    rows: list[RegistryEvent],
) -> int:
    """Store one repository's pushed manifests as sync would, then their exact push times
    (SPEC §2); returns how many events are done."""
    undone = _deleted_later(rows)
    for row in rows:
        if row.pk in undone:
            _finish(row, Applied(State.IGNORED, "deleted after this push"))
    rows = [row for row in rows if row.pk not in undone]
    done_before = len(undone)
    if not rows:
        return done_before
    pushed: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        pushed[row.digest].update([row.tag] if row.tag else [])
    snapshot = store.read_pushed(client, pool, registry, name, pushed)
    with (
        repository_lock(name, owner="events", wait=LOCK_WAIT_SECONDS, registry=registry.name),
        transaction.atomic(),
    ):
        undone = _deleted_later(rows)  # deletes recorded while we were reading
        stored = [row for row in rows if row.pk not in undone and row.digest in snapshot.present]
        repository = store.write_pushed(registry, snapshot)
        updated = 0
        for row in stored:
            if row.user_agent.lower().startswith(OWN_USER_AGENT_PREFIX):
                continue  # a restore from the Trash: the kept Last pushed stands
            updated += (
                Manifest.objects.filter(repository=repository, digest=row.digest)
                .filter(Q(pushed_at_estimated=True) | Q(pushed_at__lt=row.occurred_at))
                .update(
                    pushed_at=row.occurred_at,
                    pushed_at_estimated=False,
                    pushed_at_source=PushedFrom.EVENT,
                )
            )
        pulled = activity.apply_earlier_pulls(repository, [row.digest for row in stored])
        if updated or pulled:
            _bump(registry, {repository.name})
        done = 0
        for row in rows:
            if row.pk in undone:
                _finish(row, Applied(State.IGNORED, "deleted after this push"))
            elif row.digest in snapshot.withheld:
                # An index stored whole or not at all: read it again later.
                incomplete = RegistryError(
                    "not stored yet: a manifest it lists could not be read", retryable=True
                )
                done += _failed(row, incomplete, Drained()) - 1
            elif row.digest not in snapshot.present:
                _finish(row, Applied(State.IGNORED, "the registry no longer has this manifest"))
            else:
                _finish(row, Applied(State.APPLIED, "push stored"))
            done += 1
    return done_before + done


def prune(older_than: datetime) -> int:
    """Forget processed events received before `older_than`; returns how many.

    A registry redelivers within minutes, so old records only cost space."""
    deleted, _ = RegistryEvent.objects.filter(
        processed_at__isnull=False, received_at__lt=older_than
    ).delete()
    return deleted
