"""Registry notification envelopes (`{"events": [...]}`, distribution 2.8 and 3.x): parsing.

Strict about what recording an event needs (id, timestamp, action, repository, a
well-formed digest), lenient about the rest: an unknown action or media type is parsed
and left to the caller to ignore, since a refused delivery is retried forever.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from registry import media

MANIFEST_MEDIA_TYPES = media.INDEX_MEDIA_TYPES | media.IMAGE_MEDIA_TYPES


class EnvelopeError(ValueError):
    """The body is not a notification envelope that can be recorded; the message says why."""


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


def parse_envelope(body: bytes) -> list[Event]:
    """The events of a `{"events": [...]}` body, each id once, or EnvelopeError."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EnvelopeError(f"the body is not JSON: {error}") from None
    except RecursionError:
        raise EnvelopeError("the body nests JSON deeper than can be parsed") from None
    except ValueError:  # int's limit on digits (sys.get_int_max_str_digits)
        raise EnvelopeError("the body holds a number too long to parse") from None
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
