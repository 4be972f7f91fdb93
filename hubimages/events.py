"""Registry notifications: parse an envelope, record its events, apply them (SPEC §2, §5).

Design. The registry delivers each envelope with a short timeout and, in distribution 2.8,
retries a failed delivery forever, blocking the events queued behind it. So the endpoint
does only cheap, local work before answering:

- every event is recorded in `RegistryEvent` (its `id` is unique: a redelivered event is
  recognised and changes nothing), in one transaction per envelope;
- pulls and deletes are applied in that same transaction (a few UPDATE/DELETE statements);
- pushes stay pending: storing a pushed manifest means fetching it, its children and
  configs from the registry. Right after the answer, one background thread per process
  (`process_soon`) drains every pending event (`process_pending`); an event whose
  processing fails for a reason that may pass (registry unreachable, database busy) stays
  pending and is retried by the next drain, `manage.py process_events` or
  `manage.py sync_registry`, which also repairs whatever delivery lost.

Order independence: a pull sets Last pulled to the latest of what we have and its time; a
pull of a manifest not stored yet is kept and applied when its push is stored; a delete
is skipped when the manifest was pushed after it; a push is skipped when a later delete of
the same digest was recorded, stores nothing when the registry no longer has the manifest,
moves its tag only while the registry still points the tag at it, and keeps the newest
push time.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, IntegrityError, connections, transaction
from django.db.models import F, Q
from django.utils import timezone

from hubimages import activity, rollups
from hubimages.connection import registry_client
from hubimages.locks import LOCK_LEASE, RepositoryBusy, repository_lock
from hubimages.models import Blob, Manifest, ManifestBlob, RegistryEvent, Repository, Tag
from registry import media
from registry.client import RegistryClient
from registry.errors import AuthenticationError, RegistryError
from registry.sync import read_pushed_manifest, write_pushed_manifest

log = logging.getLogger("hubimages.events")

MAX_BODY_BYTES = 1024 * 1024
MANIFEST_MEDIA_TYPES = media.INDEX_MEDIA_TYPES | media.IMAGE_MEDIA_TYPES
PULL_METHODS = ("GET", "HEAD")
OWN_USER_AGENT_PREFIX = "hubimages/"
ACTIONS = ("push", "pull", "delete", "mount")
LOCK_WAIT_SECONDS = 30.0  # in the background thread; then the event waits for the next drain

# Outcomes, as stored in RegistryEvent.outcome.
PULL_COUNTED = "pull counted"
PULL_NOT_NEWER = "pull counted: not newer than the last one"
STORED = "push stored"
RETRY = "will retry: "


class EnvelopeError(ValueError):
    """The body is not a notification envelope hubimages can record; the message says why."""


@dataclass(frozen=True)
class Event:
    id: str
    action: str
    occurred_at: datetime
    repository: str
    digest: str = ""
    tag: str = ""
    media_type: str = ""
    method: str = ""
    user_agent: str = ""

    @property
    def is_manifest(self) -> bool:
        return self.media_type in MANIFEST_MEDIA_TYPES


@dataclass
class Recorded:
    new: int = 0
    duplicates: int = 0
    pending: int = 0


# -- parsing -----------------------------------------------------------------------------


def parse_envelope(body: bytes) -> list[Event]:
    """The events of a `{"events": [...]}` body, or EnvelopeError.

    Strict about what recording needs (id, timestamp, action, repository, a well-formed
    digest), lenient about the rest: an unknown action or media type is recorded and
    ignored rather than refused, since a refused delivery is retried forever.
    """
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EnvelopeError(f"the body is not JSON: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("events"), list):
        raise EnvelopeError('expected an envelope {"events": [...]}')
    events: dict[str, Event] = {}
    for position, raw in enumerate(data["events"]):
        event = _parse_event(raw, f"events[{position}]")
        events.setdefault(event.id, event)
    return list(events.values())


def _parse_event(raw: object, where: str) -> Event:
    if not isinstance(raw, dict):
        raise EnvelopeError(f"{where} is not an object")
    event_id = _text(raw, "id", where, limit=128, required=True)
    action = _text(raw, "action", where, limit=16, required=True)
    occurred_at = media.parse_time(raw.get("timestamp"))
    if occurred_at is None:
        raise EnvelopeError(f"{where}.timestamp is missing or not an RFC 3339 time")
    target = raw.get("target")
    if not isinstance(target, dict):
        raise EnvelopeError(f"{where}.target is missing or not an object")
    request = raw.get("request") if isinstance(raw.get("request"), dict) else {}
    event = Event(
        id=event_id,
        action=action,
        occurred_at=occurred_at,
        repository=_text(target, "repository", f"{where}.target", limit=255, required=True),
        digest=_text(target, "digest", f"{where}.target", limit=160),
        tag=_text(target, "tag", f"{where}.target", limit=128),
        media_type=_text(target, "mediaType", f"{where}.target", limit=255),
        method=str(request.get("method") or "").upper()[:16],
        user_agent=str(request.get("useragent") or "")[:512],
    )
    if event.digest and not media.is_digest(event.digest):
        raise EnvelopeError(f"{where}.target.digest is not a digest")
    if action == "delete" and not (event.digest or event.tag):
        raise EnvelopeError(f"{where}.target needs a digest or a tag")
    return event


def _text(data: dict, key: str, where: str, *, limit: int, required: bool = False) -> str:
    value = data.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise EnvelopeError(f"{where}.{key} is missing or not a string")
    if len(value) > limit:
        raise EnvelopeError(f"{where}.{key} is longer than {limit} characters")
    return value


# -- recording and the cheap events --------------------------------------------------------


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
        for event in sorted(events, key=lambda e: e.occurred_at):
            if event.id in seen:
                result.duplicates += 1
                continue
            outcome, visible = _apply_now(event)
            if visible:
                changed.add(event.repository)
                if event.action == "delete":
                    refresh.add(event.repository)
            rows.append(_row(event, outcome, processed_at=None if outcome is None else now))
            result.new += 1
            result.pending += outcome is None
        RegistryEvent.objects.bulk_create(rows)
        for repository in Repository.objects.filter(name__in=refresh):
            rollups.refresh(repository)
        _bump(changed)
    return result


def _row(event: Event, outcome: str | None, *, processed_at: datetime | None) -> RegistryEvent:
    return RegistryEvent(
        event_id=event.id,
        action=event.action[:16],
        repository=event.repository,
        digest=event.digest,
        tag=event.tag,
        media_type=event.media_type,
        occurred_at=event.occurred_at,
        user_agent=event.user_agent,
        processed_at=processed_at,
        outcome=outcome or "",
    )


def _apply_now(event: Event, *, defer_if_locked: bool = True) -> tuple[str | None, bool]:
    """(outcome, whether the list changed); outcome None leaves the event pending."""
    if event.action == "push" and event.is_manifest:
        return (None, False) if event.digest else ("ignored: push without a digest", False)
    if event.action == "pull" and event.is_manifest:
        return _apply_pull(event)
    if event.action == "delete":
        if defer_if_locked and _locked(event.repository):
            # hubimages's own deletion (or a sync) is at work: apply it after, under the lock.
            return None, False
        return _apply_delete(event)
    if event.action == "mount":
        return "ignored: mount", False
    if event.action in ACTIONS:
        return f"ignored: {event.action} of a blob", False
    return f"ignored: unknown action {event.action!r}", False


def ignored_user_agent(user_agent: str) -> str | None:
    """Why a pull from this user agent does not count, or None when it counts (SPEC §2)."""
    agent = user_agent.lower()
    if agent.startswith(OWN_USER_AGENT_PREFIX):
        return "hubimages's own request"
    for fragment in settings.PULL_IGNORE_USER_AGENTS:
        if fragment and fragment.lower() in agent:
            return f"user agent matches {fragment!r}"
    return None


def _apply_pull(event: Event) -> tuple[str, bool]:
    if event.method and event.method not in PULL_METHODS:
        return f"ignored: {event.method} is not a pull", False
    reason = ignored_user_agent(event.user_agent)
    if reason:
        return f"ignored: {reason}", False
    manifests = Manifest.objects.filter(repository__name=event.repository)
    if event.digest:
        manifests = manifests.filter(digest=event.digest)
    else:  # 2.8 always names the digest; be lenient with registries that only give the tag
        manifests = manifests.filter(tags__name=event.tag) if event.tag else manifests.none()
    updated = manifests.filter(
        Q(last_pulled_at__isnull=True) | Q(last_pulled_at__lt=event.occurred_at)
    ).update(last_pulled_at=event.occurred_at)
    if updated:
        return PULL_COUNTED, True
    return (PULL_NOT_NEWER if manifests.exists() else activity.PULL_BEFORE_STORED), False


def _apply_delete(event: Event) -> tuple[str, bool]:
    pushed_later = Q(pushed_at_estimated=False, pushed_at__gt=event.occurred_at)
    if event.digest:
        manifest = Manifest.objects.filter(
            repository__name=event.repository, digest=event.digest
        ).first()
        if manifest is None:
            return "delete: manifest not stored", False
        if Manifest.objects.filter(pk=manifest.pk).filter(pushed_later).exists():
            return "ignored: pushed again after this delete", False
        blob_ids = list(
            ManifestBlob.objects.filter(manifest=manifest).values_list("blob_id", flat=True)
        )
        manifest.delete()
        Blob.objects.filter(pk__in=blob_ids, manifest_links__isnull=True).delete()
        return "manifest deleted", True
    tag = Tag.objects.filter(repository__name=event.repository, name=event.tag).first()
    if tag is None:
        return "delete: tag not stored", False
    if Manifest.objects.filter(pk=tag.manifest_id).filter(pushed_later).exists():
        return "ignored: tag pushed again after this delete", False
    tag.delete()
    return "tag deleted", True


def _locked(repository: str) -> bool:
    return (
        Repository.objects.filter(name=repository, locked_at__gte=timezone.now() - LOCK_LEASE)
        .exclude(lock_token="")
        .exists()
    )


def _bump(repositories: set[str]) -> None:
    if repositories:
        Repository.objects.filter(name__in=repositories).update(revision=F("revision") + 1)


# -- pushes, after the answer --------------------------------------------------------------

_drain_lock = threading.Lock()
_worker_state = threading.Condition()
_worker: threading.Thread | None = None
_more_work = False
RETRY_DELAYS = (1.0, 5.0, 30.0)  # the background thread's own retries of what failed


def process_soon() -> None:
    """Drain pending events in this process's background thread (started if idle).

    With `EVENTS_PROCESS_INLINE` (tests) the drain runs now, in the caller's thread.
    """
    global _worker, _more_work
    if getattr(settings, "EVENTS_PROCESS_INLINE", False):
        process_pending()
        return
    with _worker_state:
        _more_work = True
        _worker_state.notify()
        if _worker is None:
            _worker = threading.Thread(target=_work, name="registry-events", daemon=True)
            _worker.start()


def wait_for_background(timeout: float = 30.0) -> bool:
    """Wait for the background thread to finish its drains; False on timeout."""
    with _worker_state:
        worker = _worker
    if worker is None:
        return True
    worker.join(timeout)
    return not worker.is_alive()


def _work() -> None:
    """Drain while there is work; retry what failed a few times (a registry restarting, a
    busy database), then leave it to the next event, `process_events` or `sync_registry`."""
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
                process_pending()
                left = RegistryEvent.objects.filter(processed_at__isnull=True).exists()
            except Exception:
                log.exception("processing registry events failed")
                left = True
            if not left:
                retries = 0
    finally:
        connections.close_all()


def process_pending(client: RegistryClient | None = None, *, batch: int = 50) -> int:
    """Process every pending event once, oldest first; returns how many were completed.

    One drain at a time per process. An event that fails for a reason that may pass stays
    pending, with the reason in `outcome`, for the next drain.
    """
    with _drain_lock:
        if not RegistryEvent.objects.filter(processed_at__isnull=True).exists():
            return 0
        own_client = client is None
        if client is None:
            try:
                client = registry_client()
            except ImproperlyConfigured as error:
                log.warning("registry events stay pending: %s", error)
                return 0
        try:
            return _drain(client, batch)
        finally:
            if own_client:
                client.close()


def _drain(client: RegistryClient, batch: int) -> int:
    done = 0
    last_pk = 0
    while True:
        events = list(
            RegistryEvent.objects.filter(processed_at__isnull=True, pk__gt=last_pk).order_by("pk")[
                :batch
            ]
        )
        if not events:
            return done
        for event in events:
            last_pk = event.pk
            done += _process(client, event)


def _process(client: RegistryClient, event: RegistryEvent) -> bool:
    try:
        if event.action == "push":
            _process_push(client, event)
        else:
            _process_deferred(event)
        return True
    except (RegistryError, DatabaseError, RepositoryBusy) as error:
        if isinstance(error, RegistryError) and not (
            error.retryable or isinstance(error, AuthenticationError)
        ):
            _finish(event, f"failed: {error}")
            return True
        message = f"{RETRY}{error}"
    except Exception as error:  # a bug must not stop the other events
        log.exception("registry event %s failed", event.event_id)
        message = f"{RETRY}internal error: {error!r}"
    log.warning("registry event %s: %s", event.event_id, message)
    RegistryEvent.objects.filter(pk=event.pk).update(outcome=message[:512])
    return False


def _finish(event: RegistryEvent, outcome: str) -> None:
    RegistryEvent.objects.filter(pk=event.pk).update(
        processed_at=timezone.now(), outcome=outcome[:512]
    )


def _deleted_later(event: RegistryEvent) -> bool:
    return RegistryEvent.objects.filter(
        action="delete",
        repository=event.repository,
        digest=event.digest,
        occurred_at__gt=event.occurred_at,
    ).exists()


def _process_deferred(event: RegistryEvent) -> None:
    """An event left pending at receipt because the repository was locked."""
    repository = Repository.objects.filter(name=event.repository).first()
    if repository is None:
        _finish(event, "ignored: repository not stored")
        return
    parsed = Event(
        id=event.event_id,
        action=event.action,
        occurred_at=event.occurred_at,
        repository=event.repository,
        digest=event.digest,
        tag=event.tag,
        media_type=event.media_type,
        user_agent=event.user_agent,
    )
    with (
        repository_lock(repository, owner="events", wait=LOCK_WAIT_SECONDS),
        transaction.atomic(),
    ):
        outcome, visible = _apply_now(parsed, defer_if_locked=False)
        if visible:
            rollups.refresh(repository)
            _bump({repository.name})
        _finish(event, outcome or "nothing to do")


def _process_push(client: RegistryClient, event: RegistryEvent) -> None:
    """Store the pushed manifest as sync would, then its exact push time (SPEC §2)."""
    if _deleted_later(event):
        _finish(event, "ignored: deleted after this push")
        return
    snapshot = read_pushed_manifest(client, event.repository, event.digest, tag=event.tag)
    if snapshot is None:
        _finish(event, "ignored: the registry no longer has this manifest")
        return
    new_digests = list(snapshot.fetched)
    repository, _ = Repository.objects.get_or_create(name=event.repository)
    with (
        repository_lock(repository, owner="events", wait=LOCK_WAIT_SECONDS),
        transaction.atomic(),
    ):
        if _deleted_later(event):  # a delete recorded while we were reading
            _finish(event, "ignored: deleted after this push")
            return
        repository = write_pushed_manifest(snapshot)
        manifests = Manifest.objects.filter(repository=repository)
        updated = (
            manifests.filter(digest=event.digest)
            .filter(Q(pushed_at_estimated=True) | Q(pushed_at__lt=event.occurred_at))
            .update(pushed_at=event.occurred_at, pushed_at_estimated=False)
        )
        pulled = activity.apply_earlier_pulls(repository, new_digests)
        if updated or pulled:
            _bump({repository.name})
        _finish(event, STORED)


def prune(older_than: datetime) -> int:
    """Forget processed events received before `older_than`; returns how many.

    A registry redelivers within minutes, so old records only cost space.
    """
    deleted, _ = RegistryEvent.objects.filter(
        processed_at__isnull=False, received_at__lt=older_than
    ).delete()
    return deleted
