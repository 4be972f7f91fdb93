"""The registry notification endpoint, driven with envelopes shaped as distribution 2.8
sends them (one event per POST, nanosecond timestamps, `target.tag` when addressed by tag).

Each POST is followed by running the tasks it enqueued (the worker's part) against a real
registry; `test_events_live.py` lets the real registry deliver to a live server and a worker.
"""

from __future__ import annotations

import io
import json
import logging
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from devtools.pusher import random_layer
from devtools.worker import run_tasks
from hubimages.inventory import lists, status
from hubimages.lib import leases
from hubimages.models import Blob, Manifest, PushedFrom, RegistryEvent, Repository, Tag
from hubimages.sync import events
from hubimages.web import webhooks
from registry.client import RegistryClient
from registry.media import OCI_MANIFEST
from registry.notifications import parse_envelope

TOKEN = "events-secret-9f2c"
V1 = "application/vnd.docker.distribution.events.v1+json"
DOCKER_UA = "docker/27.3.1 go/go1.22.7 git-commit/41ca978 kernel/6.1.0 os/linux arch/amd64"
URL = "/registry/events"


@pytest.fixture
def events_on(settings, db):
    settings.REGISTRY_EVENTS_TOKEN = TOKEN


def registry_event(
    action: str,
    repository: str,
    *,
    digest: str | None = None,
    tag: str | None = None,
    at: datetime | None = None,
    user_agent: str = DOCKER_UA,
    method: str | None = None,
    media_type: str = OCI_MANIFEST,
) -> dict:
    """One event as distribution 2.8 writes it."""
    at = at or timezone.now()
    if action == "delete":
        target: dict = {"repository": repository}
    else:
        target = {"mediaType": media_type, "size": 501, "length": 501, "repository": repository}
        target["url"] = f"http://127.0.0.1:5000/v2/{repository}/manifests/{digest}"
    if digest:
        target["digest"] = digest
    if tag:
        target["tag"] = tag
    default_method = {"push": "PUT", "pull": "GET", "delete": "DELETE", "mount": "POST"}[action]
    return {
        "id": str(uuid.uuid4()),
        # 2.8 writes nanoseconds; the database keeps microseconds.
        "timestamp": at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z",
        "action": action,
        "target": target,
        "request": {
            "id": str(uuid.uuid4()),
            "addr": "127.0.0.1:49022",
            "host": "127.0.0.1:5000",
            "method": method or default_method,
            "useragent": user_agent,
        },
        "actor": {},
        "source": {"addr": "registry:5000", "instanceID": str(uuid.uuid4())},
    }


def post(client, *events_: dict, token: str | None = TOKEN, content_type: str = V1, body=None):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    data = body if body is not None else json.dumps({"events": list(events_)})
    response = client.post(URL, data=data, content_type=content_type, headers=headers)
    run_tasks()  # what a worker does next
    return response


def stored(repository: str, digest: str) -> Manifest | None:
    return Manifest.objects.filter(repository__name=repository, digest=digest).first()


def revision(name: str) -> int:
    return Repository.objects.get(name=name).revision


# -- the door -------------------------------------------------------------------------------


def test_a_missing_or_wrong_token_gets_401_and_records_nothing(client, events_on):
    pull = registry_event("pull", "team/api", digest="sha256:" + "a" * 64)
    for token in (None, "", "wrong", TOKEN + "x"):
        response = post(client, pull, token=token)
        assert response.status_code == 401
        assert response["WWW-Authenticate"].startswith("Bearer")
    basic = client.post(
        URL, json.dumps({"events": [pull]}), V1, headers={"Authorization": f"Basic {TOKEN}"}
    )
    assert basic.status_code == 401
    assert not RegistryEvent.objects.exists()


def test_without_a_configured_token_the_endpoint_is_disabled_and_says_so(
    client, settings, db, caplog, monkeypatch
):
    settings.REGISTRY_EVENTS_TOKEN = ""
    monkeypatch.setattr("hubimages.web.webhooks._warned_disabled", set())
    with caplog.at_level(logging.WARNING, logger="hubimages.events"):
        response = post(client, registry_event("pull", "team/api", digest="sha256:" + "a" * 64))
        post(client, registry_event("pull", "team/api", digest="sha256:" + "b" * 64))
    assert response.status_code == 503
    assert "REGISTRY_EVENTS_TOKEN is not set" in response.json()["error"]
    warnings = [r.getMessage() for r in caplog.records if r.name == "hubimages.events"]
    assert warnings == ["REGISTRY_EVENTS_TOKEN is not set: registry notifications are disabled"]
    assert not RegistryEvent.objects.exists()


def test_only_post_is_allowed_and_no_login_is_needed(client, events_on):
    assert client.get(URL).status_code == 405
    assert post(client, body=json.dumps({"events": []})).status_code == 200


def test_other_media_types_get_415_and_the_registrys_types_are_accepted(client, events_on):
    pull = registry_event("pull", "team/api", digest="sha256:" + "a" * 64)
    refused = post(client, pull, content_type="text/plain")
    assert refused.status_code == 415
    assert V1 in refused.json()["error"]
    assert post(client, pull, content_type="application/x-www-form-urlencoded").status_code == 415
    for content_type in (
        V1,
        "application/vnd.docker.distribution.events.v2+json",
        "application/json; charset=utf-8",
    ):
        ok = post(
            client,
            registry_event("pull", "a", digest="sha256:" + "a" * 64),
            content_type=content_type,
        )
        assert ok.status_code == 200, content_type
    assert RegistryEvent.objects.count() == 3


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b'[{"id": "x"}]', "envelope"),
        (b'{"events": {"id": "x"}}', "envelope"),
        (b'{"events": ["push"]}', "events[1] is not an object"),
    ],
)
def test_a_body_that_is_not_an_envelope_gets_400(client, events_on, body, message):
    if b"push" in body:  # a valid event first: nothing may be half-written
        good = registry_event("pull", "team/api", digest="sha256:" + "a" * 64)
        body = json.dumps({"events": [good, "push"]}).encode()
    response = post(client, body=body)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert not RegistryEvent.objects.exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: e.pop("id"), "events[1].id is missing"),
        (lambda e: e.update(timestamp="yesterday"), "events[1].timestamp"),
        (lambda e: e.pop("target"), "events[1].target is missing"),
        (lambda e: e["target"].pop("repository"), "events[1].target.repository"),
        (lambda e: e["target"].update(digest="sha256:nope"), "not a digest"),
        (lambda e: e["target"].update(tag="t" * 129), "longer than 128"),
        (lambda e: e.update(action=7), "events[1].action"),
    ],
)
def test_an_event_missing_what_recording_needs_gets_400_and_nothing_is_written(
    client, events_on, change, message
):
    good = registry_event("pull", "team/api", digest="sha256:" + "a" * 64)
    bad = registry_event("pull", "team/api", digest="sha256:" + "b" * 64, tag="v1")
    change(bad)
    response = post(client, good, bad)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert not RegistryEvent.objects.exists()


def test_a_body_over_one_mebibyte_gets_413(client, events_on):
    pull = registry_event("pull", "team/api", digest="sha256:" + "a" * 64)
    pull["padding"] = "x" * webhooks.MAX_BODY_BYTES
    response = post(client, pull)
    assert response.status_code == 413
    assert "larger than 1048576 bytes" in response.json()["error"]
    assert not RegistryEvent.objects.exists()


# -- pushes ----------------------------------------------------------------------------------


def test_a_push_stores_the_manifest_with_an_exact_last_pushed(
    client, events_on, pusher, registry_url
):
    image = pusher.push_image(
        "team/api", tag="v1", layers=[random_layer(3000, "push")], architecture="arm64"
    )
    pushed_at = timezone.now() - timedelta(minutes=3)
    push = registry_event("push", "team/api", digest=image.digest, tag="v1", at=pushed_at)
    push["target"]["references"] = [{"mediaType": "x", "size": 1, "digest": image.config_digest}]

    response = post(client, push)

    assert response.status_code == 200
    assert response.json() == {
        "recorded": 1,
        "duplicates": 0,
        "pending": 1,
        "ignored": 0,
        "not_stored": 0,
    }
    manifest = stored("team/api", image.digest)
    assert manifest.pushed_at == pushed_at
    assert manifest.pushed_at_estimated is False
    assert manifest.pushed_at_source == PushedFrom.EVENT
    assert status.status_of(manifest) == status.ACTIVE
    assert manifest.platform == "linux/arm64"
    assert manifest.total_size == image.config_size + 3000
    assert list(manifest.tags.values_list("name", flat=True)) == ["v1"]
    assert manifest.is_tagged and manifest.is_top_level
    assert Blob.objects.filter(digest__in=image.blob_digests).count() == 2
    recorded = RegistryEvent.objects.get()
    assert (recorded.state, recorded.message) == (RegistryEvent.State.APPLIED, "push stored")
    assert recorded.processed_at is not None
    assert recorded.user_agent == DOCKER_UA

    # The same envelope again changes nothing.
    before = revision("team/api")
    again = post(client, push)
    assert again.json() == {
        "recorded": 0,
        "duplicates": 1,
        "pending": 0,
        "ignored": 0,
        "not_stored": 0,
    }
    assert RegistryEvent.objects.count() == 1
    assert revision("team/api") == before


def test_a_pushed_index_brings_its_images_and_a_moved_tag_follows_the_registry(
    client, events_on, pusher, registry_url
):
    amd = pusher.push_image("team/api", layers=[random_layer(100, "amd")])
    arm = pusher.push_image("team/api", layers=[random_layer(100, "arm")], architecture="arm64")
    index = pusher.push_index("team/api", tag="latest", images=[amd, arm], attestations=True)
    first_push = timezone.now() - timedelta(hours=2)
    post(
        client, registry_event("push", "team/api", digest=index.digest, tag="latest", at=first_push)
    )

    row = stored("team/api", index.digest)
    assert row.kind == Manifest.Kind.INDEX and row.pushed_at == first_push
    assert set(lists.platforms_of(row)) == {"linux/amd64", "linux/arm64"}
    kinds = sorted(child.kind for child, _ in lists.children_of(row))
    assert kinds == ["attestation", "attestation", "image", "image"]
    assert not stored("team/api", amd.digest).is_top_level
    assert stored("team/api", amd.digest).pushed_at_estimated  # its own push event says when

    # `latest` moves to a new image; the old index's push event, redelivered late with a
    # new id, must neither take the tag back nor make its push time older.
    newer = pusher.push_image("team/api", tag="latest", layers=[random_layer(100, "new")])
    post(client, registry_event("push", "team/api", digest=newer.digest, tag="latest"))
    older_push = registry_event(
        "push", "team/api", digest=index.digest, tag="latest", at=first_push - timedelta(hours=1)
    )
    post(client, older_push)
    assert Tag.objects.get(name="latest").manifest.digest == newer.digest
    assert stored("team/api", index.digest).pushed_at == first_push
    assert not stored("team/api", index.digest).is_tagged


def test_a_push_of_a_manifest_the_registry_no_longer_has_stores_nothing(
    client, events_on, pusher, registry_url
):
    image = pusher.push_image("team/api", tag="v1", layers=[random_layer(100, "gone")])
    pushed = timezone.now() - timedelta(seconds=5)
    pusher.delete_manifest("team/api", image.digest)
    # Delivery out of order: the delete arrives before the push it follows.
    post(client, registry_event("delete", "team/api", digest=image.digest))
    post(client, registry_event("push", "team/api", digest=image.digest, tag="v1", at=pushed))

    assert stored("team/api", image.digest) is None
    push = RegistryEvent.objects.get(action="push")
    assert push.processed_at is not None
    assert push.state == RegistryEvent.State.IGNORED


def test_a_push_that_fails_stays_pending_until_process_events_or_sync_registry(
    client, events_on, pusher, registry_server, registry_url, monkeypatch
):
    # No retries with backoff inside one drain: the next drain is the retry.
    monkeypatch.setattr(
        events, "registry_client", lambda *_: RegistryClient(registry_url, max_retries=0)
    )
    first = pusher.push_image("team/api", tag="v1", layers=[random_layer(100, "first")])
    second = pusher.push_image("team/api", tag="v2", layers=[random_layer(100, "second")])
    registry_server.stop()
    at = timezone.now() - timedelta(minutes=1)
    for image, tag in ((first, "v1"), (second, "v2")):
        response = post(
            client, registry_event("push", "team/api", digest=image.digest, tag=tag, at=at)
        )
        assert response.status_code == 200  # recorded: the registry need not deliver again

    pending = RegistryEvent.objects.filter(state=RegistryEvent.State.RECEIVED)
    assert pending.count() == 2
    # The first drain learnt that the registry is down: the events wait for its retry time
    # together, rather than each failing on its own.
    tried = pending.get(digest=first.digest)
    assert tried.message.startswith("will retry at ") and "cannot reach" in tried.message
    assert tried.next_attempt_at > timezone.now()
    assert stored("team/api", first.digest) is None

    registry_server.start()
    out = io.StringIO()
    call_command("process_events", stdout=out)
    assert "Processed 2 registry events; 0 still pending" in out.getvalue()
    assert not pending.exists()
    assert stored("team/api", first.digest).pushed_at == at
    assert not stored("team/api", first.digest).pushed_at_estimated

    third = pusher.push_image("team/api", tag="v3", layers=[random_layer(100, "third")])
    registry_server.stop()
    post(client, registry_event("push", "team/api", digest=third.digest, tag="v3", at=at))
    registry_server.start()
    call_command("sync_registry", stdout=open("/dev/null", "w"))  # noqa: SIM115
    assert not pending.exists()
    assert not stored("team/api", third.digest).pushed_at_estimated


# -- pulls -----------------------------------------------------------------------------------


def test_an_image_built_in_1970_is_unknown_until_a_pull_or_a_push_event_dates_it(
    client, events_on, pusher, sync
):
    """Reproducible builds write 1970: no build time, so a sync dates it only by when it
    first saw it (Unknown, SPEC §2), until a pull or a push event is seen."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    legacy = pusher.push_image("archive/legacy-app", tag="1.0", layers=[b"one"], created=epoch)
    rebuilt = pusher.push_image("archive/legacy-app", tag="2.0", layers=[b"two"], created=epoch)
    sync("archive/legacy-app")
    rows = {
        row.digest: row for row in Manifest.objects.filter(repository__name="archive/legacy-app")
    }
    for row in rows.values():
        assert row.created_at is None and row.pushed_at == row.first_seen_at
        assert row.pushed_at_source == PushedFrom.FIRST_SEEN
        assert status.status_of(row) == status.UNKNOWN

    post(client, registry_event("pull", "archive/legacy-app", digest=legacy.digest, tag="1.0"))
    pushed_at = timezone.now() - timedelta(minutes=5)
    push = registry_event("push", "archive/legacy-app", digest=rebuilt.digest, at=pushed_at)
    post(client, push)

    legacy_row = stored("archive/legacy-app", legacy.digest)
    assert legacy_row.pushed_at_source == PushedFrom.FIRST_SEEN  # a pull dates its activity
    assert status.status_of(legacy_row) == status.ACTIVE
    rebuilt_row = stored("archive/legacy-app", rebuilt.digest)
    assert (rebuilt_row.pushed_at, rebuilt_row.pushed_at_source) == (pushed_at, PushedFrom.EVENT)
    assert status.status_of(rebuilt_row) == status.ACTIVE


@pytest.fixture
def pushed(client, events_on, pusher, registry_url):
    """One image pushed eight months ago, stored from its push event."""
    image = pusher.push_image("team/api", tag="v1", layers=[random_layer(100, "pulled")])
    at = timezone.now() - timedelta(days=245)
    post(client, registry_event("push", "team/api", digest=image.digest, tag="v1", at=at))
    return image


def test_pulls_by_tag_and_by_digest_set_last_pulled_and_make_a_stale_image_active(
    client, pushed, settings
):
    settings.STALE_AFTER_MONTHS = 6
    manifest = stored("team/api", pushed.digest)
    assert manifest.last_pulled_at is None
    assert status.is_stale(manifest)
    before = revision("team/api")

    by_tag = timezone.now() - timedelta(minutes=10)
    post(client, registry_event("pull", "team/api", digest=pushed.digest, tag="v1", at=by_tag))
    manifest.refresh_from_db()
    assert manifest.last_pulled_at == by_tag
    assert not status.is_stale(manifest)
    assert revision("team/api") == before + 1

    by_digest = timezone.now() - timedelta(minutes=1)
    post(
        client,
        registry_event("pull", "team/api", digest=pushed.digest, at=by_digest, method="HEAD"),
    )
    manifest.refresh_from_db()
    assert manifest.last_pulled_at == by_digest

    # An older pull delivered late, and a pull from another repository, change nothing.
    post(client, registry_event("pull", "team/api", digest=pushed.digest, at=by_tag))
    post(client, registry_event("pull", "other/api", digest=pushed.digest))
    manifest.refresh_from_db()
    assert manifest.last_pulled_at == by_digest
    assert revision("team/api") == before + 2


@pytest.mark.parametrize(
    "user_agent",
    [
        "Trivy/0.56.2",
        "harbor-scanner-trivy/0.31",
        "hubimages/0.1.0 python-requests/2.32",
        "HUBIMAGES/0.1.0",
    ],
)
def test_scanner_and_hubimages_pulls_are_neither_counted_nor_stored(client, pushed, user_agent):
    event = registry_event("pull", "team/api", digest=pushed.digest, user_agent=user_agent)
    response = post(client, event)
    assert response.json() == {
        "recorded": 0,
        "duplicates": 0,
        "pending": 0,
        "ignored": 0,
        "not_stored": 1,
    }
    assert stored("team/api", pushed.digest).last_pulled_at is None
    assert not RegistryEvent.objects.filter(action="pull").exists()


def test_the_answer_counts_every_event_once_and_ignored_is_what_was_stored_as_ignored(
    client, events_on
):
    """The registry (and whoever reads its logs) sees the envelope accounted for: recorded
    (of which pending and ignored), duplicates, and pulls not stored at all."""
    digest = "sha256:" + "c" * 64
    layer = "sha256:" + "d" * 64
    envelope = [
        registry_event("mount", "team/api", digest=layer, media_type="application/octet-stream"),
        registry_event("pull", "team/api", digest=layer, media_type="application/x-tar"),
        registry_event("pull", "Not A Name", digest=digest),
        registry_event("pull", "team/api", digest=digest),
        registry_event("pull", "team/api", digest=digest, user_agent="Trivy/0.56.2"),
    ]
    post(client, envelope[0])

    answer = post(client, *envelope).json()

    ids = [event["id"] for event in envelope]
    stored_ignored = RegistryEvent.objects.filter(event_id__in=ids[1:], state="ignored").count()
    assert stored_ignored == 2
    assert answer == {
        "recorded": 3,
        "duplicates": 1,
        "pending": 0,
        "ignored": stored_ignored,
        "not_stored": 1,
    }
    assert answer["recorded"] + answer["duplicates"] + answer["not_stored"] == len(envelope)


def test_pull_ignore_user_agents_is_a_setting(client, pushed, settings):
    settings.PULL_IGNORE_USER_AGENTS = ["nightly-check"]
    post(
        client,
        registry_event("pull", "team/api", digest=pushed.digest, user_agent="Nightly-Check/2"),
    )
    assert stored("team/api", pushed.digest).last_pulled_at is None
    post(client, registry_event("pull", "team/api", digest=pushed.digest, user_agent="Trivy/0.5"))
    assert stored("team/api", pushed.digest).last_pulled_at is not None


def test_blob_and_mount_events_are_recorded_and_ignored(client, pushed):
    layer = pushed.layer_digests[0]
    blob_pull = registry_event(
        "pull", "team/api", digest=layer, media_type="application/vnd.oci.image.layer.v1.tar+gzip"
    )
    mount = registry_event("mount", "team/api", digest=layer, media_type="application/octet-stream")
    assert post(client, blob_pull, mount).json()["recorded"] == 2
    assert stored("team/api", pushed.digest).last_pulled_at is None
    outcomes = set(RegistryEvent.objects.exclude(action="push").values_list("state", "message"))
    assert outcomes == {("ignored", "pull of a blob"), ("ignored", "mount")}


def test_a_pull_delivered_before_its_push_counts_once_the_push_is_stored(
    client, events_on, pusher, registry_url
):
    image = pusher.push_image("team/api", tag="v1", layers=[random_layer(100, "early")])
    pulled = timezone.now() - timedelta(seconds=2)
    post(client, registry_event("pull", "team/api", digest=image.digest, tag="v1", at=pulled))
    post(
        client,
        registry_event(
            "push", "team/api", digest=image.digest, tag="v1", at=pulled - timedelta(seconds=1)
        ),
    )
    assert stored("team/api", image.digest).last_pulled_at == pulled


def test_a_pull_is_recorded_and_applied_in_a_few_queries(
    client, pushed, django_assert_max_num_queries
):
    pull = registry_event("pull", "team/api", digest=pushed.digest)
    body = json.dumps({"events": [pull]})
    with django_assert_max_num_queries(8):
        response = client.post(
            URL, data=body, content_type=V1, headers={"Authorization": f"Bearer {TOKEN}"}
        )
    assert response.status_code == 200


# -- deletes ---------------------------------------------------------------------------------


def test_a_delete_removes_the_manifest_and_a_tag_delete_removes_the_tag(
    client, events_on, pusher, registry_url
):
    kept = pusher.push_image("team/api", tag="stable", layers=[random_layer(100, "kept")])
    pusher.tag("team/api", "latest", kept)
    doomed = pusher.push_image("team/api", tag="v1", layers=[random_layer(100, "doomed")])
    for image, tag in ((kept, "stable"), (kept, "latest"), (doomed, "v1")):
        post(client, registry_event("push", "team/api", digest=image.digest, tag=tag))
    before = revision("team/api")

    # What 2.8 sends for DELETE /v2/team/api/manifests/<digest>: the digest, then its tags.
    post(client, registry_event("delete", "team/api", digest=doomed.digest))
    post(client, registry_event("delete", "team/api", tag="v1"))
    assert stored("team/api", doomed.digest) is None
    assert not Blob.objects.filter(digest=doomed.layer_digests[0]).exists()
    post(client, registry_event("delete", "team/api", tag="latest"))  # as 3.x can

    assert list(Tag.objects.values_list("name", flat=True)) == ["stable"]
    assert revision("team/api") == before + 2
    outcomes = list(RegistryEvent.objects.filter(action="delete").values_list("state", "message"))
    assert outcomes == [
        ("applied", "manifest deleted"),
        ("ignored", "delete: tag not stored"),
        ("applied", "tag deleted"),
    ]


def test_a_delete_older_than_the_last_push_changes_nothing(client, pushed):
    repushed = timezone.now()
    post(client, registry_event("push", "team/api", digest=pushed.digest, tag="v1", at=repushed))
    post(
        client,
        registry_event(
            "delete", "team/api", digest=pushed.digest, at=repushed - timedelta(seconds=1)
        ),
    )
    post(client, registry_event("delete", "team/api", tag="v1", at=repushed - timedelta(seconds=1)))
    manifest = stored("team/api", pushed.digest)
    assert manifest is not None and manifest.is_tagged


def test_a_push_by_hubimages_itself_never_moves_last_pushed(client, pushed):
    """hubimages pushes only to put a manifest back from the Trash, which restores its
    kept Last pushed: its own push is not a push time (SPEC §12)."""
    before = stored("team/api", pushed.digest).pushed_at
    own = registry_event(
        "push", "team/api", digest=pushed.digest, tag="v1", user_agent="hubimages/0.1.0"
    )

    post(client, own)

    assert stored("team/api", pushed.digest).pushed_at == before
    assert RegistryEvent.objects.get(event_id=own["id"]).state == "applied"


def test_a_push_by_hubimages_recorded_before_a_sync_stores_the_manifest_is_no_push_time(
    client, events_on, pusher, registry_url, sync
):
    image = pusher.push_image("team/api", tag="v1", layers=[random_layer(100, "own")])
    own = registry_event(
        "push", "team/api", digest=image.digest, tag="v1", user_agent="hubimages/0.1.0"
    )
    client.post(  # recorded; the worker has not stored it yet when the sync does
        URL,
        data=json.dumps({"events": [own]}),
        content_type=V1,
        headers={"Authorization": f"Bearer {TOKEN}"},
    )

    sync()

    assert stored("team/api", image.digest).pushed_at_estimated is True


def test_a_delete_older_than_a_recorded_push_of_the_same_manifest_changes_nothing(client, pushed):
    """Put back from the Trash with its old Last pushed, a manifest is newer than the
    delete event its deletion caused, which may be applied only after the restore."""
    restored_at = timezone.now()
    deleted_at = restored_at - timedelta(seconds=5)
    for tag in (None, "v1"):  # put back by digest, then tagged
        own = registry_event(
            "push",
            "team/api",
            digest=pushed.digest,
            tag=tag,
            at=restored_at,
            user_agent="hubimages/0.1",
        )
        post(client, own)
    post(client, registry_event("delete", "team/api", digest=pushed.digest, at=deleted_at))
    post(client, registry_event("delete", "team/api", tag="v1", at=deleted_at))

    manifest = stored("team/api", pushed.digest)
    assert manifest is not None and manifest.is_tagged
    outcomes = set(RegistryEvent.objects.filter(action="delete").values_list("state", "message"))
    assert outcomes == {
        ("ignored", "pushed again after this delete"),
        ("ignored", "tag pushed again after this delete"),
    }


def test_a_delete_waits_while_the_repository_is_locked(
    client, pushed, registry_client, monkeypatch
):
    monkeypatch.setattr(events, "LOCK_WAIT_SECONDS", 0.0)
    repository = Repository.objects.get(name="team/api")
    lock = leases.acquire(leases.repository_lease_name(repository.name), owner="delete:test")
    post(client, registry_event("delete", "team/api", digest=pushed.digest))
    assert stored("team/api", pushed.digest) is not None  # a deletion is at work: not now
    waiting = RegistryEvent.objects.get(action="delete")
    assert waiting.processed_at is None
    assert waiting.message.startswith("will retry at ")
    assert "repository team/api is busy" in waiting.message

    leases.release(lock)
    assert events.process_received(registry_client) == 1
    assert stored("team/api", pushed.digest) is None
    assert RegistryEvent.objects.get(action="delete").message == "manifest deleted"


def test_an_envelope_holding_the_same_event_twice_records_it_once(client, events_on):
    """Found by the stateful test: the second copy made the envelope's transaction fail
    on the unique event id (twice, with the retry), and nothing was recorded."""
    [event] = parse_envelope(
        json.dumps(
            {"events": [registry_event("pull", "team/api", digest="sha256:" + "c" * 64)]}
        ).encode()
    )

    recorded = events.record([event, event])

    assert (recorded.new, recorded.duplicates) == (1, 1)
    assert RegistryEvent.objects.count() == 1
