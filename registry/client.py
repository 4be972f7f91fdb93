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
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from registry import __version__
from registry.errors import (
    AuthenticationError,
    BlobNotFound,
    ContentTooComplex,
    ContentTooLarge,
    DeadlineExceeded,
    DigestMismatch,
    InvalidResponse,
    ManifestNotFound,
    NotFound,
    RateLimited,
    RegistryError,
    RegistryUnavailable,
    ServerError,
    TruncatedResponse,
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
    OCI_INDEX,
    SCHEMA1_MEDIA_TYPES,
    Descriptor,
    ParsedManifest,
    digest_of,
    is_digest,
    is_repository_name,
    is_tag,
    load_json,
    parse_manifest,
)

logger = logging.getLogger("registry")

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_JSON_BYTES = 64 * 1024 * 1024  # tags/list of distribution 2.8 is one unpaged document
MAX_ERROR_BYTES = 64 * 1024
DEFAULT_TOKEN_LIFETIME = 60.0
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# A Link chain whose pages bring nothing new this many times in a row goes nowhere.
MAX_IDLE_PAGES = 3
_READ_CHUNK = 64 * 1024
_TRANSPORT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)
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
        deadline: float = 60.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        max_retry_after: float = 30.0,
        max_pages: int = 1000,
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
        # Per-read timeouts alone let a trickled answer run forever: each request, its
        # retries and its body included, ends within `deadline` seconds.
        self.deadline = deadline
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        # A registry asking for a longer wait (429 Retry-After) gets an answer at once.
        self.max_retry_after = max_retry_after
        self.max_pages = max_pages
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
        # Whether the registry has the OCI referrers API: None until the first answer.
        self._referrers_api: bool | None = None
        self._tokens: dict[str, _Token] = {}
        self._tokens_lock = threading.Lock()
        self._scope_locks: dict[str, threading.Lock] = {}
        # Set when a request gave up on a registry that is down or failing (connections
        # refused, 502/503/504 after every retry): later requests try once, not with full
        # back-off each, until the registry answers again.
        self._failing = False

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
        """Every repository name of the catalog, page by page (`n`, then `Link` rel=next).

        Raises InvalidResponse when the pages loop or never end, rather than returning a
        partial catalog that would read as repositories gone."""
        _check_page_size(page_size)
        url = f"{self.base_url}/v2/_catalog?{urlencode({'n': page_size})}"
        try:
            yield from self._paged(url, "registry:catalog:*", "repositories", "the catalog")
        except NotFound as exc:
            raise UnsupportedOperation(
                "the registry does not offer the catalog API (GET /v2/_catalog)",
                status=exc.status,
                code=exc.code,
                url=exc.url,
                method="GET",
            ) from exc

    def list_tags(self, repository: str, page_size: int = 1000) -> list[str]:
        """All tags of `repository`, in the registry's order, following `Link` pages."""
        _check_name(repository)
        _check_page_size(page_size)
        url = f"{self.base_url}/v2/{repository}/tags/list?{urlencode({'n': page_size})}"
        pages = self._paged(url, _pull_scope(repository), "tags", f"the tags of {repository}")
        return list(pages)

    def first_tags_page(self, repository: str, page_size: int) -> tuple[list[str], bool]:
        """The first page of `repository`'s tags asked `page_size` at a time, and whether
        the registry announced a next page (`Link`): how a registry pages is seen here
        (distribution 2.8 ignores `n` and answers every tag at once)."""
        _check_name(repository)
        _check_page_size(page_size)
        url = f"{self.base_url}/v2/{repository}/tags/list?{urlencode({'n': page_size})}"
        response, body = self._call("GET", url, scope=_pull_scope(repository))
        return _string_list(body, "tags", url), self._next_page(response) is not None

    def _paged(self, url: str, scope: str, key: str, what: str) -> Iterator[str]:
        """The new strings of `key` on each page of a `Link` chain, each once.

        A registry or proxy that ignores `last` serves the first page again and again, and
        one that always announces a next page never stops: a chain that comes back to a
        page, brings nothing new MAX_IDLE_PAGES times in a row, or passes `max_pages` is an
        error, never a silently shortened list."""
        seen_urls = {url}
        seen: set[str] = set()
        idle = 0
        for page in range(1, self.max_pages + 1):
            response, body = self._call("GET", url, scope=scope)
            new = [value for value in _string_list(body, key, url) if value not in seen]
            seen.update(new)
            yield from new
            next_url = self._next_page(response)
            if next_url is None:
                return
            idle = 0 if new else idle + 1
            if next_url in seen_urls:
                raise InvalidResponse(
                    f"the pages of {what} loop: page {page} links back to an earlier page",
                    url=next_url,
                    method="GET",
                )
            if idle >= MAX_IDLE_PAGES:
                raise InvalidResponse(
                    f"the pages of {what} never end: {idle} pages in a row brought nothing "
                    "new, yet each links to another",
                    url=next_url,
                    method="GET",
                )
            seen_urls.add(next_url)
            url = next_url
        raise InvalidResponse(
            f"the pages of {what} never end: stopped after {self.max_pages} pages",
            url=url,
            method="GET",
        )

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
            # A 404 there (the tag was deleted between the two) answers this HEAD alike.
            try:
                fetched = self.get_manifest(repository, reference)
            except NotFound:
                return None
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

    def has_blob(self, repository: str, digest: str) -> bool:
        """Whether the registry still serves this blob through this repository (a HEAD).

        A deleted manifest's layers answer until the garbage collector removes them, so
        this is how to tell that the collector has run."""
        _check_name(repository)
        _check_digest(digest)
        url = f"{self.base_url}/v2/{repository}/blobs/{digest}"
        try:
            self._call("HEAD", url, scope=_pull_scope(repository))
        except NotFound:
            return False
        return True

    @property
    def may_have_referrers_api(self) -> bool:
        """False once the registry answered that it has no referrers API."""
        return self._referrers_api is not False

    def list_referrers(self, repository: str, digest: str) -> list[Descriptor] | None:
        """The manifests whose `subject` is `digest`, from the OCI referrers API (OCI
        distribution 1.1: Harbor, Zot, GHCR, distribution 3.x); None when the registry has
        no such API. Distribution 2.8 answers 404 there, which a registry that has the API
        must never do: after one 404 the client stops asking."""
        _check_name(repository)
        _check_digest(digest)
        if self._referrers_api is False:
            return None
        url = f"{self.base_url}/v2/{repository}/referrers/{digest}"
        try:
            _, body = self._call(
                "GET", url, scope=_pull_scope(repository), headers={"Accept": OCI_INDEX}
            )
        except (NotFound, UnsupportedOperation):
            self._referrers_api = False
            return None
        self._referrers_api = True
        try:
            return parse_manifest(body, OCI_INDEX).manifests
        except RegistryError as exc:
            exc.url, exc.method = redact_url(url), "GET"
            raise

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

    def put_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        """Store `body` as a manifest of `repository`, by digest or by tag (which tags it),
        and return the digest the registry answered (`Docker-Content-Digest`).

        The content decides the digest: an answer naming another one (a registry that
        rewrote the bytes, a proxy in between) raises DigestMismatch, as does a digest
        reference the bytes do not hash to, which is never sent. A registry that answers
        without the header is asked with a HEAD by the bytes' digest. PUT is idempotent
        (the same bytes, the same digest), so it is retried like a read."""
        url = self._manifest_url(repository, reference)
        algorithm = reference.split(":", 1)[0] if is_digest(reference) else "sha256"
        expected = digest_of(body, algorithm)
        if is_digest(reference) and reference != expected:
            raise DigestMismatch(
                f"the manifest's bytes hash to {expected}, not {reference}",
                url=url,
                method="PUT",
            )
        response, _ = self._call(
            "PUT",
            url,
            scope=f"repository:{repository}:pull,push",
            headers={"Content-Type": media_type},
            data=body,
        )
        answered = response.headers.get("Docker-Content-Digest", "").strip()
        if not answered:
            head = self.head_manifest(repository, expected)
            answered = head.digest if head is not None else ""
        if answered != expected:
            raise DigestMismatch(
                f"the registry stored {answered or 'nothing it names'}, not {expected}",
                url=url,
                method="PUT",
            )
        return answered

    def delete_tag(self, repository: str, tag: str) -> bool:
        """Delete a tag, leaving its manifest (OCI distribution 1.1, distribution 3.x):
        True when deleted now, False when the registry no longer had it. Distribution 2.8
        answers 400 DIGEST_INVALID, raised as UnsupportedOperation."""
        _check_name(repository)
        if not is_tag(tag):
            raise ValueError(f"invalid tag {shorten(str(tag), 80)!r}")
        url = f"{self.base_url}/v2/{repository}/manifests/{tag}"
        try:
            self._call("DELETE", url, scope=f"repository:{repository}:delete")
        except NotFound:
            return False
        except RegistryError as exc:
            if exc.status == 400 and exc.code == "DIGEST_INVALID":
                raise UnsupportedOperation(
                    "the registry cannot delete a tag alone (distribution 2.8 deletes by "
                    "digest only)",
                    status=exc.status,
                    code=exc.code,
                    url=url,
                    method="DELETE",
                ) from None
            raise
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
        data: bytes | None = None,
    ) -> tuple[requests.Response, bytes]:
        """Send with retries and auth; the 2xx response and its body, or a RegistryError.

        `scope` None sends `authorization` as given and never answers a challenge (token
        server requests); otherwise the cached Basic or Bearer credentials for `scope` go
        along and one 401 challenge is answered. Everything, retries included, ends within
        `deadline` seconds.
        """
        deadline = self._clock() + self.deadline
        retries = 0 if self._failing else self.max_retries
        attempt = 0
        challenge_answered = False
        while True:
            sent = authorization if scope is None else self._authorization(scope)
            request_headers = {"User-Agent": self.user_agent, **(headers or {})}
            if sent:
                request_headers["Authorization"] = sent
            try:
                response = self._session.request(
                    method,
                    url,
                    headers=request_headers,
                    data=data,
                    timeout=self._timeouts(deadline, method, url),
                    stream=True,
                )
            except _TRANSPORT_ERRORS as exc:
                self._give_up_or_wait(exc, method, url, attempt, retries, deadline)
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
                if status in RETRY_STATUSES and attempt < retries:
                    delay = self._retry_delay(response, attempt)
                    if delay is not None and self._clock() + delay < deadline:
                        self._sleep(delay)
                        attempt += 1
                        continue
                if 200 <= status < 300:
                    try:
                        body = self._read_body(response, max_bytes, method, deadline)
                    except (_BodyCutShort, _BodyStalled) as exc:
                        self._give_up_or_wait(exc, method, url, attempt, retries, deadline)
                        attempt += 1
                        continue
                    self._failing = False
                    return response, body
                error = self._error(response, method, deadline)
                self._failing = status in RETRY_STATUSES and status != 429
                raise error

    def _timeouts(self, deadline: float, method: str, url: str) -> tuple[float, float]:
        """The connect and per-read timeouts, never past the deadline."""
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise self._out_of_time(method, url)
        return min(self.timeout[0], remaining), min(self.timeout[1], remaining)

    def _out_of_time(self, method: str, url: str) -> DeadlineExceeded:
        host = urlsplit(url).netloc.rpartition("@")[2]
        return DeadlineExceeded(
            f"{host} did not complete the request within {self.deadline:g} s "
            "(a total deadline, retries and slow answers included)",
            url=url,
            method=method,
        )

    def _give_up_or_wait(
        self, exc: Exception, method: str, url: str, attempt: int, retries: int, deadline: float
    ) -> None:
        """Sleep before the next attempt, or raise what the last one says about the registry."""
        host = urlsplit(url).netloc.rpartition("@")[2]
        if isinstance(exc, requests.exceptions.SSLError):
            raise RegistryUnavailable(
                f"TLS failed with {host}: {shorten(str(exc), 200)}", url=url, retryable=False
            ) from None
        delay = self._backoff_delay(attempt)
        if attempt < retries and self._clock() + delay < deadline:
            logger.debug("retrying %s after %s", redact_url(url), type(exc).__name__)
            self._sleep(delay)
            return
        attempts = f"{attempt + 1} attempt{'s' if attempt else ''}"
        if self._clock() >= deadline - 0.05:
            raise self._out_of_time(method, url) from None
        if isinstance(exc, _BodyCutShort | _BodyStalled):
            # The registry answered: "cannot reach" would send people after the network.
            what = "was cut short" if isinstance(exc, _BodyCutShort) else "stopped coming"
            raise TruncatedResponse(
                f"{host} answered, but the body {what}: {exc} ({attempts})",
                url=url,
                method=method,
            ) from None
        self._failing = True
        kind = "timed out" if isinstance(exc, requests.Timeout) else "connection failed"
        raise RegistryUnavailable(
            f"cannot reach {host} ({kind} after {attempts})", url=url
        ) from None

    def _backoff_delay(self, attempt: int) -> float:
        delay = min(self.max_backoff, self.backoff * 2**attempt)
        return min(self.max_backoff, delay + random.uniform(0, self.backoff / 4))

    def _retry_delay(self, response: requests.Response, attempt: int) -> float | None:
        """How long to wait before trying again; None when the registry asks for longer
        than `max_retry_after` (the request fails at once, saying when to come back)."""
        retry_after = _parse_retry_after(response.headers.get("Retry-After"))
        if retry_after is None:
            return self._backoff_delay(attempt)
        return retry_after if retry_after <= self.max_retry_after else None

    def _read_body(
        self, response: requests.Response, max_bytes: int, method: str, deadline: float
    ) -> bytes:
        """The body, at most `max_bytes` (announced or actual), read by the deadline.

        Each read waits at most until the deadline, so a body trickled a byte at a time
        ends with it; a body shorter than announced raises _BodyCutShort. A body read to
        its end gives its connection back to the pool for the next request."""
        if method == "HEAD":
            response.raw.release_conn()
            return b""
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > max_bytes:
            raise ContentTooLarge(
                f"content of {int(length)} bytes is over the {max_bytes}-byte limit",
                url=response.url,
                method=method,
            )
        chunks, total = [], 0
        while True:
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise _BodyStalled(f"{total} bytes read by the deadline")
            _limit_read_wait(response, min(self.timeout[1], remaining))
            try:
                chunk = response.raw.read1(_READ_CHUNK, decode_content=True)
            except (TimeoutError, urllib3.exceptions.ReadTimeoutError):
                raise _BodyStalled(f"nothing more after {total} bytes") from None
            except (urllib3.exceptions.ProtocolError, OSError) as exc:
                expected = f" of {int(length)}" if length.isdigit() else ""
                raise _BodyCutShort(f"{total}{expected} bytes received") from exc
            except urllib3.exceptions.DecodeError:
                raise InvalidResponse(
                    "the body does not decode as its Content-Encoding says",
                    url=response.url,
                    method=method,
                ) from None
            if not chunk:
                response.raw.release_conn()
                return b"".join(chunks)
            total += len(chunk)
            if total > max_bytes:
                raise ContentTooLarge(
                    f"content is over the {max_bytes}-byte limit", url=response.url, method=method
                )
            chunks.append(chunk)

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
        if basic and not self._may_receive_credentials(realm):
            raise AuthenticationError(
                f"the registry sends us for a token to {urlsplit(realm).netloc} over plain "
                "http: the registry credentials go only to a token server on the registry's "
                f"own host ({urlsplit(self.base_url).hostname}) or over https, so none were "
                "sent; serve the token realm over https (or check REGISTRY_URL)",
                url=realm,
                method="GET",
            )
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

    def _may_receive_credentials(self, realm: str) -> bool:
        """A realm may get the Basic credentials over https, or on the registry's own host
        (a registry and its token server behind one plain-http address, as on a laptop).
        Anywhere else a challenge could send them in clear text to whoever it names."""
        parts = urlsplit(realm)
        return parts.scheme == "https" or parts.hostname == urlsplit(self.base_url).hostname

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

    def _error(self, response: requests.Response, method: str, deadline: float) -> RegistryError:
        status = response.status_code
        try:
            body = self._read_body(response, MAX_ERROR_BYTES, method, deadline)
        except (RegistryError, _BodyCutShort, _BodyStalled):
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
            if retry_after is not None:
                message += f"; {_when_to_retry(retry_after)}"
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
        if not (is_digest(reference) or is_tag(reference)):
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


class _BodyCutShort(Exception):
    """The body ended before its announced length, or the connection broke mid-body."""


class _BodyStalled(Exception):
    """No more of the body came within the read timeout or the deadline."""


def _limit_read_wait(response: requests.Response, seconds: float) -> None:
    """Make the next read on the response's socket wait at most `seconds`.

    requests applies its read timeout to each read: a body trickled a byte per second
    never trips it, so the remaining time before the deadline is set before each read.
    (Responses not backed by a socket, as in tests' stubs, have nothing to set.)"""
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        sock.settimeout(max(seconds, 0.001))


def _when_to_retry(seconds: float) -> str:
    """How long the registry asks to wait, and until when (UTC), for people."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        wait = f"{hours} h {minutes} min"
    elif minutes:
        wait = f"{minutes} min {secs} s"
    else:
        wait = f"{secs} s"
    when = datetime.now(UTC) + timedelta(seconds=seconds)
    return f"the registry asks to wait {wait}: try again after {when:%Y-%m-%d %H:%M} UTC"


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
    if not is_repository_name(repository):
        raise ValueError(f"invalid repository name {shorten(str(repository), 80)!r}")


def _check_digest(digest: str) -> None:
    if not is_digest(digest):
        raise ValueError(f"invalid digest {shorten(str(digest), 80)!r}")


def _check_page_size(page_size: int) -> None:
    if not 1 <= page_size <= 10_000:
        raise ValueError("page_size must be between 1 and 10000")


def _json(body: bytes, url: str, what: str) -> Any:
    try:
        return load_json(body, what)
    except ContentTooComplex as exc:
        exc.url, exc.method = redact_url(url), "GET"
        raise
    except ValueError:
        raise InvalidResponse(f"{what} is not valid JSON", url=url, method="GET") from None


def _is_json_object(body: bytes) -> bool:
    try:
        return isinstance(json.loads(body), dict)
    except (ValueError, RecursionError):
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
