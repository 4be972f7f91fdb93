"""What one odd registry answer may do: a 404 concerns what it was asked about, and
nothing is removed on the strength of one answer (issue 18, items 2, 12 and 16).

Faults come from `devtools.faultproxy`, a real HTTP proxy in front of the real registry:
HEAD answers without `Docker-Content-Digest` (some registries and proxies leave it out),
and a 404 to one chosen request (a blip, or a tag deleted between two requests).
"""

from __future__ import annotations

import contextvars
from datetime import UTC, datetime

import pytest
from django.utils import timezone

from devtools.faultproxy import FaultProxy
from devtools.pusher import ImagePusher, PushedManifest, random_layer
from hubimages.lib.leases import repository_lock
from hubimages.models import IndexEntry, Manifest, RegistryEvent, Repository, Tag
from hubimages.sync import events, store
from hubimages.sync.service import sync_registry, sync_repository
from registry import media
from registry.client import RegistryClient
from registry.notifications import Event

pytestmark = pytest.mark.django_db

REPO = "team/api"


def digests(repository: str = REPO) -> set[str]:
    return set(
        Manifest.objects.filter(repository__name=repository).values_list("digest", flat=True)
    )


def tags(repository: str = REPO) -> dict[str, str]:
    return dict(
        Tag.objects.filter(repository__name=repository).values_list("name", "manifest__digest")
    )


@pytest.fixture
def through_proxy(fault_proxy: FaultProxy):
    with RegistryClient(fault_proxy.url) as client:
        yield client


def push_with_untagged(pusher: ImagePusher, sync) -> tuple[PushedManifest, PushedManifest]:
    """REPO with `latest` on a new build and the old build untagged, which only a sync that
    saw it tagged knows of: the registry API cannot list it again."""
    old = pusher.push_image(REPO, tag="latest", layers=[random_layer(64, "old")])
    sync()
    new = pusher.push_image(REPO, tag="latest", layers=[random_layer(64, "new")])
    sync()
    assert digests() == {old.digest, new.digest}
    return old, new


# -- item 2: one 404 never deletes a repository ------------------------------------------------


def test_a_404_on_the_get_after_a_head_without_digest_concerns_that_tag_only(
    pusher, sync, fault_proxy, through_proxy
):
    old, new = push_with_untagged(pusher, sync)
    fault_proxy.no_digest_header(rf"^/v2/{REPO}/manifests/")
    # The GET that stands in for the HEAD's missing digest answers 404 once: the tag was
    # deleted between the two requests, or a blip.
    fault_proxy.not_found(rf"^/v2/{REPO}/manifests/latest$", method="GET")

    result = sync_repository(through_proxy, REPO)

    assert result.error == ""
    assert Repository.objects.filter(name=REPO).exists()
    assert digests() == {old.digest, new.digest}
    assert "tag latest disappeared during the sync" in result.warnings
    again = sync_repository(through_proxy, REPO)
    assert again.error == ""
    assert tags() == {"latest": new.digest}


def test_a_404_on_a_known_manifest_s_head_fallback_never_reads_as_a_missing_repository(
    pusher, sync, fault_proxy, through_proxy
):
    old, new = push_with_untagged(pusher, sync)
    fault_proxy.no_digest_header(rf"^/v2/{REPO}/manifests/")
    fault_proxy.not_found(rf"^/v2/{REPO}/manifests/{old.digest}$", method="GET")

    result = sync_repository(through_proxy, REPO)

    assert result.error == ""
    assert Repository.objects.filter(name=REPO).exists()
    assert new.digest in digests()
    assert tags() == {"latest": new.digest}


def test_a_tag_list_404_without_name_unknown_is_an_error_that_removes_nothing(
    pusher, sync, fault_proxy, through_proxy
):
    push_with_untagged(pusher, sync)
    before = digests()
    fault_proxy.answer(rf"^/v2/{REPO}/tags/list", status=404, body=b"<html>not here</html>")

    result = sync_repository(through_proxy, REPO)

    assert "404" in result.error
    assert digests() == before


def test_a_repository_missing_on_one_answer_is_confirmed_before_it_is_removed(
    pusher, sync, fault_proxy, through_proxy
):
    old, new = push_with_untagged(pusher, sync)
    # One round of answers says the repository is gone: its tag list is NAME_UNKNOWN and
    # HEADs find none of its manifests. The confirmation (asked again) finds it.
    fault_proxy.not_found(rf"^/v2/{REPO}/tags/list", times=1, code="NAME_UNKNOWN")
    fault_proxy.not_found(rf"^/v2/{REPO}/manifests/", method="HEAD", times=2)

    result = sync_repository(through_proxy, REPO)

    assert Repository.objects.filter(name=REPO).exists()
    assert digests() == {old.digest, new.digest}
    assert "kept" in " ".join(result.warnings)


def lose_repository(fault_proxy: FaultProxy) -> None:
    """The registry answers, every time, that it has no such repository and none of its
    manifests (the proxy stands for a registry whose storage lost them)."""
    fault_proxy.not_found(rf"^/v2/{REPO}/tags/list", times=None, code="NAME_UNKNOWN")
    fault_proxy.not_found(rf"^/v2/{REPO}/manifests/", method=None, times=None)


def test_a_repository_the_registry_really_lost_is_removed_after_confirmation(
    pusher, sync, fault_proxy, through_proxy
):
    push_with_untagged(pusher, sync)
    lose_repository(fault_proxy)

    result = sync_repository(through_proxy, REPO)

    assert result.error == ""
    assert not Repository.objects.filter(name=REPO).exists()
    assert result.removed == 2


def test_a_missing_repository_is_not_removed_while_another_process_holds_it(
    pusher, sync, fault_proxy, through_proxy, monkeypatch
):
    push_with_untagged(pusher, sync)
    before = digests()
    lose_repository(fault_proxy)
    monkeypatch.setattr(store, "LOCK_WAIT_SECONDS", 0.0)

    with repository_lock(REPO, owner="someone else"):
        # The lease is this test's context's: a fresh context stands for another process.
        result = contextvars.Context().run(sync_repository, through_proxy, REPO)

    assert "busy" in result.error
    assert digests() == before
    summary = sync_registry(through_proxy, repositories=[REPO])
    assert summary.errors == []
    assert not Repository.objects.filter(name=REPO).exists()


# -- item 12: one HEAD answering 404 never drops a known untagged image ---------------------------

PULLED = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


def test_one_404_on_a_known_untagged_manifest_marks_it_and_only_a_later_sync_removes_it(
    pusher, sync, fault_proxy, through_proxy
):
    old, new = push_with_untagged(pusher, sync)
    Manifest.objects.filter(digest=old.digest).update(last_pulled_at=PULLED)
    fault_proxy.not_found(rf"^/v2/{REPO}/manifests/{old.digest}$", method="HEAD")

    blip = sync_registry(through_proxy)

    assert blip.errors == []
    kept = Manifest.objects.get(repository__name=REPO, digest=old.digest)
    assert kept.last_pulled_at == PULLED
    assert kept.unconfirmed_since is not None
    assert any(old.digest in w and "404" in w for w in blip.warnings)
    assert blip.manifests_removed == 0

    found = sync_registry(through_proxy)  # the registry still has it: the mark goes

    assert found.errors == []
    assert Manifest.objects.get(digest=old.digest).unconfirmed_since is None
    assert digests() == {old.digest, new.digest}

    pusher.delete_manifest(REPO, old.digest)  # now it is really gone
    first = sync_registry(through_proxy)
    assert digests() == {old.digest, new.digest}
    assert first.manifests_removed == 0
    second = sync_registry(through_proxy)
    assert digests() == {new.digest}
    assert second.manifests_removed == 1


# -- item 16: an index is stored whole or not at all --------------------------------------------


def test_an_index_whose_child_answered_404_is_stored_whole_by_a_later_sync_never_in_part(
    pusher, sync, fault_proxy, through_proxy
):
    amd64 = pusher.push_image(REPO, layers=[random_layer(64, "amd64")])
    arm64 = pusher.push_image(REPO, layers=[random_layer(64, "arm64")], architecture="arm64")
    index = pusher.push_index(REPO, tag="v1", images=[amd64, arm64])
    fault_proxy.not_found(rf"^/v2/{REPO}/manifests/{arm64.digest}$", method="GET")

    blip = sync_registry(through_proxy)

    assert blip.errors == []
    # Neither the index nor its child that came through: the child alone would list as an
    # untagged image, which a retention rule for untagged images would delete.
    assert digests() == set()
    assert tags() == {}
    assert any(index.digest in w and "next sync" in w for w in blip.warnings)

    again = sync_registry(through_proxy)

    assert again.errors == []
    assert digests() == {index.digest, amd64.digest, arm64.digest}
    entries = IndexEntry.objects.filter(index__digest=index.digest)
    assert sorted(entries.values_list("child__digest", flat=True)) == sorted(
        [amd64.digest, arm64.digest]
    )
    assert tags() == {"v1": index.digest}
    assert Manifest.objects.get(digest=amd64.digest).is_top_level is False


def test_a_tag_moved_to_an_incomplete_index_keeps_its_previous_target_until_it_is_whole(
    pusher, sync, fault_proxy, through_proxy
):
    before = pusher.push_image(REPO, tag="v1", layers=[random_layer(64, "before")])
    sync()
    amd64 = pusher.push_image(REPO, layers=[random_layer(64, "amd64")])
    arm64 = pusher.push_image(REPO, layers=[random_layer(64, "arm64")], architecture="arm64")
    index = pusher.push_index(REPO, tag="v1", images=[amd64, arm64])
    fault_proxy.not_found(rf"^/v2/{REPO}/manifests/{arm64.digest}$", method="GET")

    sync_registry(through_proxy)

    assert digests() == {before.digest}
    assert tags() == {"v1": before.digest}
    sync_registry(through_proxy)
    assert tags() == {"v1": index.digest}
    assert IndexEntry.objects.filter(index__digest=index.digest).count() == 2


def test_a_pushed_index_whose_child_answered_404_waits_for_a_retry_instead_of_being_stored_in_part(
    pusher, fault_proxy, through_proxy
):
    amd64 = pusher.push_image(REPO, layers=[random_layer(64, "amd64")])
    arm64 = pusher.push_image(REPO, layers=[random_layer(64, "arm64")], architecture="arm64")
    index = pusher.push_index(REPO, tag="v1", images=[amd64, arm64])
    push = Event(
        id="push-index",
        action="push",
        occurred_at=timezone.now(),
        repository=REPO,
        digest=index.digest,
        tag="v1",
        media_type=media.OCI_INDEX,
        method="PUT",
        user_agent="docker/27.3.1",
    )
    events.record([push])
    fault_proxy.not_found(rf"^/v2/{REPO}/manifests/{arm64.digest}$", method="GET")

    events.process_received(through_proxy)

    assert digests() == set()
    row = RegistryEvent.objects.get(event_id="push-index")
    assert row.state == RegistryEvent.State.RECEIVED
    assert "could not be read" in row.message

    events.process_received(through_proxy)  # the retry

    assert digests() == {index.digest, amd64.digest, arm64.digest}
    assert IndexEntry.objects.filter(index__digest=index.digest).count() == 2
    assert tags() == {"v1": index.digest}
