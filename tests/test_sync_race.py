"""A push event stores what a sync is about to write (SPEC §7, "correct under
concurrency"): the sync re-reads the database under the lock, skips what exists, and moves
only the tags nobody moved since its crawl began."""

from __future__ import annotations

import pytest
from django.utils import timezone

from devtools.pusher import random_layer
from hubimages.models import Manifest, RegistryEvent, Tag
from hubimages.sync import events, store

REPO = "race/app"
OCI = "application/vnd.oci.image.manifest.v1+json"


def push_event(image, tag: str, name: str) -> None:
    RegistryEvent.objects.create(
        event_id=name,
        action="push",
        repository=REPO,
        digest=image.digest,
        tag=tag,
        occurred_at=timezone.now(),
        media_type=OCI,
    )


@pytest.fixture
def between_crawl_and_write(monkeypatch):
    """Run `meanwhile` once, after a sync's crawl and before its write."""

    def install(meanwhile) -> None:
        original = store.write_snapshot
        calls = []

        def write(registry, snapshot, known):
            if not calls:
                calls.append(snapshot.name)
                meanwhile()
            return original(registry, snapshot, known)

        monkeypatch.setattr(store, "write_snapshot", write)

    return install


def test_a_push_stored_mid_sync_neither_fails_the_sync_nor_loses_the_newest_tag(
    pusher, sync, between_crawl_and_write, registry_client
):
    first = pusher.push_image(REPO, tag="latest", layers=[random_layer(100, "first")])
    sync()
    second = pusher.push_image(REPO, tag="latest", layers=[random_layer(100, "second")])
    third = pusher.push_image(REPO, layers=[random_layer(100, "third")])

    def meanwhile() -> None:
        # The sync's crawl saw latest -> second. Now the events worker stores `second`
        # (the same digest the sync fetched), then a newer push moves latest to `third`.
        push_event(second, "latest", "e-second")
        events.drain(registry_client)
        pusher.tag(REPO, "latest", third)
        push_event(third, "latest", "e-third")
        events.drain(registry_client)
        assert Tag.objects.get(name="latest").manifest.digest == third.digest

    between_crawl_and_write(meanwhile)
    summary = sync()  # fails the test on any error (it was an IntegrityError)

    assert summary.errors == []
    assert Tag.objects.get(name="latest").manifest.digest == third.digest
    stored = set(Manifest.objects.filter(repository__name=REPO).values_list("digest", flat=True))
    assert stored == {first.digest, second.digest, third.digest}
    assert Manifest.objects.get(digest=second.digest).pushed_at_estimated is False
    again = sync()
    assert (again.manifests_added, again.tags_changed, again.manifests_removed) == (0, 0, 0)


def test_a_tag_the_sync_found_moved_is_still_written_when_nobody_else_touched_it(
    pusher, sync, between_crawl_and_write
):
    first = pusher.push_image(REPO, tag="v1", layers=[random_layer(100, "a")])
    sync()
    second = pusher.push_image(REPO, tag="v1", layers=[random_layer(100, "b")])
    pusher.tag(REPO, "stable", second)
    between_crawl_and_write(lambda: None)

    summary = sync()

    assert summary.tags_changed == 2
    tags = dict(Tag.objects.values_list("name", "manifest__digest"))
    assert tags == {"v1": second.digest, "stable": second.digest}
    assert Manifest.objects.filter(digest=first.digest).exists()  # untagged now, still there
