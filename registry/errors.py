"""Every error the registry client raises, in one place.

Catch `RegistryError` for all of them; `retryable` says whether trying again later may help
(a registry restarting, a rate limit) as opposed to a fault that will not go away by itself.
Messages, URLs and reprs never carry credentials or tokens.
"""

import json
import re
from typing import ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MAX_MESSAGE_CHARS = 300

_SENSITIVE_QUERY_NAME = re.compile(r"sig|token|cred|secret|password|auth|key", re.IGNORECASE)


class RegistryError(Exception):
    """A registry request failed; `str()` gives a one-line message for people."""

    default_retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        url: str | None = None,
        method: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.url = redact_url(url) if url else None
        self.method = method
        self.retryable = self.default_retryable if retryable is None else retryable

    def __str__(self) -> str:
        where = self._where()
        if self.status is not None:
            head = f"registry answered {self.status}"
            if self.code:
                head += f" {self.code}"
            if where:
                head += f" for {where}"
            return f"{head}: {self.message}" if self.message else head
        return f"{self.message} ({where})" if where else self.message

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, status={self.status!r}, "
            f"code={self.code!r}, url={self.url!r}, retryable={self.retryable!r})"
        )

    def _where(self) -> str:
        if not self.url:
            return ""
        parts = urlsplit(self.url)
        target = parts.path or "/"
        if parts.query:
            target += f"?{parts.query}"
        return f"{self.method} {target}" if self.method else target


class RegistryUnavailable(RegistryError):
    """Connection refused, DNS failure or timeout."""

    default_retryable = True


class AuthenticationError(RegistryError):
    """401 or 403 after authenticating, or a failing token server."""


class NotFound(RegistryError):
    """404: the repository, manifest or blob does not exist (any more)."""


class ManifestNotFound(NotFound):
    pass


class BlobNotFound(NotFound):
    pass


class RateLimited(RegistryError):
    """429 Too Many Requests, still there after the retries, or asking for a wait longer
    than the client's cap (`retry_after` says how long, in seconds)."""

    default_retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerError(RegistryError):
    """5xx; 502/503/504 are retryable, a 500 is a registry bug or broken storage."""


class DeadlineExceeded(RegistryError):
    """A request (its retries and its body included) did not end within the client's total
    deadline: a registry trickling its answer, or one too slow to be useful."""

    default_retryable = True


class TruncatedResponse(RegistryError):
    """The registry answered, but the body ended before its announced length (or the
    connection broke mid-body): a proxy or registry cutting answers short, not a network
    that cannot be reached."""

    default_retryable = True


class InvalidResponse(RegistryError):
    """The registry answered something that is not what the API promises."""


class DigestMismatch(InvalidResponse):
    """The content does not hash to the digest it was asked for or announced with."""


class ContentTooLarge(InvalidResponse):
    """A manifest over 4 MiB or a blob over the cap the caller set."""


class ContentTooComplex(InvalidResponse):
    """Valid JSON that Python will not parse: nested deeper than its recursion limit, or
    holding a number of thousands of digits. The registry accepts such content (Go parses
    10,000 levels), so it is skipped like oversized content, never a reason to fail."""


class MalformedManifest(InvalidResponse):
    """A manifest that is not valid JSON or breaks the OCI / Docker schema."""


class UnsupportedManifest(MalformedManifest):
    """A well-formed manifest of a kind hubimages does not handle (Docker schema 1)."""


class UnsupportedOperation(RegistryError):
    """The registry does not offer this operation (delete disabled, no catalog)."""


def redact_url(url: str) -> str:
    """`url` without user:password and without the values of secret-looking query items.

    Presigned storage URLs (a blob redirect) carry signatures and credentials in the query.
    """
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    query = parts.query
    if query:
        items = parse_qsl(query, keep_blank_values=True)
        if any(_SENSITIVE_QUERY_NAME.search(name) for name, _ in items):
            query = urlencode(
                [
                    (name, "REDACTED" if _SENSITIVE_QUERY_NAME.search(name) else value)
                    for name, value in items
                ],
                safe=":/,*",
            )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def parse_error_body(body: bytes) -> tuple[str | None, str]:
    """(code, message) from an OCI error body `{"errors": [{"code", "message", "detail"}]}`.

    Tolerates anything else: plain text is shortened to one line, HTML pages are dropped.
    """
    if not body:
        return None, ""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None, _text_message(body)
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list) or not errors:
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            return None, shorten(data["message"])
        return None, ""
    codes = [e.get("code") for e in errors if isinstance(e, dict)]
    code = next((c for c in codes if isinstance(c, str) and c), None)
    messages = []
    for error in errors:
        if not isinstance(error, dict):
            continue
        message = error.get("message")
        if not isinstance(message, str) or not message:
            detail = error.get("detail")
            message = detail if isinstance(detail, str) else ""
        if message and message not in messages:
            messages.append(message)
    return code, shorten("; ".join(messages))


def shorten(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` on one line, cut at `limit` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _text_message(body: bytes) -> str:
    text = body[: MAX_MESSAGE_CHARS * 4].decode("utf-8", errors="replace").strip()
    if text.startswith("<"):
        return ""
    return shorten(text)
