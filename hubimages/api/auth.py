"""Who is calling: a personal access token (`Authorization: Bearer <token>`) or the browser
session, with a CSRF check on unsafe methods. Tried in that order; a request that sends a
token is judged by the token alone, so a bad token is a 401 even beside a session.

`request.user` is the token's user afterwards, and `request.auth` the token (or the user,
for a session): `token_of` tells which. What the caller may do where is the user's rights
now (`teams.rights.rights_of`: a `read` token's no more than viewing), read once per
request, so a role taken away holds from the next call on; `require_delete` checks both
walls for one repository, `require_write_scope` the token's wall.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest
from ninja.security import APIKeyCookie, HttpBearer
from ninja.utils import check_csrf

from hubimages.accounts import tokens
from hubimages.api.errors import ApiError
from hubimages.lib.addresses import client_address
from hubimages.models import ApiToken
from hubimages.teams.rights import rights_of

SAFE_METHODS = ("GET", "HEAD", "OPTIONS", "TRACE")


class BearerToken(HttpBearer):
    """A personal access token, created on the API tokens page or by `create_api_token`."""

    def __call__(self, request: HttpRequest) -> ApiToken | None:
        header = request.headers.get("Authorization")
        if not header:
            return None
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise ApiError(
                401, "invalid_token", "send the token as `Authorization: Bearer <token>`"
            )
        return self.authenticate(request, value.strip())

    def authenticate(self, request: HttpRequest, token: str) -> ApiToken:
        address = client_address(request) or "unknown"
        try:
            row = tokens.authenticate(token, address=address)
        except tokens.TooManyFailures as locked:
            raise ApiError(429, "too_many_failures", str(locked)) from None
        except tokens.InvalidToken as invalid:
            raise ApiError(401, "invalid_token", str(invalid)) from None
        request.user = row.user
        return row


class SessionCookie(APIKeyCookie):
    """The signed-in browser session; POST, PUT and DELETE need the CSRF token too (the
    `X-CSRFToken` header, as the pages' htmx requests send it)."""

    param_name = settings.SESSION_COOKIE_NAME

    def __call__(self, request: HttpRequest) -> Any:
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            return None
        if request.method not in SAFE_METHODS and check_csrf(request) is not None:
            raise ApiError(
                403,
                "csrf_failed",
                "CSRF check failed: a signed-in session must send the csrftoken cookie's "
                "value as the X-CSRFToken header (scripts: use a token instead)",
            )
        return user

    def authenticate(self, request: HttpRequest, key: str | None) -> Any:
        return self(request)


AUTH = [BearerToken(), SessionCookie()]


def token_of(request: HttpRequest) -> ApiToken | None:
    """The token the request came with; None for a browser session."""
    auth = getattr(request, "auth", None)
    return auth if isinstance(auth, ApiToken) else None


def require_write_scope(request: HttpRequest, doing: str = "deleting") -> None:
    """403 for a token whose scope is `read`: it reads, and never more."""
    token = token_of(request)
    if token is not None and token.scope != ApiToken.Scope.READ_DELETE:
        raise ApiError(
            403,
            "insufficient_scope",
            f"this token's scope is {token.scope}: {doing} needs a read+delete token",
        )


def require_delete(request: HttpRequest, registry: str, repository: str) -> None:
    """403 unless the token's scope says delete and the user may delete in `repository`
    of `registry` now (call it once the repository is known to be one they may see)."""
    require_write_scope(request)
    if not rights_of(request).may_delete(registry, repository):
        raise ApiError(
            403,
            "permission_denied",
            f"deleting in {registry}/{repository} needs the deleter role on it, which "
            f"{request.user.get_username()} does not hold",
        )
