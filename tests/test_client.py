"""The registry client against stubbed HTTP: what a real local registry cannot produce."""

import base64
import json
import socket
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses

from registry import __version__
from registry.client import RegistryClient, parse_www_authenticate
from registry.errors import (
    AuthenticationError,
    BlobNotFound,
    ContentTooLarge,
    DigestMismatch,
    InvalidResponse,
    MalformedManifest,
    ManifestNotFound,
    NotFound,
    RateLimited,
    RegistryError,
    RegistryUnavailable,
    ServerError,
    UnsupportedManifest,
    UnsupportedOperation,
)
from registry.media import (
    DOCKER_SCHEMA1_SIGNED,
    MANIFEST_ACCEPT,
    OCI_IMAGE_CONFIG,
    OCI_MANIFEST,
    digest_of,
)

BASE = "https://registry.test"
AUTH = "https://auth.test/token"
USER_AGENT = f"hubimages/{__version__}"
SECRET = "s3cr3t-p4ss"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_IMAGE_CONFIG, "digest": "sha256:" + "a" * 64, "size": 9},
        "layers": [{"mediaType": LAYER, "digest": "sha256:" + "b" * 64, "size": 99}],
    }
).encode()
MANIFEST_DIGEST = digest_of(MANIFEST)
OTHER_DIGEST = "sha256:" + "f" * 64


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def rsps():
    with responses.RequestsMock() as mock:
        yield mock


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def make_client(sleeps, clock):
    clients = []

    def make(**kwargs) -> RegistryClient:
        kwargs.setdefault("sleep", sleeps.append)
        kwargs.setdefault("clock", clock)
        client = RegistryClient(kwargs.pop("base_url", BASE), **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client):
    return make_client()


def bearer_challenge(scope: str | None) -> dict[str, str]:
    value = f'Bearer realm="{AUTH}",service="registry.test"'
    if scope:
        value += f',scope="{scope}"'
    return {"WWW-Authenticate": value}


def oci_error(code: str, message: str) -> dict:
    return {"errors": [{"code": code, "message": message, "detail": None}]}


def query(call) -> dict[str, list[str]]:
    return parse_qs(urlsplit(call.request.url).query)


def add_manifest(rsps, reference: str, body: bytes = MANIFEST, **headers) -> None:
    headers.setdefault("Docker-Content-Digest", digest_of(body))
    rsps.get(
        f"{BASE}/v2/team/api/manifests/{reference}",
        body=body,
        content_type=headers.pop("content_type", OCI_MANIFEST),
        headers=headers,
    )


# -- construction ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "normalized"),
    [
        ("https://registry.test/", "https://registry.test"),
        ("http://Registry.test:5000/v2/", "http://registry.test:5000"),
        ("https://registry.test/prefix", "https://registry.test/prefix"),
    ],
)
def test_it_normalizes_the_base_url(make_client, given, normalized):
    assert make_client(base_url=given).base_url == normalized


@pytest.mark.parametrize("url", ["registry.test", "ftp://registry.test", "https://"])
def test_it_refuses_base_urls_that_are_not_http(url):
    with pytest.raises(ValueError):
        RegistryClient(url)


def test_it_refuses_credentials_in_the_base_url_without_repeating_them():
    with pytest.raises(ValueError) as caught:
        RegistryClient(f"https://bob:{SECRET}@registry.test")
    assert SECRET not in str(caught.value)


def test_its_repr_holds_no_credentials(make_client):
    assert SECRET not in repr(make_client(username="bob", password=SECRET))


@pytest.mark.parametrize(
    ("repository", "reference"),
    [
        ("team/../admin", "latest"),
        ("Team/api", "latest"),
        ("team/api", "../../_catalog"),
        ("team/api", "sha256:abc"),
        ("team/api?x=1", "latest"),
        ("team//api", "latest"),
        ("team/api", "-latest"),
    ],
)
def test_it_refuses_names_and_references_outside_the_oci_grammar(client, repository, reference):
    with pytest.raises(ValueError):
        client.get_manifest(repository, reference)


def test_it_parses_www_authenticate_challenges():
    header = (
        'Bearer realm="https://auth.test/token",service="reg",'
        'scope="repository:a/b:pull,push repository:c:pull"'
    )

    assert parse_www_authenticate(header) == {
        "bearer": {
            "realm": "https://auth.test/token",
            "service": "reg",
            "scope": "repository:a/b:pull,push repository:c:pull",
        }
    }
    assert parse_www_authenticate('Basic realm="Registry Realm"') == {
        "basic": {"realm": "Registry Realm"}
    }


# -- paging ----------------------------------------------------------------------------------


def test_it_follows_catalog_link_header_relative_and_absolute(rsps, client):
    rsps.get(
        f"{BASE}/v2/_catalog?n=2",
        json={"repositories": ["a", "b"]},
        headers={"Link": '</v2/_catalog?last=b&n=2>; rel="next"'},
        match=[responses.matchers.query_param_matcher({"n": "2"})],
    )
    rsps.get(
        f"{BASE}/v2/_catalog",
        json={"repositories": ["c", "team/d"]},
        headers={"Link": f'<{BASE}/v2/_catalog?last=team%2Fd&n=2>; rel="next"'},
        match=[responses.matchers.query_param_matcher({"n": "2", "last": "b"})],
    )
    rsps.get(
        f"{BASE}/v2/_catalog",
        json={"repositories": ["e"]},
        match=[responses.matchers.query_param_matcher({"n": "2", "last": "team/d"})],
    )

    assert list(client.iter_repositories(page_size=2)) == ["a", "b", "c", "team/d", "e"]
    assert len(rsps.calls) == 3


def test_it_rebases_catalog_links_that_name_an_internal_host(rsps, client):
    rsps.get(
        f"{BASE}/v2/_catalog",
        json={"repositories": ["a"]},
        headers={"Link": '<http://internal:5000/v2/_catalog?last=a&n=1>; rel="next"'},
        match=[responses.matchers.query_param_matcher({"n": "1"})],
    )
    rsps.get(
        f"{BASE}/v2/_catalog",
        json={"repositories": None},
        match=[responses.matchers.query_param_matcher({"n": "1", "last": "a"})],
    )

    assert list(client.iter_repositories(page_size=1)) == ["a"]


def test_it_reports_a_registry_without_catalog_as_unsupported(rsps, client):
    rsps.get(f"{BASE}/v2/_catalog", status=404, json=oci_error("UNSUPPORTED", "nope"))

    with pytest.raises(UnsupportedOperation, match="catalog"):
        list(client.iter_repositories())


def test_it_pages_tags_with_n_last_and_link(rsps, client):
    rsps.get(
        f"{BASE}/v2/team/api/tags/list",
        json={"name": "team/api", "tags": ["1.0", "1.1"]},
        headers={"Link": '</v2/team/api/tags/list?n=2&last=1.1>; rel="next"'},
        match=[responses.matchers.query_param_matcher({"n": "2"})],
    )
    rsps.get(
        f"{BASE}/v2/team/api/tags/list",
        json={"name": "team/api", "tags": ["latest"]},
        match=[responses.matchers.query_param_matcher({"n": "2", "last": "1.1"})],
    )

    assert client.list_tags("team/api", page_size=2) == ["1.0", "1.1", "latest"]


def test_a_link_chain_that_comes_back_to_a_page_is_an_error_not_a_short_list(rsps, client):
    first = '</v2/_catalog?last=b&n=2>; rel="next"'
    rsps.get(f"{BASE}/v2/_catalog", json={"repositories": ["a", "b"]}, headers={"Link": first})

    with pytest.raises(InvalidResponse, match="the pages of the catalog loop"):
        list(client.iter_repositories(page_size=2))


def test_once_the_registry_is_down_later_requests_try_once_until_it_answers(rsps, client, sleeps):
    url = f"{BASE}/v2/team/api/tags/list"
    rsps.get(url, body=requests.ConnectionError("connection refused"))
    with pytest.raises(RegistryUnavailable, match="after 5 attempts"):
        client.list_tags("team/api")
    sleeps.clear()

    with pytest.raises(RegistryUnavailable, match="after 1 attempt\\)"):
        client.list_tags("team/api")
    assert sleeps == []

    rsps.replace(responses.GET, url, json={"tags": ["v1"]})
    assert client.list_tags("team/api") == ["v1"]
    rsps.replace(responses.GET, url, body=requests.ConnectionError("connection refused"))
    with pytest.raises(RegistryUnavailable, match="after 5 attempts"):
        client.list_tags("team/api")


def test_error_bodies_nested_too_deep_still_give_a_registry_error(rsps, client):
    rsps.get(f"{BASE}/v2/team/api/tags/list", status=400, body=b"[" * 60_000)

    with pytest.raises(RegistryError, match="400"):
        client.list_tags("team/api")


def test_it_reads_null_tags_as_no_tags(rsps, client):
    rsps.get(f"{BASE}/v2/team/api/tags/list", json={"name": "team/api", "tags": None})

    assert client.list_tags("team/api") == []


def test_it_raises_not_found_for_tags_of_an_unknown_repository(rsps, client):
    rsps.get(
        f"{BASE}/v2/team/gone/tags/list",
        status=404,
        json=oci_error("NAME_UNKNOWN", "repository name not known to registry"),
    )

    with pytest.raises(NotFound) as caught:
        client.list_tags("team/gone")
    assert caught.value.code == "NAME_UNKNOWN"
    assert str(caught.value) == (
        "registry answered 404 NAME_UNKNOWN for GET /v2/team/gone/tags/list?n=1000: "
        "repository name not known to registry"
    )


def test_it_refuses_a_tag_list_that_is_not_json(rsps, client):
    rsps.get(f"{BASE}/v2/team/api/tags/list", body="<html>proxy error</html>")

    with pytest.raises(InvalidResponse, match="not valid JSON"):
        client.list_tags("team/api")


# -- authentication --------------------------------------------------------------------------


def test_it_sends_basic_credentials_when_the_registry_challenges_basic(rsps, make_client):
    client = make_client(username="bob", password=SECRET)
    expected = "Basic " + base64.b64encode(f"bob:{SECRET}".encode()).decode()
    url = f"{BASE}/v2/team/api/tags/list"
    rsps.get(url, status=401, headers={"WWW-Authenticate": 'Basic realm="Registry"'})
    rsps.get(url, json={"tags": ["a"]})
    rsps.get(url, json={"tags": ["b"]})

    assert client.list_tags("team/api") == ["a"]
    assert client.list_tags("team/api") == ["b"]

    assert "Authorization" not in rsps.calls[0].request.headers
    assert rsps.calls[1].request.headers["Authorization"] == expected
    assert rsps.calls[2].request.headers["Authorization"] == expected
    assert len(rsps.calls) == 3


def test_it_raises_authentication_error_when_basic_credentials_are_refused(rsps, make_client):
    client = make_client(username="bob", password=SECRET)
    challenge = {"WWW-Authenticate": 'Basic realm="Registry"'}
    rsps.get(f"{BASE}/v2/", status=401, headers=challenge)
    rsps.get(f"{BASE}/v2/", status=401, headers=challenge, json=oci_error("UNAUTHORIZED", "bad"))

    with pytest.raises(AuthenticationError) as caught:
        client.ping()
    assert caught.value.status == 401
    assert SECRET not in str(caught.value) and SECRET not in repr(caught.value)


def test_it_says_when_a_registry_wants_credentials_and_none_are_configured(rsps, client):
    rsps.get(f"{BASE}/v2/", status=401, headers={"WWW-Authenticate": 'Basic realm="R"'})

    with pytest.raises(AuthenticationError, match="no credentials configured"):
        client.ping()


def test_it_fetches_a_bearer_token_once_and_caches_it_per_repository(rsps, make_client):
    client = make_client(username="bob", password=SECRET)
    for repository in ("team/api", "team/web"):
        url = f"{BASE}/v2/{repository}/tags/list"
        rsps.get(url, status=401, headers=bearer_challenge(f"repository:{repository}:pull"))
        rsps.get(url, json={"tags": ["latest"]}, match=[bearer("token-" + repository)])
    rsps.get(
        AUTH,
        json={"token": "token-team/api", "expires_in": 300},
        match=[
            responses.matchers.query_param_matcher(
                {"scope": "repository:team/api:pull"}, strict_match=False
            )
        ],
    )
    rsps.get(
        AUTH,
        json={"access_token": "token-team/web"},
        match=[
            responses.matchers.query_param_matcher(
                {"scope": "repository:team/web:pull"}, strict_match=False
            )
        ],
    )

    for _ in range(3):
        assert client.list_tags("team/api") == ["latest"]
    assert client.list_tags("team/web") == ["latest"]

    token_calls = [c for c in rsps.calls if c.request.url.startswith(AUTH)]
    assert [query(c) for c in token_calls] == [
        {"service": ["registry.test"], "scope": ["repository:team/api:pull"]},
        {"service": ["registry.test"], "scope": ["repository:team/web:pull"]},
    ]
    expected_basic = "Basic " + base64.b64encode(f"bob:{SECRET}".encode()).decode()
    assert all(c.request.headers["Authorization"] == expected_basic for c in token_calls)
    assert len(rsps.calls) == 2 + 3 + 2 + 1  # two challenges, four tag lists, two tokens


def bearer(token: str):
    return responses.matchers.header_matcher({"Authorization": f"Bearer {token}"})


def test_it_fetches_tokens_anonymously_without_credentials(rsps, client):
    url = f"{BASE}/v2/library/alpine/manifests/latest"
    rsps.head(url, status=401, headers=bearer_challenge("repository:library/alpine:pull"))
    rsps.get(AUTH, json={"token": "anon"})
    rsps.head(
        url,
        headers={"Docker-Content-Digest": MANIFEST_DIGEST, "Content-Length": "528"},
        content_type=OCI_MANIFEST,
        match=[bearer("anon")],
    )

    head = client.head_manifest("library/alpine", "latest")

    assert head is not None and head.digest == MANIFEST_DIGEST and head.size == 528
    assert "Authorization" not in rsps.calls[1].request.headers


def test_it_fetches_a_new_token_when_the_cached_one_expires(rsps, make_client, clock):
    client = make_client()
    url = f"{BASE}/v2/team/api/tags/list"
    rsps.get(url, status=401, headers=bearer_challenge("repository:team/api:pull"))
    rsps.get(AUTH, json={"token": "first", "expires_in": 60})
    rsps.get(url, json={"tags": ["a"]}, match=[bearer("first")])
    rsps.get(AUTH, json={"token": "second", "expires_in": 60})
    rsps.get(url, json={"tags": ["b"]}, match=[bearer("second")])

    assert client.list_tags("team/api") == ["a"]
    clock.now += 45
    assert client.list_tags("team/api") == ["a"]
    clock.now += 10  # within the safety margin of the 60 s lifetime
    rsps.get(url, status=401, headers=bearer_challenge("repository:team/api:pull"))

    assert client.list_tags("team/api") == ["b"]
    assert len([c for c in rsps.calls if c.request.url.startswith(AUTH)]) == 2


def test_it_uses_the_challenge_scope_for_deletes(rsps, client):
    url = f"{BASE}/v2/team/api/manifests/{MANIFEST_DIGEST}"
    rsps.delete(url, status=401, headers=bearer_challenge("repository:team/api:delete"))
    rsps.get(AUTH, json={"token": "del"})
    rsps.delete(url, status=202, match=[bearer("del")])

    assert client.delete_manifest("team/api", MANIFEST_DIGEST) is True
    assert query(rsps.calls[1])["scope"] == ["repository:team/api:delete"]


def test_it_asks_for_a_delete_scope_when_the_challenge_names_none(rsps, client):
    url = f"{BASE}/v2/team/api/manifests/{MANIFEST_DIGEST}"
    rsps.delete(url, status=401, headers=bearer_challenge(None))
    rsps.get(AUTH, json={"token": "del"})
    rsps.delete(url, status=202, match=[bearer("del")])

    client.delete_manifest("team/api", MANIFEST_DIGEST)

    assert query(rsps.calls[1])["scope"] == ["repository:team/api:delete"]


def test_it_raises_authentication_error_when_the_token_server_refuses(rsps, make_client):
    client = make_client(username="bob", password=SECRET)
    rsps.get(f"{BASE}/v2/team/api/tags/list", status=401, headers=bearer_challenge(None))
    rsps.get(AUTH, status=401, json={"details": f"bad password {SECRET}"})

    with pytest.raises(AuthenticationError) as caught:
        client.list_tags("team/api")

    error = caught.value
    assert "token server refused the credentials" in str(error)
    for text in (str(error), repr(error), error.url or ""):
        assert SECRET not in text
        assert "bob" not in text


def test_it_raises_authentication_error_when_a_fresh_token_is_refused(rsps, client):
    url = f"{BASE}/v2/team/api/tags/list"
    rsps.get(url, status=401, headers=bearer_challenge("repository:team/api:pull"))
    rsps.get(AUTH, json={"token": "weak"})
    rsps.get(url, status=401, headers=bearer_challenge("repository:team/api:pull"))

    with pytest.raises(AuthenticationError) as caught:
        client.list_tags("team/api")
    assert "weak" not in str(caught.value) and "weak" not in repr(caught.value)
    assert len(rsps.calls) == 3


def test_it_raises_authentication_error_on_403(rsps, make_client):
    client = make_client(username="bob", password=SECRET)
    rsps.delete(
        f"{BASE}/v2/team/api/manifests/{MANIFEST_DIGEST}",
        status=403,
        json=oci_error("DENIED", "requested access to the resource is denied"),
    )

    with pytest.raises(AuthenticationError, match="403 DENIED"):
        client.delete_manifest("team/api", MANIFEST_DIGEST)


def test_it_sends_its_user_agent_on_every_request_including_token_requests(rsps, client):
    url = f"{BASE}/v2/team/api/manifests/latest"
    rsps.get(url, status=401, headers=bearer_challenge("repository:team/api:pull"))
    rsps.get(AUTH, json={"token": "t"})
    add_manifest(rsps, "latest")
    rsps.get(f"{BASE}/v2/team/api/blobs/{MANIFEST_DIGEST}", body=MANIFEST)
    rsps.get(f"{BASE}/v2/team/api/tags/list", json={"tags": []})

    client.get_manifest("team/api", "latest")
    client.get_blob("team/api", MANIFEST_DIGEST)
    client.list_tags("team/api")

    assert len(rsps.calls) == 5
    assert {c.request.headers["User-Agent"] for c in rsps.calls} == {USER_AGENT}


# -- retries ---------------------------------------------------------------------------------


def test_it_honours_retry_after_on_429_then_succeeds(rsps, client, sleeps):
    url = f"{BASE}/v2/team/api/tags/list"
    rsps.get(url, status=429, headers={"Retry-After": "7"})
    rsps.get(url, json={"tags": ["latest"]})

    assert client.list_tags("team/api") == ["latest"]
    assert sleeps == [7.0]


def test_a_retry_after_beyond_the_cap_fails_at_once_saying_when_to_retry(rsps, make_client, sleeps):
    client = make_client(max_retry_after=30.0)
    url = f"{BASE}/v2/team/api/tags/list"
    rsps.get(url, status=429, headers={"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"})

    with pytest.raises(RateLimited) as caught:
        client.list_tags("team/api")

    assert sleeps == [] and len(rsps.calls) == 1
    assert caught.value.retry_after > 30
    assert "try again after 2099-10-21 07:28 UTC" in str(caught.value)


def test_it_raises_rate_limited_when_429_persists(rsps, make_client, sleeps):
    client = make_client(max_retries=2)
    rsps.get(f"{BASE}/v2/team/api/tags/list", status=429, headers={"Retry-After": "1"})

    with pytest.raises(RateLimited) as caught:
        client.list_tags("team/api")
    assert caught.value.retryable and caught.value.retry_after == 1.0
    assert sleeps == [1.0, 1.0]


def test_it_gives_up_after_a_503_storm_with_a_retryable_server_error(rsps, make_client, sleeps):
    client = make_client(max_retries=4, backoff=0.5, max_backoff=30.0)
    rsps.get(f"{BASE}/v2/team/api/tags/list", status=503, body="Service Unavailable")

    with pytest.raises(ServerError) as caught:
        client.list_tags("team/api")

    assert caught.value.retryable
    assert caught.value.status == 503
    assert len(rsps.calls) == 5
    assert len(sleeps) == 4
    for attempt, delay in enumerate(sleeps):  # exponential, plus a little jitter
        assert 0.5 * 2**attempt <= delay <= 0.5 * 2**attempt + 0.125


def test_it_does_not_retry_a_500(rsps, client, sleeps):
    rsps.get(
        f"{BASE}/v2/team/api/tags/list",
        status=500,
        json=oci_error("UNKNOWN", "unknown error"),
    )

    with pytest.raises(ServerError) as caught:
        client.list_tags("team/api")

    assert not caught.value.retryable
    assert len(rsps.calls) == 1 and sleeps == []


def test_it_does_not_retry_other_4xx(rsps, client, sleeps):
    rsps.get(f"{BASE}/v2/team/api/tags/list", status=400, json=oci_error("X", "bad request"))

    with pytest.raises(RegistryError, match="400 X"):
        client.list_tags("team/api")
    assert len(rsps.calls) == 1 and sleeps == []


def test_it_retries_connection_errors_then_succeeds(rsps, client, sleeps):
    url = f"{BASE}/v2/team/api/tags/list"
    rsps.get(url, body=requests.ConnectionError("connection refused"))
    rsps.get(url, json={"tags": ["x"]})

    assert client.list_tags("team/api") == ["x"]
    assert len(sleeps) == 1


def test_it_raises_registry_unavailable_when_connections_keep_failing(rsps, client, sleeps):
    rsps.get(f"{BASE}/v2/", body=requests.ConnectionError("connection refused"))

    with pytest.raises(RegistryUnavailable) as caught:
        client.ping()

    assert caught.value.retryable
    assert "cannot reach registry.test" in str(caught.value)
    assert len(sleeps) == 4


def test_it_raises_registry_unavailable_for_a_closed_local_port(make_client):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = make_client(base_url=f"http://127.0.0.1:{port}", max_retries=1)

    with pytest.raises(RegistryUnavailable, match="connection failed after 2 attempts"):
        client.ping()


# -- manifests -------------------------------------------------------------------------------


def test_it_fetches_a_manifest_by_tag_and_verifies_the_announced_digest(rsps, client):
    add_manifest(rsps, "latest")

    fetched = client.get_manifest("team/api", "latest")

    assert fetched.digest == MANIFEST_DIGEST
    assert fetched.media_type == OCI_MANIFEST
    assert fetched.size == len(MANIFEST)
    assert fetched.parsed.layers[0].size == 99
    accept = rsps.calls[0].request.headers["Accept"]
    assert accept.startswith(MANIFEST_ACCEPT) and DOCKER_SCHEMA1_SIGNED in accept


def test_it_computes_the_digest_when_a_tag_answer_lacks_the_header(rsps, client):
    rsps.get(f"{BASE}/v2/team/api/manifests/latest", body=MANIFEST, content_type=OCI_MANIFEST)

    assert client.get_manifest("team/api", "latest").digest == MANIFEST_DIGEST


def test_it_raises_manifest_not_found_on_404(rsps, client):
    rsps.get(
        f"{BASE}/v2/team/api/manifests/{OTHER_DIGEST}",
        status=404,
        json=oci_error("MANIFEST_UNKNOWN", "manifest unknown"),
    )

    with pytest.raises(ManifestNotFound) as caught:
        client.get_manifest("team/api", OTHER_DIGEST)
    assert str(caught.value) == (
        f"registry answered 404 MANIFEST_UNKNOWN for GET /v2/team/api/manifests/{OTHER_DIGEST}: "
        "manifest unknown"
    )


def test_it_refuses_malformed_manifest_json(rsps, client):
    add_manifest(rsps, "latest", body=b'{"schemaVersion": 2, "config": ')

    with pytest.raises(MalformedManifest, match="not valid JSON") as caught:
        client.get_manifest("team/api", "latest")
    assert "GET /v2/team/api/manifests/latest" in str(caught.value)


def test_it_reports_schema_1_manifests_as_unsupported(rsps, client):
    schema1 = json.dumps({"schemaVersion": 1, "name": "team/api", "signatures": []}).encode()
    add_manifest(
        rsps,
        "old",
        body=schema1,
        content_type=DOCKER_SCHEMA1_SIGNED,
        **{"Docker-Content-Digest": OTHER_DIGEST},
    )

    with pytest.raises(UnsupportedManifest, match="schema 1 manifests are not supported"):
        client.get_manifest("team/api", "old")


def test_it_refuses_a_manifest_that_does_not_hash_to_the_requested_digest(rsps, client):
    add_manifest(rsps, OTHER_DIGEST, **{"Docker-Content-Digest": OTHER_DIGEST})

    with pytest.raises(DigestMismatch, match=OTHER_DIGEST):
        client.get_manifest("team/api", OTHER_DIGEST)


def test_it_refuses_a_manifest_that_does_not_hash_to_docker_content_digest(rsps, client):
    add_manifest(rsps, "latest", **{"Docker-Content-Digest": OTHER_DIGEST})

    with pytest.raises(DigestMismatch) as caught:
        client.get_manifest("team/api", "latest")
    assert not caught.value.retryable


def test_it_refuses_a_manifest_announced_over_4_mib(rsps, client):
    add_manifest(rsps, "big", **{"Content-Length": str(4 * 1024 * 1024 + 1)})

    with pytest.raises(ContentTooLarge, match="over the 4194304-byte limit"):
        client.get_manifest("team/api", "big")


def test_it_stops_reading_a_manifest_streamed_over_4_mib(rsps, client):
    huge = b" " * (4 * 1024 * 1024 + 1)
    add_manifest(rsps, "big", body=huge)

    with pytest.raises(ContentTooLarge):
        client.get_manifest("team/api", "big")


def test_head_manifest_returns_none_when_the_manifest_is_gone(rsps, client):
    rsps.head(f"{BASE}/v2/team/api/manifests/{OTHER_DIGEST}", status=404)

    assert client.head_manifest("team/api", OTHER_DIGEST) is None


def test_head_manifest_reads_digest_type_and_size_from_headers(rsps, client):
    rsps.head(
        f"{BASE}/v2/team/api/manifests/v1",
        headers={"Docker-Content-Digest": MANIFEST_DIGEST, "Content-Length": "528"},
        content_type=f"{OCI_MANIFEST}; charset=utf-8",
    )

    head = client.head_manifest("team/api", "v1")

    assert (head.digest, head.media_type, head.size) == (MANIFEST_DIGEST, OCI_MANIFEST, 528)


def test_head_manifest_falls_back_to_get_when_the_registry_omits_the_digest(rsps, client):
    rsps.head(f"{BASE}/v2/team/api/manifests/v1", content_type=OCI_MANIFEST)
    add_manifest(rsps, "v1")

    head = client.head_manifest("team/api", "v1")

    assert (head.digest, head.size) == (MANIFEST_DIGEST, len(MANIFEST))


# -- blobs -----------------------------------------------------------------------------------


def test_it_follows_blob_redirects_without_sending_credentials_to_storage(rsps, make_client):
    client = make_client(username="bob", password=SECRET)
    url = f"{BASE}/v2/team/api/blobs/{MANIFEST_DIGEST}"
    storage = "https://storage.test/blob?X-Amz-Signature=abc"
    rsps.get(url, status=401, headers={"WWW-Authenticate": 'Basic realm="R"'})
    rsps.get(url, status=307, headers={"Location": storage})
    rsps.get(storage, body=MANIFEST)

    assert client.get_blob("team/api", MANIFEST_DIGEST) == MANIFEST
    assert "Authorization" not in rsps.calls[2].request.headers
    assert rsps.calls[2].request.headers["User-Agent"] == USER_AGENT


def test_it_refuses_a_blob_that_does_not_hash_to_its_digest(rsps, client):
    rsps.get(f"{BASE}/v2/team/api/blobs/{OTHER_DIGEST}", body=MANIFEST)

    with pytest.raises(DigestMismatch, match=f"not {OTHER_DIGEST}"):
        client.get_blob("team/api", OTHER_DIGEST)


def test_it_refuses_a_blob_over_the_cap(rsps, client):
    rsps.get(f"{BASE}/v2/team/api/blobs/{MANIFEST_DIGEST}", body=MANIFEST)

    with pytest.raises(ContentTooLarge):
        client.get_blob("team/api", MANIFEST_DIGEST, max_bytes=10)


def test_it_raises_blob_not_found_on_404(rsps, client):
    rsps.get(
        f"{BASE}/v2/team/api/blobs/{OTHER_DIGEST}",
        status=404,
        json=oci_error("BLOB_UNKNOWN", "blob unknown to registry"),
    )

    with pytest.raises(BlobNotFound, match="BLOB_UNKNOWN"):
        client.get_blob("team/api", OTHER_DIGEST)


def test_it_keeps_storage_signatures_out_of_error_urls(rsps, client):
    url = f"{BASE}/v2/team/api/blobs/{OTHER_DIGEST}"
    storage = "https://storage.test/blob?X-Amz-Signature=topsecret&X-Amz-Expires=60"
    rsps.get(url, status=307, headers={"Location": storage})
    rsps.get(storage, status=403, body="<Error>AccessDenied</Error>")

    with pytest.raises(AuthenticationError) as caught:
        client.get_blob("team/api", OTHER_DIGEST)
    assert "topsecret" not in str(caught.value) and "topsecret" not in caught.value.url


# -- deletes ---------------------------------------------------------------------------------


def test_delete_returns_true_when_the_registry_deletes(rsps, client):
    rsps.delete(f"{BASE}/v2/team/api/manifests/{MANIFEST_DIGEST}", status=202)

    assert client.delete_manifest("team/api", MANIFEST_DIGEST) is True


def test_delete_returns_false_when_the_manifest_is_already_gone(rsps, client):
    rsps.delete(
        f"{BASE}/v2/team/api/manifests/{MANIFEST_DIGEST}",
        status=404,
        json=oci_error("MANIFEST_UNKNOWN", "manifest unknown"),
    )

    assert client.delete_manifest("team/api", MANIFEST_DIGEST) is False


def test_delete_explains_that_the_registry_has_deletes_disabled(rsps, client):
    rsps.delete(
        f"{BASE}/v2/team/api/manifests/{MANIFEST_DIGEST}",
        status=405,
        json=oci_error("UNSUPPORTED", "The operation is unsupported."),
    )

    with pytest.raises(UnsupportedOperation, match="storage.delete.enabled") as caught:
        client.delete_manifest("team/api", MANIFEST_DIGEST)
    assert caught.value.code == "UNSUPPORTED"


def test_delete_refuses_tags(client):
    with pytest.raises(ValueError):
        client.delete_manifest("team/api", "latest")


# -- putting a manifest back (the Trash) ---------------------------------------------------


def test_put_manifest_sends_the_bytes_as_they_are_and_returns_the_digest_answered(rsps, client):
    url = f"{BASE}/v2/team/api/manifests/{MANIFEST_DIGEST}"
    rsps.put(url, status=201, headers={"Docker-Content-Digest": MANIFEST_DIGEST})

    assert client.put_manifest("team/api", MANIFEST_DIGEST, MANIFEST, OCI_MANIFEST) == (
        MANIFEST_DIGEST
    )
    sent = rsps.calls[0].request
    assert sent.body == MANIFEST
    assert sent.headers["Content-Type"] == OCI_MANIFEST


def test_put_manifest_by_tag_tags_the_bytes(rsps, client):
    rsps.put(
        f"{BASE}/v2/team/api/manifests/v1",
        status=201,
        headers={"Docker-Content-Digest": MANIFEST_DIGEST},
    )

    assert client.put_manifest("team/api", "v1", MANIFEST, OCI_MANIFEST) == MANIFEST_DIGEST


def test_put_manifest_fails_when_the_registry_names_another_digest(rsps, client):
    rsps.put(
        f"{BASE}/v2/team/api/manifests/v1",
        status=201,
        headers={"Docker-Content-Digest": OTHER_DIGEST},
    )

    with pytest.raises(DigestMismatch, match=f"stored {OTHER_DIGEST}, not {MANIFEST_DIGEST}"):
        client.put_manifest("team/api", "v1", MANIFEST, OCI_MANIFEST)


def test_put_manifest_never_sends_bytes_that_do_not_hash_to_their_digest(rsps, client):
    with pytest.raises(DigestMismatch, match="hash to"):
        client.put_manifest("team/api", OTHER_DIGEST, MANIFEST, OCI_MANIFEST)

    assert len(rsps.calls) == 0


def test_put_manifest_asks_with_a_head_when_the_answer_names_no_digest(rsps, client):
    url = f"{BASE}/v2/team/api/manifests/{MANIFEST_DIGEST}"
    rsps.put(url, status=201)
    rsps.head(
        url,
        headers={
            "Docker-Content-Digest": MANIFEST_DIGEST,
            "Content-Length": str(len(MANIFEST)),
            "Content-Type": OCI_MANIFEST,
        },
    )

    assert client.put_manifest("team/api", MANIFEST_DIGEST, MANIFEST, OCI_MANIFEST) == (
        MANIFEST_DIGEST
    )


def test_put_manifest_says_what_the_registry_refused(rsps, client):
    rsps.put(
        f"{BASE}/v2/team/api/manifests/{MANIFEST_DIGEST}",
        status=400,
        json=oci_error("MANIFEST_BLOB_UNKNOWN", "blob unknown to registry"),
    )

    with pytest.raises(RegistryError, match="blob unknown to registry") as caught:
        client.put_manifest("team/api", MANIFEST_DIGEST, MANIFEST, OCI_MANIFEST)
    assert (caught.value.status, caught.value.code) == (400, "MANIFEST_BLOB_UNKNOWN")


def test_put_manifest_is_retried_like_a_read_and_asks_for_a_push_scope(rsps, client, sleeps):
    url = f"{BASE}/v2/team/api/manifests/{MANIFEST_DIGEST}"
    rsps.put(url, status=401, headers=bearer_challenge(None))
    rsps.get(AUTH, json={"token": "push"})
    rsps.put(url, status=503, match=[bearer("push")])
    rsps.put(
        url,
        status=201,
        headers={"Docker-Content-Digest": MANIFEST_DIGEST},
        match=[bearer("push")],
    )

    assert client.put_manifest("team/api", MANIFEST_DIGEST, MANIFEST, OCI_MANIFEST) == (
        MANIFEST_DIGEST
    )
    assert query(rsps.calls[1])["scope"] == ["repository:team/api:pull,push"]
    assert len(sleeps) == 1
    assert rsps.calls[3].request.body == MANIFEST


# -- ping ------------------------------------------------------------------------------------


def test_ping_accepts_a_distribution_registry(rsps, client):
    rsps.get(f"{BASE}/v2/", json={}, headers={"Docker-Distribution-API-Version": "registry/2.0"})

    client.ping()


@pytest.mark.parametrize(("status", "body"), [(404, "Not Found"), (200, "<html>Welcome</html>")])
def test_ping_says_when_the_url_is_not_an_oci_registry(rsps, client, status, body):
    rsps.get(f"{BASE}/v2/", status=status, body=body)

    with pytest.raises(InvalidResponse, match="not an OCI registry"):
        client.ping()


def test_error_messages_tolerate_long_non_json_bodies(rsps, client):
    rsps.get(f"{BASE}/v2/", status=502, body="gateway " * 500)

    with pytest.raises(ServerError) as caught:
        client.ping()
    assert len(str(caught.value)) < 400


def test_it_fetches_one_token_for_many_threads_sharing_the_client(rsps, client):
    def tags_list(request):
        if request.headers.get("Authorization") == "Bearer shared":
            return 200, {}, json.dumps({"tags": ["latest"]})
        return 401, bearer_challenge("repository:team/api:pull"), ""

    rsps.add_callback(responses.GET, f"{BASE}/v2/team/api/tags/list", callback=tags_list)
    rsps.get(AUTH, json={"token": "shared"})

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: client.list_tags("team/api"), range(32)))

    assert results == [["latest"]] * 32
    assert len([c for c in rsps.calls if c.request.url.startswith(AUTH)]) == 1


def test_delete_tag_deletes_a_tag_alone_where_the_registry_can(rsps, client):
    rsps.delete(f"{BASE}/v2/team/api/manifests/old", status=202)
    rsps.delete(f"{BASE}/v2/team/api/manifests/gone", status=404, json=oci_error("X", "x"))

    assert client.delete_tag("team/api", "old") is True
    assert client.delete_tag("team/api", "gone") is False


def test_delete_tag_says_when_the_registry_deletes_by_digest_only(rsps, client):
    rsps.delete(
        f"{BASE}/v2/team/api/manifests/old",
        status=400,
        json=oci_error("DIGEST_INVALID", "provided digest did not match uploaded content"),
    )

    with pytest.raises(UnsupportedOperation, match="cannot delete a tag alone"):
        client.delete_tag("team/api", "old")


def test_referrers_come_from_the_api_and_a_404_means_the_registry_has_none(rsps, client):
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": OTHER_DIGEST, "size": 10, "artifactType": "x/y"}
        ],
    }
    rsps.get(f"{BASE}/v2/team/api/referrers/{MANIFEST_DIGEST}", json=index)
    assert [d.digest for d in client.list_referrers("team/api", MANIFEST_DIGEST)] == [OTHER_DIGEST]

    rsps.get(f"{BASE}/v2/team/api/referrers/{OTHER_DIGEST}", status=404, body="404 page not found")
    assert client.list_referrers("team/api", OTHER_DIGEST) is None
    assert client.list_referrers("team/api", MANIFEST_DIGEST) is None  # not asked again
    assert client.may_have_referrers_api is False
    assert len(rsps.calls) == 2
