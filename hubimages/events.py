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
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from hubimages import activity, rollups, sync
from hubimages.connection import registry_client
from hubimages.locks import LOCK_LEASE, RepositoryBusy, repository_lock
from hubimages.models import Blob, Manifest, ManifestBlob, RegistryEvent, Repository, Tag
from registry import media
from registry.client import RegistryClient
from registry.errors import AuthenticationError, RegistryError, shorten
from registry.notifications import Event

log = logging.getLogger("hubimages.events")

PULL_METHODS = ("GET", "HEAD")
OWN_USER_AGENT_PREFIX = "hubimages/"
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
    new: int = 0
    duplicates: int = 0
    pending: int = 0


# -- recording -------------------------------------------------------------------------------


def record(events: list[Event]) -> Recorded:
    """Record the envelope's new events and apply pulls and deletes, in one transaction."""
    for attempt in range(2):
        try:
            return _record(events)
        except IntegrityError:
            # The registry redelivered while the first delivery was still being recorded:
            # the second pass sees those events as duplicates.
            if attempt:
                raise
    raise AssertionError("unreachable")


def _record(events: list[Event]) -> Recorded:
    result = Recorded()
    with transaction.atomic():
        seen = set(
            RegistryEvent.objects.filter(event_id__in=[e.id for e in events]).values_list(
                "event_id", flat=True
            )
        )
        changed: set[str] = set()
        refresh: set[str] = set()
        rows = []
        now = timezone.now()
        corrected = [_plausible_time(event, now) for event in events]
        for event, correction in sorted(corrected, key=lambda pair: pair[0].occurred_at):
            if event.id in seen:
                result.duplicates += 1
                continue
            applied = apply_on_receipt(event)
            if applied.changed:
                changed.add(event.repository)
                if event.action == "delete":
                    refresh.add(event.repository)
            rows.append(_row(event, applied, now, correction))
            result.new += 1
            result.pending += applied.state == State.RECEIVED
        RegistryEvent.objects.bulk_create(rows)
        for repository in Repository.objects.filter(name__in=refresh):
            rollups.refresh(repository)
        _bump(changed)
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


def _row(event: Event, applied: Applied, now: datetime, correction: str = "") -> RegistryEvent:
    message = f"{applied.message}; {correction}" if correction else applied.message
    return RegistryEvent(
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


def apply_on_receipt(event: Event, *, defer_if_locked: bool = True) -> Applied:
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
        return apply_pull(event)
    if event.action == "delete":
        if defer_if_locked and _locked(event.repository):
            # hubimages's own deletion (or a sync) is at work: apply it after, under the lock.
            return Applied(State.RECEIVED, "")
        return apply_delete(event)
    if event.action == "mount":
        return Applied(State.IGNORED, "mount")
    if event.action in ACTIONS:
        return Applied(State.IGNORED, f"{event.action} of a blob")
    return Applied(State.IGNORED, f"unknown action {event.action!r}")


def ignored_user_agent(user_agent: str) -> str | None:
    """Why a pull from this user agent does not count, or None when it counts (SPEC §2)."""
    agent = user_agent.lower()
    if agent.startswith(OWN_USER_AGENT_PREFIX):
        return "hubimages's own request"
    for fragment in settings.PULL_IGNORE_USER_AGENTS:
        if fragment and fragment.lower() in agent:
            return f"user agent matches {fragment!r}"
    return None


def apply_pull(event: Event) -> Applied:
    if event.method and event.method not in PULL_METHODS:
        return Applied(State.IGNORED, f"{event.method} is not a pull")
    reason = ignored_user_agent(event.user_agent)
    if reason:
        return Applied(State.IGNORED, reason)
    manifests = Manifest.objects.filter(repository__name=event.repository)
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


def apply_delete(event: Event) -> Applied:
    pushed_later = Q(pushed_at_estimated=False, pushed_at__gt=event.occurred_at)
    if event.digest:
        manifest = Manifest.objects.filter(
            repository__name=event.repository, digest=event.digest
        ).first()
        if manifest is None:
            return Applied(State.IGNORED, "delete: manifest not stored")
        if Manifest.objects.filter(pk=manifest.pk).filter(pushed_later).exists():
            return Applied(State.IGNORED, "pushed again after this delete")
        blob_ids = list(
            ManifestBlob.objects.filter(manifest=manifest).values_list("blob_id", flat=True)
        )
        manifest.delete()
        Blob.objects.filter(pk__in=blob_ids, manifest_links__isnull=True).delete()
        return Applied(State.APPLIED, "manifest deleted", changed=True)
    tag = Tag.objects.filter(repository__name=event.repository, name=event.tag).first()
    if tag is None:
        return Applied(State.IGNORED, "delete: tag not stored")
    if Manifest.objects.filter(pk=tag.manifest_id).filter(pushed_later).exists():
        return Applied(State.IGNORED, "tag pushed again after this delete")
    tag.delete()
    return Applied(State.APPLIED, "tag deleted", changed=True)


def _locked(repository: str) -> bool:
    return (
        Repository.objects.filter(name=repository, locked_at__gte=timezone.now() - LOCK_LEASE)
        .exclude(lock_token="")
        .exists()
    )


def _bump(repositories: set[str]) -> None:
    if repositories:
        Repository.objects.filter(name__in=repositories).update(revision=F("revision") + 1)


# -- what waits for the worker ------------------------------------------------------------------


def process_received(client: RegistryClient | None = None, *, batch: int = 50) -> int:
    """Process every RECEIVED event once, oldest first; returns how many were completed.

    An event that fails for a reason that may pass stays RECEIVED, with the reason in its
    message, for the next round."""
    if not RegistryEvent.objects.filter(state=State.RECEIVED).exists():
        return 0
    own_client = client is None
    if client is None:
        try:
            client = registry_client()
        except ImproperlyConfigured as error:
            log.warning("registry events stay pending: %s", error)
            return 0
    try:
        done = 0
        last_pk = 0
        while events := list(
            RegistryEvent.objects.filter(state=State.RECEIVED, pk__gt=last_pk).order_by("pk")[
                :batch
            ]
        ):
            for event in events:
                last_pk = event.pk
                done += _process(client, event)
        return done
    finally:
        if own_client:
            client.close()


def _process(client: RegistryClient, row: RegistryEvent) -> bool:
    try:
        if row.action == "push":
            _process_push(client, row)
        else:
            _process_deferred(row)
        return True
    except (RegistryError, DatabaseError, RepositoryBusy) as error:
        if isinstance(error, RegistryError) and not (
            error.retryable or isinstance(error, AuthenticationError)
        ):
            _finish(row, Applied(State.FAILED, str(error)))
            return True
        message = f"will retry: {error}"
    except Exception as error:  # a bug must not stop the other events
        log.exception("registry event %s failed", row.event_id)
        message = f"will retry: internal error: {error!r}"
    log.warning("registry event %s: %s", row.event_id, message)
    RegistryEvent.objects.filter(pk=row.pk).update(
        message=message[:512], attempts=F("attempts") + 1
    )
    return False


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


def _deleted_later(row: RegistryEvent) -> bool:
    return RegistryEvent.objects.filter(
        action="delete",
        repository=row.repository,
        digest=row.digest,
        occurred_at__gt=row.occurred_at,
    ).exists()


def _process_deferred(row: RegistryEvent) -> None:
    """An event left RECEIVED at receipt because the repository was locked."""
    repository = Repository.objects.filter(name=row.repository).first()
    if repository is None:
        _finish(row, Applied(State.IGNORED, "repository not stored"))
        return
    with (
        repository_lock(repository, owner="events", wait=LOCK_WAIT_SECONDS),
        transaction.atomic(),
    ):
        applied = apply_on_receipt(_event_of(row), defer_if_locked=False)
        if applied.changed:
            rollups.refresh(repository)
            _bump({repository.name})
        _finish(row, applied)


def _process_push(client: RegistryClient, row: RegistryEvent) -> None:
    """Store the pushed manifest as sync would, then its exact push time (SPEC §2)."""
    if _deleted_later(row):
        _finish(row, Applied(State.IGNORED, "deleted after this push"))
        return
    snapshot = sync.read_pushed_manifest(client, row.repository, row.digest, tag=row.tag)
    if snapshot is None:
        _finish(row, Applied(State.IGNORED, "the registry no longer has this manifest"))
        return
    new_digests = list(snapshot.fetched)
    repository, _ = Repository.objects.get_or_create(name=row.repository)
    with (
        repository_lock(repository, owner="events", wait=LOCK_WAIT_SECONDS),
        transaction.atomic(),
    ):
        if _deleted_later(row):  # a delete recorded while we were reading
            _finish(row, Applied(State.IGNORED, "deleted after this push"))
            return
        repository = sync.write_pushed_manifest(snapshot)
        manifests = Manifest.objects.filter(repository=repository)
        updated = (
            manifests.filter(digest=row.digest)
            .filter(Q(pushed_at_estimated=True) | Q(pushed_at__lt=row.occurred_at))
            .update(pushed_at=row.occurred_at, pushed_at_estimated=False)
        )
        pulled = activity.apply_earlier_pulls(repository, new_digests)
        if updated or pulled:
            _bump({repository.name})
        _finish(row, Applied(State.APPLIED, "push stored"))


def prune(older_than: datetime) -> int:
    """Forget processed events received before `older_than`; returns how many.

    A registry redelivers within minutes, so old records only cost space."""
    deleted, _ = RegistryEvent.objects.filter(
        processed_at__isnull=False, received_at__lt=older_than
    ).delete()
    return deleted
