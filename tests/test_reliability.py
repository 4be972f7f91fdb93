"""A lying, looping, slow or hostile registry costs no data, and every sync ends in bounded
time (issue 10).

Faults come from `devtools.faultproxy`, a real HTTP proxy in front of the real registry
(`responses` cannot trickle a body or loop over real sockets). Each sync runs the real
command and is checked for its exit status, its time (generous bounds: the measured figures
are in the README), its message, and that nothing was lost: a hash of the database's
manifests, tags, push and pull times before and after.

A watchdog stops the proxy after WATCHDOG seconds, so a sync that would never end (as
before these fixes) fails its test instead of hanging the suite.

`HUBIMAGES_FAULT_TIMES=/path/file` appends each fault case's time to that file (how the
README's figures were measured).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from devtools.faultproxy import FaultProxy
from devtools.pusher import ImagePusher, PushedManifest, random_layer
from devtools.worker import run_tasks
from hubimages.models import Manifest, RegistryEvent, Repository, Tag
from registry import media
from registry.client import RegistryClient
from registry.errors import InvalidResponse

pytestmark = pytest.mark.django_db

WATCHDOG = 120.0
BOUND = 60.0  # "ends by itself, quickly": generous, whatever the machine's load
REPOSITORIES = [f"team/app{i}" for i in range(6)]
PULLED = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
TOKEN = "reliability-events-secret"
EVENTS_V1 = "application/vnd.docker.distribution.events.v1+json"
NAME_UNKNOWN = {
    "errors": [{"code": "NAME_UNKNOWN", "message": "repository name not known to registry"}]
}


# -- helpers -------------------------------------------------------------------------------


@dataclass
class Outcome:
    status: int
    out: str
    err: str
    seconds: float


def run_sync(proxy: FaultProxy, *args: str, case: str = "") -> Outcome:
    """`manage.py sync_registry ARGS` as a user runs it; the exit status is CommandError's."""
    out, err = io.StringIO(), io.StringIO()
    watchdog = threading.Timer(WATCHDOG, proxy.stop)
    watchdog.daemon = True
    watchdog.start()
    started = time.monotonic()
    status = 0
    try:
        call_command("sync_registry", *args, stdout=out, stderr=err)
    except CommandError as error:
        status = error.returncode
        err.write(f"CommandError: {error}\n")
    finally:
        watchdog.cancel()
    outcome = Outcome(status, out.getvalue(), err.getvalue(), time.monotonic() - started)
    note_time(case, outcome.seconds)
    return outcome


def note_time(case: str, seconds: float) -> None:
    path = os.environ.get("HUBIMAGES_FAULT_TIMES")
    if case and path:
        with open(path, "a") as times:
            times.write(f"{case}\t{seconds:.1f}\n")


def fingerprint(*, leave_out: str = "") -> str:
    """A hash of what a sync must never lose: manifests with their push and pull times,
    and tags (optionally without one repository's)."""
    manifests = Manifest.objects.exclude(repository__name=leave_out).values_list(
        "repository__name", "digest", "pushed_at", "pushed_at_estimated", "last_pulled_at"
    )
    tags = Tag.objects.exclude(repository__name=leave_out).values_list(
        "repository__name", "name", "manifest__digest"
    )
    return hashlib.sha256(repr((sorted(manifests), sorted(tags))).encode()).hexdigest()


@dataclass
class Registry:
    """What `populated` pushed and synced."""

    untagged: PushedManifest
    many_tags: PushedManifest
    fingerprint: str


@pytest.fixture
def populated(pusher, registry_server, fault_proxy, settings) -> Registry:
    """Six repositories synced from the real registry: team/app0 holds an untagged image
    (its tag moved to a new build, which only a sync that saw it before knows about),
    team/app1 one image under ten tags; every manifest was pulled. hubimages then points at
    the proxy, which passes everything through until a test adds a fault."""
    settings.REGISTRY_URL = registry_server.url
    settings.REGISTRY_EVENTS_TOKEN = ""
    for i, name in enumerate(REPOSITORIES):
        pusher.push_image(name, tag="v1", layers=[random_layer(64, f"reliability-{i}")])
    untagged = pusher.push_image("team/app0", tag="latest", layers=[random_layer(64, "old")])
    many_tags = pusher.push_image("team/app1", tag="t0", layers=[random_layer(64, "ten")])
    for n in range(1, 10):
        pusher.tag("team/app1", f"t{n}", many_tags)
    call_command("sync_registry", stdout=io.StringIO())
    pusher.push_image("team/app0", tag="latest", layers=[random_layer(64, "new")])
    call_command("sync_registry", stdout=io.StringIO())
    Manifest.objects.update(last_pulled_at=PULLED)
    assert Manifest.objects.filter(repository__name="team/app0", tags__isnull=True).exists()
    settings.REGISTRY_URL = fault_proxy.url
    return Registry(untagged, many_tags, fingerprint())


def push_new_build(pusher: ImagePusher, repository: str = "team/app2") -> PushedManifest:
    """A manifest the next sync has to GET (known ones are only HEADed)."""
    return pusher.push_image(repository, tag="v2", layers=[random_layer(64, "new-build")])


def manifest_paths(repository: str) -> str:
    """Its manifests by tag or digest: a new tag is read with a GET by tag."""
    return rf"^/v2/{repository}/manifests/"


# -- 1. the catalog's word alone removes nothing ------------------------------------------------


@pytest.mark.parametrize("listed", [[], None], ids=["empty", "null"])
def test_an_empty_or_null_catalog_removes_nothing_and_says_so(populated, fault_proxy, listed):
    fault_proxy.answer(r"^/v2/_catalog", json_body={"repositories": listed})

    outcome = run_sync(fault_proxy, case=f"{'empty' if listed == [] else 'null'} catalog")

    assert fingerprint() == populated.fingerprint
    assert outcome.status == 0, outcome.err
    assert outcome.seconds < BOUND
    assert "the catalog does not list 6 repositories the registry still has" in outcome.out
    assert "0 repositories removed" in outcome.out


def test_a_registry_that_seems_to_have_lost_everything_is_held_back_until_prune(
    populated, fault_proxy
):
    fault_proxy.answer(r"^/v2/_catalog", json_body={"repositories": []})
    fault_proxy.answer(r"^/v2/team/", status=404, json_body=NAME_UNKNOWN)

    held = run_sync(fault_proxy, case="everything 404 (held back)")

    assert fingerprint() == populated.fingerprint
    assert held.status == 1
    assert held.seconds < BOUND
    assert "6 repositories of 6 seem gone from the registry" in held.out
    assert "needs --prune" in held.out
    assert "6 repositories that seem gone were kept" in held.err
    assert "6 held back" in held.out

    pruned = run_sync(fault_proxy, "--prune")

    assert pruned.status == 0, pruned.err
    assert "6 repositories removed" in pruned.out
    assert not Repository.objects.exists()


def test_a_repository_missing_from_the_catalog_goes_only_when_a_head_finds_none_of_its_manifests(
    populated, fault_proxy, pusher
):
    for digest in Manifest.objects.filter(repository__name="team/app5").values_list(
        "digest", flat=True
    ):
        pusher.delete_manifest("team/app5", digest)
    listed = [name for name in REPOSITORIES if name not in ("team/app4", "team/app5")]
    fault_proxy.answer(r"^/v2/_catalog", json_body={"repositories": listed})
    others = fingerprint(leave_out="team/app5")

    outcome = run_sync(fault_proxy, case="catalog missing two repositories")

    assert Manifest.objects.filter(repository__name="team/app4").exists()
    assert fingerprint(leave_out="team/app5") == others
    assert not Repository.objects.filter(name="team/app5").exists()
    assert outcome.status == 0, outcome.err
    assert "the catalog does not list 1 repository the registry still has" in outcome.out
    assert "'team/app4'" in outcome.out
    assert "1 repository removed" in outcome.out


def test_a_looping_catalog_link_removes_nothing(populated, fault_proxy):
    # A proxy that drops `last`: every page is the first one, two names long.
    fault_proxy.looping_pages(r"^/v2/_catalog", page_size=2)

    outcome = run_sync(fault_proxy, case="looping catalog Link")

    assert fingerprint() == populated.fingerprint
    assert outcome.status == 1
    assert outcome.seconds < BOUND
    assert "the pages of the catalog loop" in outcome.err
    assert "the catalog could not be read, so no repository was synced" in outcome.err


def test_a_failing_catalog_page_removes_nothing_and_says_the_catalog_failed(populated, fault_proxy):
    fault_proxy.page_size(r"^/v2/_catalog", 2)
    fault_proxy.answer(r"^/v2/_catalog\?.*last=", status=500, body=b"storage driver error")

    outcome = run_sync(fault_proxy, case="catalog page 2 answers 500")

    assert outcome.status == 1
    assert "registry answered 500" in outcome.err
    assert "the catalog could not be read, so no repository was synced" in outcome.err
    assert "repositories failed" not in outcome.err
    assert fingerprint() == populated.fingerprint


def test_invalid_names_in_the_catalog_or_a_tag_list_are_skipped_with_a_warning(
    populated, fault_proxy
):
    catalog = [*REPOSITORIES, "UPPER/Case", "../../etc", "x\u202ey"]
    fault_proxy.answer(r"^/v2/_catalog", json_body={"repositories": catalog})
    tags = {"name": "team/app3", "tags": ["v1", "no tag!", "../v2"]}
    fault_proxy.answer(r"^/v2/team/app3/tags/list", json_body=tags)

    outcome = run_sync(fault_proxy, case="invalid names in the catalog and a tag list")

    assert fingerprint() == populated.fingerprint
    assert outcome.status == 0, outcome.err
    assert (
        "invalid repository names listed in the catalog, skipped: 'UPPER/Case', '../../etc', "
        "'x\\u202ey'" in outcome.out
    )
    assert "team/app3: the tag list names invalid tags, skipped: 'no tag!', '../v2'" in outcome.out


# -- 2. untagged manifests stay while a HEAD finds them --------------------------------------


def post_events(client, *events: dict, body: bytes | None = None):
    data = body if body is not None else json.dumps({"events": list(events)}).encode()
    response = client.post(
        "/registry/events",
        data=data,
        content_type=EVENTS_V1,
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    run_tasks()  # what a worker does next
    return response


def registry_event(action: str, repository: str, digest: str, *, at: str, tag: str = "") -> dict:
    target = {"mediaType": media.OCI_MANIFEST, "repository": repository, "digest": digest}
    if tag:
        target["tag"] = tag
    method = {"push": "PUT", "pull": "GET"}[action]
    return {
        "id": str(uuid.uuid4()),
        "timestamp": at,
        "action": action,
        "target": target,
        "request": {"method": method, "useragent": "docker/27.3.1"},
    }


@pytest.fixture
def events_on(settings, registry_url):
    settings.REGISTRY_EVENTS_TOKEN = TOKEN


def test_a_repository_holding_only_untagged_manifests_keeps_them(client, pusher, events_on):
    # Pushed by digest: distribution answers its tag list with 404 NAME_UNKNOWN.
    image = pusher.push_image("loose/bydigest", layers=[random_layer(64, "by-digest")])
    pusher.push_image("loose/tagged", tag="v1", layers=[random_layer(64, "tagged")])
    now = timezone.now().isoformat()
    pushed = post_events(client, registry_event("push", "loose/bydigest", image.digest, at=now))
    assert pushed.status_code == 200
    assert Manifest.objects.filter(repository__name="loose/bydigest").count() == 1

    out = io.StringIO()
    call_command("sync_registry", stdout=out)
    call_command("sync_registry", "--repository", "loose/bydigest", stdout=out)

    assert Manifest.objects.filter(repository__name="loose/bydigest", digest=image.digest).exists()
    assert "the registry lists no tags for it (404)" in out.getvalue()
    assert "0 manifests removed" in out.getvalue()


# -- 3. bounded time -----------------------------------------------------------------------------


def test_endless_link_pagination_on_the_catalog_ends_with_a_clear_message(populated, fault_proxy):
    fault_proxy.endless_pages(r"^/v2/_catalog")

    outcome = run_sync(fault_proxy, case="endless catalog Link")

    assert outcome.status == 1
    assert outcome.seconds < BOUND
    assert "the pages of the catalog never end" in outcome.err
    assert fingerprint() == populated.fingerprint


def test_endless_link_pagination_on_a_tag_list_fails_that_repository_only(populated, fault_proxy):
    fault_proxy.endless_pages(r"^/v2/team/app3/tags/list")

    outcome = run_sync(fault_proxy, case="endless tags/list Link")

    assert outcome.status == 1
    assert outcome.seconds < BOUND
    assert "the pages of the tags of team/app3 never end" in outcome.err
    assert "CommandError: 1 repository failed to sync" in outcome.err
    assert "Synced 6 repositories" in outcome.out
    assert fingerprint() == populated.fingerprint


def test_the_page_cap_stops_a_link_chain_that_keeps_bringing_new_names(populated, fault_proxy):
    fault_proxy.endless_pages(r"^/v2/_catalog", invent="repositories")
    started = time.monotonic()

    with (
        RegistryClient(fault_proxy.url, max_pages=20) as client,
        pytest.raises(InvalidResponse, match="stopped after 20 pages"),
    ):
        list(client.iter_repositories())

    assert time.monotonic() - started < BOUND


def test_a_trickled_body_ends_at_the_request_deadline(populated, fault_proxy, pusher, settings):
    settings.REGISTRY_DEADLINE = 10
    push_new_build(pusher)
    fault_proxy.trickle(manifest_paths("team/app2"), interval=2.0)

    outcome = run_sync(fault_proxy, case="body trickled 1 byte / 2 s (deadline 10 s)")

    assert outcome.status == 1
    assert 9 < outcome.seconds < BOUND
    assert "team/app2:" in outcome.err
    assert "did not complete the request within 10 s" in outcome.err
    assert "CommandError: 1 repository failed to sync" in outcome.err
    assert fingerprint() == populated.fingerprint


def test_a_long_retry_after_stops_that_repository_at_once_and_says_when_to_retry(
    populated, fault_proxy
):
    fault_proxy.answer(
        manifest_paths("team/app1"),
        method="HEAD",
        status=429,
        headers={"Retry-After": "3600"},
        json_body={"errors": [{"code": "TOOMANYREQUESTS", "message": "slow down"}]},
    )

    outcome = run_sync(fault_proxy, case="429 Retry-After: 3600 on a 10-tag repository")

    assert outcome.status == 1
    assert outcome.seconds < 30
    assert "team/app1: registry answered 429" in outcome.err
    assert "the registry asks to wait 1 h 0 min: try again after" in outcome.err
    assert "CommandError: 1 repository failed to sync" in outcome.err
    assert fingerprint() == populated.fingerprint


def test_a_registry_answering_503_always_fails_in_bounded_time_with_its_message(
    populated, fault_proxy
):
    fault_proxy.answer(r"^/v2/", status=503, body=b"Service Unavailable")

    outcome = run_sync(fault_proxy, case="503 always")

    assert outcome.status == 1
    assert outcome.seconds < BOUND
    assert "registry answered 503" in outcome.err
    assert "the catalog could not be read, so no repository was synced" in outcome.err
    assert fingerprint() == populated.fingerprint


def test_a_single_503_is_retried_and_the_sync_succeeds(populated, fault_proxy):
    once = fault_proxy.answer(r"^/v2/_catalog", status=503, times=1)

    outcome = run_sync(fault_proxy, case="503 once")

    assert outcome.status == 0, outcome.err
    assert once.hits == 1
    assert fingerprint() == populated.fingerprint


# -- the server answered, with something wrong ----------------------------------------------


def test_a_truncated_body_is_reported_as_cut_short_not_as_unreachable(
    populated, fault_proxy, pusher
):
    push_new_build(pusher)
    fault_proxy.truncate(manifest_paths("team/app2"))

    outcome = run_sync(fault_proxy, case="truncated body (retried, then reported)")

    assert outcome.status == 1
    assert outcome.seconds < BOUND
    assert "answered, but the body was cut short" in outcome.err
    assert "cannot reach" not in outcome.err
    assert "CommandError: 1 repository failed to sync" in outcome.err
    assert fingerprint() == populated.fingerprint


def test_a_digest_mismatch_fails_that_repository_and_keeps_its_data(populated, fault_proxy, pusher):
    push_new_build(pusher)
    fault_proxy.corrupt(manifest_paths("team/app2"))

    outcome = run_sync(fault_proxy, case="digest mismatch")

    assert outcome.status == 1
    assert "manifest content hashes to" in outcome.err
    assert fingerprint() == populated.fingerprint


@pytest.mark.parametrize("content_length", [True, False], ids=["announced", "streamed"])
def test_an_oversized_manifest_is_skipped_with_a_warning_and_the_rest_syncs(
    populated, fault_proxy, pusher, content_length
):
    new = push_new_build(pusher)
    fault_proxy.oversize(
        manifest_paths("team/app2"), size=5 * 1024 * 1024, content_length=content_length
    )

    outcome = run_sync(
        fault_proxy,
        case=f"oversized manifest ({'with' if content_length else 'without'} Content-Length)",
    )

    assert outcome.status == 0, outcome.err
    assert f"manifest {new.digest} skipped: content" in outcome.out
    assert "byte limit" in outcome.out
    assert fingerprint() == populated.fingerprint


# -- 5. hostile JSON ---------------------------------------------------------------------------


def push_raw_image(
    pusher: ImagePusher, repository: str, tag: str, *, config: bytes, extra: bytes = b""
) -> str:
    """An image whose config and manifest bytes are written by hand (json.dumps cannot
    even write 50,000 levels); `extra` goes into the manifest as `"extra": <extra>`."""
    layer = pusher.push_blob(repository, random_layer(32, f"raw-{tag}"))
    config_blob = pusher.push_blob(repository, config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": media.OCI_MANIFEST,
        "config": {
            "mediaType": media.OCI_IMAGE_CONFIG,
            "digest": config_blob.digest,
            "size": config_blob.size,
        },
        "layers": [{"mediaType": media.OCI_LAYER, "digest": layer.digest, "size": layer.size}],
    }
    body = json.dumps(manifest).encode()
    if extra:
        body = body[:-1] + b', "extra": ' + extra + b"}"
    return pusher.push_manifest(repository, body, media.OCI_MANIFEST, tag)


PLAIN_CONFIG = b'{"architecture": "amd64", "os": "linux", "config": {}}'


def test_deeply_nested_or_huge_number_json_is_skipped_with_a_warning_and_the_rest_syncs(
    pusher, registry_url, db
):
    name = "hostile/json"
    fine = push_raw_image(pusher, name, "fine", config=PLAIN_CONFIG)
    # distribution 2.8 accepts every one of these (Go parses 10,000 levels and skips the
    # digits of a field it does not know).
    deep_manifest = push_raw_image(
        pusher, name, "deep-manifest", config=PLAIN_CONFIG, extra=b"[" * 9_998 + b"]" * 9_998
    )
    huge_number = push_raw_image(
        pusher, name, "huge-number", config=PLAIN_CONFIG, extra=b"9" * 5_000
    )
    deep_config = push_raw_image(
        pusher,
        name,
        "deep-config",
        config=b'{"architecture": "amd64", "os": "linux", "x": '
        + b"[" * 50_000
        + b"]" * 50_000
        + b"}",
    )
    out = io.StringIO()

    call_command("sync_registry", stdout=out)

    stored = set(Manifest.objects.filter(repository__name=name).values_list("digest", flat=True))
    assert {fine, deep_config} <= stored
    assert huge_number not in stored
    assert f"manifest {huge_number} skipped: manifest holds a number too long to parse" in (
        out.getvalue()
    )
    assert "image config blob nests JSON deeper than can be parsed" in out.getvalue()
    # Parsed, or skipped with a warning: either way never a failed sync.
    assert deep_manifest in stored or f"manifest {deep_manifest} skipped" in out.getvalue()


def test_the_webhook_answers_400_to_a_100000_deep_envelope_and_a_5000_digit_number(
    client, events_on
):
    deep = b'{"events": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    event = registry_event("pull", "team/api", "sha256:" + "a" * 64, at="2026-01-01T00:00:00Z")
    huge = json.dumps({"events": [event]}).replace(
        '"team/api"', '"team/api", "size": 1' + "0" * 4_999
    )

    for body in (deep, huge.encode()):
        response = post_events(client, body=body)
        assert response.status_code == 400
        assert (
            "too long to parse" in response.json()["error"] or "deeper" in response.json()["error"]
        )
    assert not RegistryEvent.objects.exists()


# -- 6, 7. events that cannot be true ------------------------------------------------------


@pytest.mark.parametrize("repository", ["UPPER/Case", "../../etc", "team//api", "x\u202eevil"])
def test_push_events_naming_an_invalid_repository_are_recorded_as_ignored_with_the_reason(
    client, events_on, repository
):
    event = registry_event(
        "push", repository, "sha256:" + "b" * 64, at=timezone.now().isoformat(), tag="v1"
    )

    response = post_events(client, event)
    call_command("process_events", stdout=io.StringIO())

    assert response.status_code == 200
    row = RegistryEvent.objects.get()
    assert row.state == RegistryEvent.State.IGNORED
    assert row.message.startswith("invalid repository name")
    assert not RegistryEvent.objects.filter(state=RegistryEvent.State.RECEIVED).exists()


def test_a_push_event_with_an_invalid_tag_is_recorded_as_ignored(client, events_on):
    event = registry_event(
        "push", "team/api", "sha256:" + "c" * 64, at=timezone.now().isoformat(), tag="no tag!"
    )

    assert post_events(client, event).status_code == 200

    row = RegistryEvent.objects.get()
    assert (row.state, row.message) == (RegistryEvent.State.IGNORED, "invalid tag 'no tag!'")


def test_event_times_from_the_future_or_the_distant_past_are_taken_as_received_and_noted(
    client, events_on, pusher
):
    image = pusher.push_image("team/api", tag="v1", layers=[random_layer(64, "times")])
    call_command("sync_registry", stdout=io.StringIO())
    manifest = Manifest.objects.get(repository__name="team/api", digest=image.digest)

    before = timezone.now()
    post_events(client, registry_event("pull", "team/api", image.digest, at="9999-12-31T23:59:59Z"))
    manifest.refresh_from_db()
    assert before <= manifest.last_pulled_at <= timezone.now()
    future = RegistryEvent.objects.get()
    assert "its time 9999-12-31T23:59:59Z is later than its receipt: taken as received" in (
        future.message
    )
    assert future.occurred_at == manifest.last_pulled_at

    # A later real pull still counts: nothing is pinned.
    later = timezone.now() + timedelta(minutes=2)  # within the clock-skew allowance
    post_events(client, registry_event("pull", "team/api", image.digest, at=later.isoformat()))
    manifest.refresh_from_db()
    assert manifest.last_pulled_at == later

    post_events(client, registry_event("pull", "team/api", image.digest, at="1970-01-01T00:00:00Z"))
    past = RegistryEvent.objects.order_by("-pk").first()
    assert "its time 1970-01-01T00:00:00Z is earlier than any registry event" in past.message
    assert past.occurred_at > timezone.now() - timedelta(minutes=1)
