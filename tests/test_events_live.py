"""A real registry delivering its notifications to a live hubimages, pushes stored by a
task worker: what a user sees without ever running a sync."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from django.db import OperationalError
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from devtools.pusher import ImagePusher, random_layer
from devtools.server import LocalRegistry
from hubimages.models import Manifest, RegistryEvent, Tag
from registry.client import RegistryClient

TOKEN = "live-events-secret-41d7"
DOCKER_UA = "docker/27.3.1 go/go1.22.7 os/linux arch/amd64"


@pytest.fixture
def notifying_registry(tmp_path, live_server, settings, worker_thread) -> Iterator[str]:
    settings.REGISTRY_EVENTS_TOKEN = TOKEN
    server = LocalRegistry(
        tmp_path / "registry",
        notify_url=f"{live_server.url}/registry/events",
        notify_token=TOKEN,
    )
    with server:
        settings.REGISTRY_URL = server.url
        yield server.url
    settle_events_worker()


def settle_events_worker(quiet: float = 1.0, timeout: float = 30.0) -> None:
    """Wait until no event arrives and no task waits for `quiet` seconds.

    A delivery already in flight when the registry stopped still reaches the live server
    and may start a drain: one that writes while the test database is flushed deadlocks
    PostgreSQL's TRUNCATE."""
    deadline = time.monotonic() + timeout
    idle_since = time.monotonic()
    seen = None
    while time.monotonic() - idle_since < quiet:
        unfinished = DBTaskResult.objects.filter(status__in=["READY", "RUNNING"]).count()
        now_seen = (RegistryEvent.objects.count(), unfinished)
        if now_seen != seen or unfinished:
            assert time.monotonic() < deadline, "the events worker did not finish"
            seen, idle_since = now_seen, time.monotonic()
        time.sleep(0.05)


def eventually(check: Callable[[], object], timeout: float = 10.0) -> object:
    """Poll until `check()` is truthy: the registry delivers asynchronously."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if result := check():
                return result
        except OperationalError:  # SQLite's shared in-memory test database: a writer is busy
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {check.__doc__ or check}")
        time.sleep(0.05)


def test_pushes_pulls_and_deletes_reach_the_list_without_a_sync(notifying_registry):
    pusher = ImagePusher(notifying_registry)
    before_push = timezone.now() - timedelta(seconds=1)
    image = pusher.push_image("team/api", tag="v1", layers=[random_layer(2000, "live")])

    def stored() -> Manifest | None:
        """the pushed manifest is stored with an exact push time"""
        return Manifest.objects.filter(
            repository__name="team/api", digest=image.digest, pushed_at_estimated=False
        ).first()

    manifest = eventually(stored)
    assert before_push <= manifest.pushed_at <= timezone.now()
    assert manifest.total_size == image.config_size + 2000
    assert manifest.last_pulled_at is None
    assert list(Tag.objects.values_list("name", flat=True)) == ["v1"]

    # A pull by tag, then by digest (GET, as docker does).
    assert pusher.pull_manifest("team/api", "v1", user_agent=DOCKER_UA).status_code == 200

    def pulled_after(instant):
        def check():
            """Last pulled moved forward"""
            value = Manifest.objects.get(digest=image.digest).last_pulled_at
            return value if value and (instant is None or value > instant) else None

        return check

    by_tag = eventually(pulled_after(None))
    assert pusher.pull_manifest("team/api", image.digest, user_agent=DOCKER_UA).ok
    by_digest = eventually(pulled_after(by_tag))

    # hubimages's own HEADs reach the registry's events with its User-Agent: they are not
    # counted as pulls, nor even stored. Events come in order: once the pull that follows
    # them is counted, they have been delivered.
    with RegistryClient(notifying_registry) as client:
        assert client.head_manifest("team/api", "v1").digest == image.digest
        assert client.head_manifest("team/api", image.digest) is not None
    assert pusher.pull_manifest("team/api", image.digest, user_agent=DOCKER_UA).ok
    eventually(pulled_after(by_digest))
    assert not RegistryEvent.objects.filter(user_agent__startswith="hubimages/").exists()
    assert RegistryEvent.objects.filter(action="pull", user_agent=DOCKER_UA).count() == 3

    # A delete through the registry's API.
    pusher.delete_manifest("team/api", image.digest)

    def gone():
        """the deleted manifest and its tag are gone"""
        return not Manifest.objects.filter(digest=image.digest).exists() and not (
            Tag.objects.exists()
        )

    eventually(gone)
    push = RegistryEvent.objects.get(action="push", digest=image.digest)
    assert (push.state, push.message) == ("applied", "push stored")
    assert push.user_agent == "hubimages-test-pusher/1"
