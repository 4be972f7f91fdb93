"""Every API error is JSON, `{"error": {"code", "message"}}`, whatever raised it: our own
refusals, bad parameters, a failed authentication or CSRF check, an unknown path or method,
a body Django refuses, an unexpected exception. An API client never gets an HTML page.

Inside the API's views ninja hands exceptions to the handlers `install` registers; the
Django error handlers (`handler400`… in the root URLconf) answer the same way for
anything under `/api/` that fails before or outside them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import PermissionDenied, SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError

log = logging.getLogger("hubimages.api")

API_PREFIX = "/api/"
CODES = {
    400: "bad_request",
    401: "not_authenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    422: "invalid_request",
    429: "too_many_requests",
}
NOT_AUTHENTICATED = (
    "sign in, or send a personal access token as `Authorization: Bearer <token>` "
    "(create one on the API tokens page)"
)


class ApiError(Exception):
    """An answer other than success: its status, a stable code and a message for people,
    `fields` for what was invalid; `extra` goes beside `error` (a 409's new plan)."""

    def __init__(
        self, status: int, code: str, message: str, *, fields: list | None = None, **extra: object
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields
        self.extra = extra
        super().__init__(message)


def error_response(
    status: int, code: str, message: str, *, fields: list | None = None, **extra: object
) -> JsonResponse:
    error: dict = {"code": code, "message": message}
    if fields:
        error["fields"] = fields
    response = JsonResponse({"error": error, **extra}, status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="hubimages"'
    return response


def install(api: NinjaAPI) -> None:
    """Register the handlers that turn every exception into the JSON error shape."""
    api.add_exception_handler(ApiError, _api_error)
    api.add_exception_handler(ValidationError, _invalid)
    api.add_exception_handler(AuthenticationError, _not_authenticated)
    api.add_exception_handler(HttpError, _http_error)
    api.add_exception_handler(Http404, _not_found)
    api.add_exception_handler(PermissionDenied, _forbidden)
    api.add_exception_handler(SuspiciousOperation, _bad_request)
    api.add_exception_handler(Exception, _server_error)


def _api_error(request: HttpRequest, exc: ApiError) -> HttpResponse:
    return error_response(exc.status, exc.code, exc.message, fields=exc.fields, **exc.extra)


def _invalid(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    fields = [field_problem(error) for error in exc.errors]
    message = "; ".join(f"{f['field']}: {f['message']}" for f in fields) or "invalid request"
    return error_response(422, "invalid_request", message, fields=fields)


def field_problem(error: dict) -> dict:
    """`("query", "status")` → `status`; `("body", "payload", "digests", 0)` →
    `digests[0]`: where the client put the value, not where ninja keeps it."""
    location = list(error.get("loc", ()))
    if location and location[0] == "body":
        location = location[2:]  # ("body", <the view's argument>, field…)
    elif location and location[0] in ("query", "path"):
        location = location[1:]
    field = ""
    for part in location:
        field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else str(part))
    return {"field": field, "message": str(error.get("msg", "invalid"))}


def _not_authenticated(request: HttpRequest, exc: Exception) -> HttpResponse:
    return error_response(401, "not_authenticated", NOT_AUTHENTICATED)


def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    status = exc.status_code
    message = str(exc)
    if status == 400 and message.startswith("Cannot parse request body"):
        message = "the request body is not valid JSON"
    return error_response(status, CODES.get(status, "error"), message)


def _not_found(request: HttpRequest, exc: Exception) -> HttpResponse:
    return error_response(404, "not_found", str(exc) or "not found")


def _forbidden(request: HttpRequest, exc: Exception) -> HttpResponse:
    return error_response(403, "permission_denied", str(exc) or "permission denied")


def _bad_request(request: HttpRequest, exc: Exception) -> HttpResponse:
    return error_response(400, "bad_request", str(exc) or "bad request")


def _server_error(request: HttpRequest, exc: Exception) -> HttpResponse:
    log.error("API error on %s %s", request.method, request.path, exc_info=exc)
    return error_response(500, "internal_error", "internal error: the server's log has the details")


# -- outside the API's views ---------------------------------------------------------------


@csrf_exempt
@login_not_required
def not_found(request: HttpRequest, *args: object, **kwargs: object) -> JsonResponse:
    """Any path under /api/ that names no endpoint, whatever the method."""
    return error_response(
        404, "not_found", f"no endpoint {request.path}: see /api/v1/docs and /api/v1/openapi.json"
    )


def _for_api(
    status: int, message: str, fallback: Callable[..., HttpResponse]
) -> Callable[..., HttpResponse]:
    def handler(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
        if request.path.startswith(API_PREFIX):
            return error_response(status, CODES.get(status, "internal_error"), message)
        if status == 500:
            return fallback(request)
        return fallback(request, exception)

    return handler


# Django's error views for the root URLconf: JSON under /api/, the usual pages elsewhere.
handler400 = _for_api(400, "bad request", defaults.bad_request)
handler403 = _for_api(403, "permission denied", defaults.permission_denied)
handler404 = _for_api(404, "not found", defaults.page_not_found)
handler500 = _for_api(
    500, "internal error: the server's log has the details", defaults.server_error
)
