"""The registry's notification endpoint: authenticate, check, record, answer fast.

The registry is not a signed-in user and sends no CSRF token: the bearer secret
`REGISTRY_EVENTS_TOKEN` is what authenticates it. What the events do is in `events`.
"""

import hmac
import logging

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from hubimages.jobs import tasks
from hubimages.sync import events
from registry.notifications import EnvelopeError, parse_envelope

log = logging.getLogger("hubimages.events")

MAX_BODY_BYTES = 1024 * 1024
ACCEPTED_CONTENT_TYPES = (
    "application/vnd.docker.distribution.events.v1+json",
    "application/vnd.docker.distribution.events.v2+json",
    "application/json",
)
_warned_disabled = False


@csrf_exempt
@login_not_required
@require_POST
def registry_events(request: HttpRequest) -> JsonResponse:
    token = settings.REGISTRY_EVENTS_TOKEN
    if not token:
        _warn_disabled()
        return _error(503, "registry notifications are disabled: REGISTRY_EVENTS_TOKEN is not set")
    if not _bearer_matches(request.headers.get("Authorization", ""), token):
        response = _error(401, "a valid Authorization: Bearer <REGISTRY_EVENTS_TOKEN> is required")
        response["WWW-Authenticate"] = 'Bearer realm="hubimages registry events"'
        return response
    content_type = request.content_type.strip().lower()
    if content_type not in ACCEPTED_CONTENT_TYPES:
        return _error(415, f"expected one of {', '.join(ACCEPTED_CONTENT_TYPES)}")
    body = _read_body(request)
    if body is None:
        return _error(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
    try:
        parsed = parse_envelope(body)
    except EnvelopeError as error:
        return _error(400, str(error))
    recorded = events.record(parsed)
    if recorded.pending:
        tasks.ensure_drain()
    return JsonResponse(
        {
            "recorded": recorded.new,
            "duplicates": recorded.duplicates,
            "pending": recorded.pending,
            "ignored": recorded.ignored,
            "not_stored": recorded.not_stored,
        }
    )


def _bearer_matches(header: str, token: str) -> bool:
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), token.encode())


def _read_body(request: HttpRequest) -> bytes | None:
    """The body, or None when it is over the limit (announced or actual)."""
    try:
        announced = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        announced = 0
    if announced > MAX_BODY_BYTES:
        return None
    body = request.read(MAX_BODY_BYTES + 1)
    return None if len(body) > MAX_BODY_BYTES else body


def _warn_disabled() -> None:
    global _warned_disabled
    if not _warned_disabled:
        _warned_disabled = True
        log.warning("REGISTRY_EVENTS_TOKEN is not set: registry notifications are disabled")


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)
