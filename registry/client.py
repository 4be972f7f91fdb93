"""HTTP client for the OCI distribution API: auth, paging, retries, verified content.

One client is shared by the sync's worker threads: requests' connection pool is thread-safe,
headers are built per request (the session is never mutated after construction) and the
token cache sits behind locks.
"""

import base64
import email.utils
import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter

from registry import __version__
from registry.errors import (
    AuthenticationError,
    BlobNotFound,
    ContentTooLarge,
    DigestMismatch,
    InvalidResponse,
    ManifestNotFound,
    NotFound,
    RateLimited,
    RegistryError,
    RegistryUnavailable,
    ServerError,
    UnsupportedManifest,
    UnsupportedOperation,
    parse_error_body,
    redact_url,
    shorten,
)
from registry.media import (
    DOCKER_SCHEMA1,
    DOCKER_SCHEMA1_SIGNED,
    MANIFEST_ACCEPT,
    SCHEMA1_MEDIA_TYPES,
    ParsedManifest,
    digest_of,
    is_digest,
    parse_manifest,
)

logger = logging.getLogger("registry")

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_JSON_BYTES = 64 * 1024 * 1024  # tags/list of distribution 2.8 is one unpaged document
MAX_ERROR_BYTES = 64 * 1024
DEFAULT_TOKEN_LIFETIME = 60.0
RETRY_STATUSES = frozenset({429, 502, 503, 504})
_TRANSPORT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)

_NAME_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME_RE = re.compile(rf"^{_NAME_COMPONENT}(?:/{_NAME_COMPONENT})*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_MAX_NAME_LENGTH = 255
_ACCEPT_WITH_SCHEMA1 = f"{MANIFEST_ACCEPT}, {DOCKER_SCHEMA1_SIGNED}, {DOCKER_SCHEMA1}"
# A scheme alone, or one `name=value` / `name="quoted, value"` parameter, per match.
_CHALLENGE_TOKEN = re.compile(
    r'\s*(?:([\w.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))|([\w.-]+))\s*,?'
)


@dataclass(frozen=True)
class ManifestHead:
    digest: str
    media_type: str
    size: int


@dataclass(frozen=True)
class FetchedManifest:
    digest: str
    media_type: str
    body: bytes
    parsed: ParsedManifest

    @property
    def size(self) -> int:
        return len(self.body)


@dataclass
class _Token:
    value: str
    expires_at: float


class RegistryClient:
    def __init__(
        self,
        base_url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout: tuple[float, float] = (5.0, 30.0),
        max_retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        pool_size: int = 16,
        session: requests.Session | None = None,
        user_agent: str = f"hubimages/{__version__}",
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_url = normalize_base_url(base_url)
        self._origin = "{0.scheme}://{0.netloc}".format(urlsplit(self.base_url))
        self._credentials = (username, password or "") if username else None
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.user_agent = user_agent
        self._sleep = sleep
        self._clock = clock
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
        self._session = session
        self._use_basic = False
        self._tokens: dict[str, _Token] = {}
        self._tokens_lock = threading.Lock()
        self._scope_locks: dict[str, threading.Lock] = {}

    def __repr__(self) -> str:
        return f"RegistryClient({self.base_url!r}, authenticated={self._credentials is not None})"

    def __enter__(self) -> "RegistryClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_session:
            self._session.close()

    # -- API ---------------------------------------------------------------------------------

    def ping(self) -> None:
        """Check that base_url is a reachable OCI registry that accepts our credentials."""
        url = f"{self.base_url}/v2/"
        try:
            response, body = self._call("GET", url, scope="")
        except NotFound as exc:
            raise InvalidResponse(
                f"not an OCI registry: {url} answered 404 (no /v2/ API there)",
                status=404,
                url=url,
                method="GET",
            ) from exc
        has_api_header = "Docker-Distribution-API-Version" in response.headers
        if not has_api_header and not _is_json_object(body):
            raise InvalidResponse(
                "not an OCI registry: /v2/ answered without the distribution API",
                url=url,
                method="GET",
            )

    def iter_repositories(self, page_size: int = 1000) -> Iterator[str]:
        """Every repository name of the catalog, page by page (`n`, then `Link` rel=next)."""
        _check_page_size(page_size)
        url: str | None = f"{self.base_url}/v2/_catalog?{urlencode({'n': page_size})}"
        seen: set[str] = set()
        while url and url not in seen:
            seen.add(url)
            try:
                response, body = self._call("GET", url, scope="registry:catalog:*")
            except NotFound as exc:
                raise UnsupportedOperation(
                    "the registry does not offer the catalog API (GET /v2/_catalog)",
                    status=exc.status,
                    code=exc.code,
                    url=url,
                    method="GET",
                ) from exc
            yield from _string_list(body, "repositories", url)
            url = self._next_page(response)

    def list_tags(self, repository: str, page_size: int = 1000) -> list[str]:
        """All tags of `repository`, in the registry's order, following `Link` pages."""
        _check_name(repository)
        _check_page_size(page_size)
        url: str | None = f"{self.base_url}/v2/{repository}/tags/list?{urlencode({'n': page_size})}"
        tags: dict[str, None] = {}
        seen: set[str] = set()
        while url and url not in seen:
            seen.add(url)
            response, body = self._call("GET", url, scope=_pull_scope(repository))
            tags.update(dict.fromkeys(_string_list(body, "tags", url)))
            url = self._next_page(response)
        return list(tags)

    def head_manifest(self, repository: str, reference: str) -> ManifestHead | None:
        """The manifest's digest, media type and size, or None when the registry lacks it."""
        url = self._manifest_url(repository, reference)
        try:
            response, _ = self._call(
                "HEAD",
                url,
                scope=_pull_scope(repository),
                headers={"Accept": _ACCEPT_WITH_SCHEMA1},
            )
        except NotFound:
            return None
        digest = response.headers.get("Docker-Content-Digest", "").strip()
        length = response.headers.get("Content-Length", "")
        if not digest or not length.isdigit():
            # Some registries leave these out of HEAD answers: ask for the content instead.
            fetched = self.get_manifest(repository, reference)
            return ManifestHead(fetched.digest, fetched.media_type, fetched.size)
        if not is_digest(digest):
            raise InvalidResponse(
                f"Docker-Content-Digest {shorten(digest, 80)!r} is not a digest",
                url=url,
                method="HEAD",
            )
        if is_digest(reference) and _same_algorithm(digest, reference) and digest != reference:
            raise DigestMismatch(
                f"asked for {reference}, the registry announced {digest}", url=url, method="HEAD"
            )
        return ManifestHead(digest, _media_type(response), int(length))

    def get_manifest(self, repository: str, reference: str) -> FetchedManifest:
        """The manifest's bytes, verified against its digest, and their parsed form."""
        url = self._manifest_url(repository, reference)
        try:
            response, body = self._call(
                "GET",
                url,
                scope=_pull_scope(repository),
                headers={"Accept": _ACCEPT_WITH_SCHEMA1},
                max_bytes=MAX_MANIFEST_BYTES,
            )
        except NotFound as exc:
            raise ManifestNotFound(
                exc.message, status=exc.status, code=exc.code, url=exc.url, method="GET"
            ) from None
        media_type = _media_type(response)
        if media_type in SCHEMA1_MEDIA_TYPES:
            # Signed schema 1 digests exclude the signatures: report the kind, not a mismatch.
            raise UnsupportedManifest(
                "schema 1 manifests are not supported (Docker deprecated them in 2017); "
                "push the image again with a current client",
                url=url,
                method="GET",
            )
        digest = self._verified_digest(response, body, reference, url)
        try:
            parsed = parse_manifest(body, media_type)
        except InvalidResponse as exc:
            exc.url, exc.method = redact_url(url), "GET"
            raise
        return FetchedManifest(digest, parsed.media_type, body, parsed)

    def get_blob(self, repository: str, digest: str, *, max_bytes: int = 8 * 1024 * 1024) -> bytes:
        """A blob's bytes (following redirects to storage), verified against `digest`."""
        _check_name(repository)
        _check_digest(digest)
        url = f"{self.base_url}/v2/{repository}/blobs/{digest}"
        try:
            _, body = self._call("GET", url, scope=_pull_scope(repository), max_bytes=max_bytes)
        except NotFound as exc:
            raise BlobNotFound(
                exc.message, status=exc.status, code=exc.code, url=exc.url, method="GET"
            ) from None
        actual = digest_of(body, digest.split(":", 1)[0])
        if actual != digest:
            raise DigestMismatch(
                f"blob content hashes to {actual}, not {digest}", url=url, method="GET"
            )
        return body

    def delete_manifest(self, repository: str, digest: str) -> bool:
        """Delete by digest: True when deleted now, False when the registry no longer had it."""
        _check_name(repository)
        _check_digest(digest)
        url = f"{self.base_url}/v2/{repository}/manifests/{digest}"
        try:
            self._call("DELETE", url, scope=f"repository:{repository}:delete")
        except NotFound:
            return False
        return True

    # -- requests, retries and auth -------------------------------------------------------------

    def _call(
        self,
        method: str,
        url: str,
        *,
        scope: str | None,
        headers: dict[str, str] | None = None,
        max_bytes: int = MAX_JSON_BYTES,
        authorization: str | None = None,
    ) -> tuple[requests.Response, bytes]:
        """Send with retries and auth; the 2xx response and its body, or a RegistryError.

        `scope` None sends `authorization` as given and never answers a challenge (token
        server requests); otherwise the cached Basic or Bearer credentials for `scope` go
        along and one 401 challenge is answered.
        """
        attempt = 0
        challenge_answered = False
        while True:
            sent = authorization if scope is None else self._authorization(scope)
            request_headers = {"User-Agent": self.user_agent, **(headers or {})}
            if sent:
                request_headers["Authorization"] = sent
            try:
                response = self._session.request(
                    method, url, headers=request_headers, timeout=self.timeout, stream=True
                )
            except _TRANSPORT_ERRORS as exc:
                self._give_up_or_wait(exc, url, attempt)
                attempt += 1
                continue
            with response:
                status = response.status_code
                logger.debug("%s %s -> %s", method, urlsplit(response.url or url).path, status)
                if (
                    status == 401
                    and scope is not None
                    and not challenge_answered
                    and self._answer_challenge(response, scope, sent)
                ):
                    challenge_answered = True
                    continue
                if status in RETRY_STATUSES and attempt < self.max_retries:
                    self._sleep(self._retry_delay(response, attempt))
                    attempt += 1
                    continue
                if 200 <= status < 300:
                    try:
                        return response, _read_capped(response, max_bytes, method)
                    except _TRANSPORT_ERRORS as exc:
                        self._give_up_or_wait(exc, url, attempt)
                        attempt += 1
                        continue
                raise self._error(response, method)

    def _give_up_or_wait(self, exc: Exception, url: str, attempt: int) -> None:
        host = urlsplit(url).netloc.rpartition("@")[2]
        if isinstance(exc, requests.exceptions.SSLError):
            raise RegistryUnavailable(
                f"TLS failed with {host}: {shorten(str(exc), 200)}", url=url, retryable=False
            ) from None
        if attempt >= self.max_retries:
            kind = "timed out" if isinstance(exc, requests.Timeout) else "connection failed"
            raise RegistryUnavailable(
                f"cannot reach {host} ({kind} after {attempt + 1} attempts)", url=url
            ) from None
        logger.debug("retrying %s after %s", redact_url(url), type(exc).__name__)
        self._sleep(self._backoff_delay(attempt))

    def _backoff_delay(self, attempt: int) -> float:
        delay = min(self.max_backoff, self.backoff * 2**attempt)
        return min(self.max_backoff, delay + random.uniform(0, self.backoff / 4))

    def _retry_delay(self, response: requests.Response, attempt: int) -> float:
        retry_after = _parse_retry_after(response.headers.get("Retry-After"))
        if retry_after is not None:
            return min(self.max_backoff, retry_after)
        return self._backoff_delay(attempt)

    def _authorization(self, scope: str) -> str | None:
        with self._tokens_lock:
            token = self._tokens.get(scope)
        if token is not None and token.expires_at > self._clock():
            return f"Bearer {token.value}"
        if self._use_basic and self._credentials:
            return _basic(self._credentials)
        return None

    def _answer_challenge(self, response: requests.Response, scope: str, sent: str | None) -> bool:
        """Prepare credentials for a retry after a 401; False when there is nothing to try."""
        challenges = parse_www_authenticate(response.headers.get("WWW-Authenticate", ""))
        if "bearer" in challenges:
            self._refresh_token(scope, challenges["bearer"], rejected=sent)
            return True
        if "basic" in challenges and self._credentials:
            if sent and sent.startswith("Basic "):
                return False
            self._use_basic = True
            return True
        return False

    def _refresh_token(self, scope: str, challenge: dict[str, str], rejected: str | None) -> None:
        with self._tokens_lock:
            lock = self._scope_locks.setdefault(scope, threading.Lock())
        with lock:
            with self._tokens_lock:
                token = self._tokens.get(scope)
            if (
                token is not None
                and token.expires_at > self._clock()
                and f"Bearer {token.value}" != rejected
            ):
                return  # another thread fetched a fresh one meanwhile
            token = self._fetch_token(challenge, challenge.get("scope") or scope)
            with self._tokens_lock:
                self._tokens[scope] = token

    def _fetch_token(self, challenge: dict[str, str], scope: str) -> _Token:
        realm = challenge.get("realm", "")
        if urlsplit(realm).scheme not in ("http", "https"):
            raise AuthenticationError(
                "the registry asked for a Bearer token without a usable realm URL"
            )
        params = [("service", challenge["service"])] if challenge.get("service") else []
        params += [("scope", s) for s in scope.split()]
        url = f"{realm}{'&' if '?' in realm else '?'}{urlencode(params)}" if params else realm
        basic = _basic(self._credentials) if self._credentials else None
        try:
            _, body = self._call("GET", url, scope=None, authorization=basic)
        except RegistryUnavailable:
            raise
        except RegistryError as exc:
            who = "refused the credentials" if exc.status in (401, 403) else "failed"
            raise AuthenticationError(
                f"token server {who} for scope {scope!r}"
                + ("" if self._credentials else " (no credentials configured)"),
                status=exc.status,
                code=exc.code,
                url=exc.url,
                method="GET",
                retryable=exc.retryable,
            ) from None
        return self._token_from(body, url)

    def _token_from(self, body: bytes, url: str) -> _Token:
        data = _json(body, url, "token server answer")
        value = data.get("token") or data.get("access_token") if isinstance(data, dict) else None
        if not isinstance(value, str) or not value:
            raise AuthenticationError("the token server answered without a token", url=url)
        lifetime = data.get("expires_in")
        if isinstance(lifetime, bool) or not isinstance(lifetime, int | float) or lifetime <= 0:
            lifetime = DEFAULT_TOKEN_LIFETIME
        margin = min(10.0, lifetime / 2)
        return _Token(value, self._clock() + lifetime - margin)

    def _error(self, response: requests.Response, method: str) -> RegistryError:
        status = response.status_code
        try:
            body = b"" if method == "HEAD" else _read_capped(response, MAX_ERROR_BYTES, method)
        except (ContentTooLarge, requests.RequestException):
            body = b""
        code, message = parse_error_body(body)
        message = message or response.reason or "no explanation given"
        where = {"status": status, "code": code, "url": response.url, "method": method}
        if status in (401, 403):
            if not self._credentials:
                message += " (no credentials configured)"
            return AuthenticationError(message, **where)
        if status == 404:
            return NotFound(message, **where)
        if status == 405:
            if method == "DELETE":
                message = (
                    f"{message}; deleting needs storage.delete.enabled: true "
                    "in the registry's configuration"
                )
            return UnsupportedOperation(message, **where)
        if status == 429:
            retry_after = _parse_retry_after(response.headers.get("Retry-After"))
            return RateLimited(message, retry_after=retry_after, **where)
        if status >= 500:
            return ServerError(message, retryable=status in RETRY_STATUSES, **where)
        return RegistryError(message, **where)

    def _next_page(self, response: requests.Response) -> str | None:
        """The `Link: <…>; rel="next"` URL, re-rooted on base_url's origin.

        Registries behind proxies often announce their internal host or scheme; only the
        path and query of the link are trusted.
        """
        link = response.links.get("next", {}).get("url")
        if not link:
            return None
        target = urlsplit(urljoin(response.url, link))
        return f"{self._origin}{target.path}" + (f"?{target.query}" if target.query else "")

    def _manifest_url(self, repository: str, reference: str) -> str:
        _check_name(repository)
        if not (is_digest(reference) or _TAG_RE.match(reference)):
            raise ValueError(f"invalid manifest reference {shorten(reference, 80)!r}")
        return f"{self.base_url}/v2/{repository}/manifests/{reference}"

    def _verified_digest(
        self, response: requests.Response, body: bytes, reference: str, url: str
    ) -> str:
        announced = response.headers.get("Docker-Content-Digest", "").strip()
        expected = reference if is_digest(reference) else announced
        if not expected:
            return digest_of(body)
        if not is_digest(expected):
            raise InvalidResponse(
                f"Docker-Content-Digest {shorten(expected, 80)!r} is not a digest",
                url=url,
                method="GET",
            )
        actual = digest_of(body, expected.split(":", 1)[0])
        if actual != expected:
            raise DigestMismatch(
                f"manifest content hashes to {actual}, not {expected}", url=url, method="GET"
            )
        return actual


def normalize_base_url(base_url: str) -> str:
    """`https://host[:port][/prefix]` without a trailing slash or `/v2`; no credentials."""
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("registry URL must look like https://host[:port]")
    if "@" in parts.netloc:
        raise ValueError(
            "registry URL must not contain credentials; pass username and password instead"
        )
    path = parts.path.rstrip("/")
    if path.endswith("/v2"):
        path = path[:-3]
    return urlunsplit((parts.scheme, parts.netloc.lower(), path, "", ""))


def parse_www_authenticate(header: str) -> dict[str, dict[str, str]]:
    """`{"bearer": {"realm": …, "service": …, "scope": …}}` from a WWW-Authenticate value."""
    challenges: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    position = 0
    while position < len(header):
        match = _CHALLENGE_TOKEN.match(header, position)
        if not match or match.end() == position:
            break
        position = match.end()
        name, quoted, bare, scheme = match.groups()
        if scheme:
            current = challenges.setdefault(scheme.lower(), {})
        elif current is not None and name:
            value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
            current[name.lower()] = value
    return challenges


def _read_capped(response: requests.Response, max_bytes: int, method: str) -> bytes:
    if method == "HEAD":
        return b""
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise ContentTooLarge(
            f"content of {int(length)} bytes is over the {max_bytes}-byte limit",
            url=response.url,
            method=method,
        )
    chunks, total = [], 0
    for chunk in response.iter_content(64 * 1024):
        total += len(chunk)
        if total > max_bytes:
            raise ContentTooLarge(
                f"content is over the {max_bytes}-byte limit", url=response.url, method=method
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _basic(credentials: tuple[str, str]) -> str:
    username, password = credentials
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def _pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def _media_type(response: requests.Response) -> str:
    return response.headers.get("Content-Type", "").split(";")[0].strip().lower()


def _same_algorithm(a: str, b: str) -> bool:
    return a.split(":", 1)[0] == b.split(":", 1)[0]


def _check_name(repository: str) -> None:
    if (
        not isinstance(repository, str)
        or len(repository) > _MAX_NAME_LENGTH
        or not _NAME_RE.match(repository)
    ):
        raise ValueError(f"invalid repository name {shorten(str(repository), 80)!r}")


def _check_digest(digest: str) -> None:
    if not is_digest(digest):
        raise ValueError(f"invalid digest {shorten(str(digest), 80)!r}")


def _check_page_size(page_size: int) -> None:
    if not 1 <= page_size <= 10_000:
        raise ValueError("page_size must be between 1 and 10000")


def _json(body: bytes, url: str, what: str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidResponse(f"{what} is not valid JSON", url=url, method="GET") from None


def _is_json_object(body: bytes) -> bool:
    try:
        return isinstance(json.loads(body), dict)
    except (ValueError, UnicodeDecodeError):
        return False


def _string_list(body: bytes, key: str, url: str) -> list[str]:
    """`body[key]` as a list of strings; `null` (an empty repository) is an empty list."""
    data = _json(body, url, f"{key} list")
    if not isinstance(data, dict):
        raise InvalidResponse(f"answer has no {key} list", url=url, method="GET")
    values = data.get(key)
    if values is None:
        return []
    if not isinstance(values, list):
        raise InvalidResponse(f"answer has no {key} list", url=url, method="GET")
    return [v for v in values if isinstance(v, str)]
