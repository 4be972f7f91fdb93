"""What other clients do while a deletion runs (issue 18, items 8 and 17).

The OCI API cannot delete "this manifest unless someone just tagged it", so these races
cannot be closed, only narrowed and reported. Each test holds one DELETE in the fault proxy
(`meanwhile`) while another client pushes to the real registry and, as its notifications
would, records the push event; the deletion runs for real against the registry.
"""

from __future__ import annotations

import uuid

import pytest
from django.db import connection
from django.utils import timezone

from devtools.faultproxy import FaultProxy
from devtools.pusher import ImagePusher, PushedManifest, random_layer
from hubimages.deletion import execution, planning
from hubimages.models import Deletion, DeletionRecord, Repository
from hubimages.sync import events
from registry.client import RegistryClient
from registry.notifications import Event

REPO = "team/app"

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def through_proxy(fault_proxy: FaultProxy):
    with RegistryClient(fault_proxy.url) as client:
        yield client


def plan(*digests: str) -> planning.DeletionPlan:
    return planning.plan_deletion(
        repository=Repository.objects.get(name=REPO), digests=list(digests)
    )


def execute(client: RegistryClient, *digests: str) -> execution.DeletionOutcome:
    return execution.execute_deletion(
        repository=Repository.objects.get(name=REPO),
        digests=list(digests),
        fingerprint=plan(*digests).fingerprint,
        user=None,
        client=client,
    )


def another_client_pushes(pusher: ImagePusher, tag: str, manifest: PushedManifest) -> None:
    """Another client pushes `manifest` under `tag`, and its push event is recorded (the
    registry's notification), from the proxy's thread while it holds a request."""
    pusher.tag(REPO, tag, manifest)
    try:
        events.record(
            [
                Event(
                    id=str(uuid.uuid4()),
                    action="push",
                    occurred_at=timezone.now(),
                    repository=REPO,
                    digest=manifest.digest,
                    tag=tag,
                    media_type=manifest.media_type,
                    method="PUT",
                    user_agent="docker/27.3.1",
                )
            ]
        )
    finally:
        connection.close()


def registry_tags(pusher: ImagePusher) -> dict[str, str]:
    return {
        tag: pusher.pull_manifest(REPO, tag, method="HEAD").headers["Docker-Content-Digest"]
        for tag in pusher.list_tags(REPO)
    }


# -- item 8 ----------------------------------------------------------------------------------------


def test_tag_first_deletes_never_untag_a_newer_image_pushed_under_the_same_tag(
    pusher, sync, fault_proxy, through_proxy
):
    old = pusher.push_image(REPO, tag="latest", layers=[random_layer(64, "old")])
    sync()
    newer = pusher.push_image(REPO, layers=[random_layer(64, "newer")])
    # A registry that refuses to delete a manifest its tags still name (400), while another
    # client pushes a newer image as `latest`; it deletes tags alone (202), as 3.x does.
    fault_proxy.answer(
        rf"^/v2/{REPO}/manifests/{old.digest}$",
        method="DELETE",
        times=1,
        status=400,
        json_body={"errors": [{"code": "DENIED", "message": "manifest is still tagged"}]},
        meanwhile=lambda: pusher.tag(REPO, "latest", newer),
    )
    fault_proxy.answer(rf"^/v2/{REPO}/manifests/latest$", method="DELETE", status=202)

    outcome = execute(through_proxy, old.digest)

    assert ("DELETE", f"/v2/{REPO}/manifests/latest") not in fault_proxy.requests
    assert registry_tags(pusher) == {"latest": newer.digest}
    assert [item.digest for item in outcome.deleted] == [old.digest]


def test_a_manifest_pushed_again_during_the_deletion_is_kept(
    pusher, sync, fault_proxy, through_proxy
):
    first = pusher.push_image(REPO, tag="a", layers=[random_layer(64, "a")])
    second = pusher.push_image(REPO, tag="b", layers=[random_layer(64, "b")])
    sync()
    fault_proxy.meanwhile(
        rf"^/v2/{REPO}/manifests/{first.digest}$",
        lambda: another_client_pushes(pusher, "b-again", second),
        method="DELETE",
    )

    outcome = execute(through_proxy, first.digest, second.digest)

    assert "error" not in fault_proxy._faults[-1].options
    assert [item.digest for item in outcome.deleted] == [first.digest]
    assert [(item.digest, item.reason) for item in outcome.skipped] == [
        (second.digest, "kept: pushed again as b-again during the deletion")
    ]
    assert registry_tags(pusher) == {"b": second.digest, "b-again": second.digest}
    assert Deletion.objects.get().state == Deletion.State.PARTIAL
    assert set(DeletionRecord.objects.values_list("digest", flat=True)) == {first.digest}


# -- item 17 ---------------------------------------------------------------------------------------


@pytest.fixture
def index_and_untagged(pusher, sync):
    """An index (tag v1) of two images, and an untagged image (an old build of `latest`)."""
    c1 = pusher.push_image(REPO, layers=[random_layer(64, "c1")])
    c2 = pusher.push_image(REPO, layers=[random_layer(64, "c2")], architecture="arm64")
    index = pusher.push_index(REPO, tag="v1", images=[c1, c2])
    untagged = pusher.push_image(REPO, tag="latest", layers=[random_layer(64, "old")])
    sync()
    pusher.push_image(REPO, tag="latest", layers=[random_layer(64, "new")])
    sync()
    return index, c1, c2, untagged


def test_tags_and_indexes_pushed_during_a_slow_delete_keep_what_they_name(
    pusher, fault_proxy, through_proxy, index_and_untagged
):
    index, c1, c2, untagged = index_and_untagged
    other = pusher.push_image(REPO, layers=[random_layer(64, "other")], architecture="s390x")
    pushed: list[PushedManifest] = []

    def meanwhile() -> None:  # no notifications: only the registry itself can tell
        pusher.tag(REPO, "c1", c1)
        pusher.tag(REPO, "keep-old", untagged)
        pushed.append(pusher.push_index(REPO, tag="v2", images=[c2, other]))

    fault_proxy.meanwhile(rf"^/v2/{REPO}/manifests/{index.digest}$", meanwhile, method="DELETE")

    outcome = execute(through_proxy, index.digest, untagged.digest)

    assert "error" not in fault_proxy._faults[-1].options
    [v2] = pushed
    assert [item.digest for item in outcome.deleted] == [index.digest]
    assert sorted((item.digest, item.reason) for item in outcome.skipped) == sorted(
        [
            (c1.digest, "kept: tagged c1 during the deletion"),
            (c2.digest, f"kept: listed by index {v2.digest} (tag v2), pushed during the deletion"),
            (untagged.digest, "kept: tagged keep-old during the deletion"),
        ]
    )
    tags = registry_tags(pusher)
    assert {tags["c1"], tags["keep-old"], tags["v2"]} == {c1.digest, untagged.digest, v2.digest}
    for child in (c2, other):  # the index pushed meanwhile is whole
        assert pusher.pull_manifest(REPO, child.digest, method="HEAD").status_code == 200
    assert outcome.warnings == ()


def test_what_a_push_during_the_last_deletes_did_is_reported_in_the_outcome_and_history(
    pusher, fault_proxy, through_proxy, index_and_untagged
):
    index, c1, c2, untagged = index_and_untagged
    pushed: list[PushedManifest] = []
    # While c1's DELETE is held, a tag is pushed onto it (with its event): the DELETE takes
    # it. While c2's is held, an index listing c2 is pushed: the DELETE leaves it dangling.
    fault_proxy.meanwhile(
        rf"^/v2/{REPO}/manifests/{c1.digest}$",
        lambda: another_client_pushes(pusher, "c1-late", c1),
        method="DELETE",
    )
    fault_proxy.meanwhile(
        rf"^/v2/{REPO}/manifests/{c2.digest}$",
        lambda: pushed.append(pusher.push_index(REPO, tag="v2", images=[c2])),
        method="DELETE",
    )

    outcome = execute(through_proxy, index.digest)

    [v2] = pushed
    assert [item.digest for item in outcome.deleted][0] == index.digest
    assert {item.digest for item in outcome.deleted} == {index.digest, c1.digest, c2.digest}
    assert outcome.warnings == (
        f"tag c1-late, pushed during the deletion, went with {c1.digest}",
        f"index {v2.digest} (tag v2), pushed during the deletion, lists {c2.digest}, which "
        "this deletion deleted: the index now points at a missing manifest (push that "
        "manifest again, or delete the index)",
    )
    operation = Deletion.objects.get()
    assert operation.message == "; ".join(outcome.warnings)
    assert DeletionRecord.objects.get(digest=c1.digest).tags == ["c1-late"]
