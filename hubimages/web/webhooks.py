"""Each registry's notification endpoint: authenticate, check, record, answer fast.

The registry is not a signed-in user and sends no CSRF token: its own bearer secret (its
`events_token` in REGISTRIES_FILE, or `REGISTRY_EVENTS_TOKEN` for `default`) is what
authenticates it, so one registry's token opens no other registry's endpoint. What the
events do is in `events`.
"""

import hmac
import logging

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from hubimages.jobs import tasks
from hubimages.registries import rows
from hubimages.registries.config import DEFAULT
from hubimages.sync import events
from registry.notifications import EnvelopeError, parse_envelope

log = logging.getLogger("hubimages.events")

MAX_BODY_BYTES = 1024 * 1024
ACCEPTED_CONTENT_TYPES = (
    "application/vnd.docker.distribution.events.v1+json",
    "application/vnd.docker.distribution.events.v2+json",
    "application/json",
)
_warned_disabled: set[str] = set()


@csrf_exempt
@login_not_required
@require_POST
def registry_events(request: HttpRequest, registry: str = DEFAULT) -> JsonResponse:
    config = rows.configuration(registry)
    if config is None and (registry != DEFAULT or settings.REGISTRIES is not None):
        return _error(404, f"no registry named {registry} is configured")
    token = config.events_token if config else ""
    if not token:
        _warn_disabled(registry)
        if settings.REGISTRIES is None:
            reason = "REGISTRY_EVENTS_TOKEN is not set"
        else:
            reason = f"registry {registry} has no events_token_env or events_token_file"
        return _error(503, f"registry notifications are disabled: {reason}")
    if not _bearer_matches(request.headers.get("Authorization", ""), token):
        response = _error(
            401, f"a valid Authorization: Bearer <events token of registry {registry}> is required"
        )
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
    recorded = events.record(parsed, rows.get(registry))
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


def _warn_disabled(registry: str) -> None:
    if registry not in _warned_disabled:
        _warned_disabled.add(registry)
        if registry == DEFAULT:
            log.warning("REGISTRY_EVENTS_TOKEN is not set: registry notifications are disabled")
        else:
            log.warning("registry %s has no events token: its notifications are refused", registry)


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)
