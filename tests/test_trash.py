"""The Trash against a real registry (SPEC §12): what a deletion keeps, the states the
registry's answers give, restoring (an item, an operation, a retention run) and what the
real garbage collector leaves restorable."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from devtools.pusher import ImagePusher, PushedManifest, random_layer
from hubimages.deletion import execution, planning
from hubimages.models import Deletion, DeletionRecord, KeptManifest, Manifest, Repository
from registry.client import RegistryClient

REPO = "team/app"


def delete(client: RegistryClient, *digests: str, repository: str = REPO):
    repo = Repository.objects.select_related("registry").get(name=repository)
    preview = planning.plan_deletion(repository=repo, digests=list(digests))
    outcome = execution.execute_deletion(
        repository=repo,
        digests=list(digests),
        fingerprint=preview.fingerprint,
        user=None,
        client=client,
        username="alice",
    )
    assert outcome.succeeded, (outcome.failed, outcome.skipped)
    assert len(outcome.deleted) == len(preview.delete)
    return Deletion.objects.get(pk=outcome.operation_id)


def answers(pusher: ImagePusher, digest: str, repository: str = REPO) -> bool:
    return pusher.pull_manifest(repository, digest, method="HEAD").status_code == 200


@pytest.fixture
def scene(pusher: ImagePusher, sync):
    """A multi-arch index (two images sharing a base layer, their attestations) with a
    cosign signature and an OCI referrer, an untagged image, and an image that stays."""
    base = random_layer(3_000, "base")
    amd64 = pusher.push_image(REPO, layers=[base, random_layer(2_000, "amd64")])
    arm64 = pusher.push_image(
        REPO, layers=[base, random_layer(2_500, "arm64")], architecture="arm64", variant="v8"
    )
    index = pusher.push_index(REPO, tag="v1", images=[amd64, arm64], attestations=True)
    pusher.tag(REPO, "latest", index)
    signature = pusher.push_cosign_signature(REPO, index)
    sbom = pusher.push_referrer(REPO, index, payload=random_layer(700, "sbom"))
    fallback = pusher.pull_manifest(REPO, f"sha256-{index.hex}")
    old = pusher.push_image(REPO, tag="nightly", layers=[random_layer(1_500, "old")])
    stays = pusher.push_image(REPO, tag="stable", layers=[random_layer(1_200, "stays")])
    sync()
    pusher.push_image(REPO, tag="nightly", layers=[random_layer(1_500, "new")])
    sync()  # the old nightly stays known, untagged
    manifests: dict[str, PushedManifest] = {
        m.digest: m for m in [index, *index.children, signature, sbom, old]
    }
    return {
        "index": index,
        "signature": signature,
        "sbom": sbom,
        "old": old,
        "stays": stays,
        "manifests": manifests,
        "fallback": (fallback.headers["Docker-Content-Digest"], fallback.content),
    }


# -- keeping -----------------------------------------------------------------------------------


def test_every_manifest_a_deletion_sends_a_delete_for_is_kept_byte_for_byte_with_its_times(
    scene, registry_client
):
    index, old = scene["index"], scene["old"]
    fallback_digest, fallback_body = scene["fallback"]
    Manifest.objects.filter(digest=old.digest).update(
        pushed_at=timezone.now() - timedelta(days=40),
        pushed_at_estimated=False,
        last_pulled_at=timezone.now() - timedelta(days=3),
    )
    before = {
        row["digest"]: row
        for row in Manifest.objects.values(
            "digest", "pushed_at", "pushed_at_estimated", "last_pulled_at", "first_seen_at"
        )
    }

    operation = delete(registry_client, index.digest, old.digest)

    records = operation.records.select_related("kept")
    assert {r.state for r in records} == {"done"}
    expected = {d: m.body for d, m in scene["manifests"].items()} | {fallback_digest: fallback_body}
    assert {r.digest: bytes(r.kept.body) for r in records} == expected
    for record in records:
        kept = record.kept
        assert kept.media_type == scene["manifests"].get(record.digest, index).media_type
        row = before[record.digest]
        assert (kept.pushed_at, kept.pushed_at_estimated) == (
            row["pushed_at"],
            row["pushed_at_estimated"],
        )
        assert (kept.last_pulled_at, kept.first_seen_at) == (
            row["last_pulled_at"],
            row["first_seen_at"],
        )
    # What each record frees is what its kept blobs say, and they add up to the deletion's.
    assert sum(size for r in records for _, size, _ in r.kept.freed) == operation.reclaimed_bytes
    assert all(r.reclaimed_bytes == sum(size for _, size, _ in r.kept.freed) for r in records)
    assert KeptManifest.objects.count() == len(expected) == 9
    assert not DeletionRecord.objects.exclude(kept__isnull=False).exists()


def test_a_manifest_whose_bytes_cannot_be_kept_is_not_deleted_and_the_history_says_why(
    pusher, sync, fault_proxy
):
    doomed = pusher.push_image(REPO, tag="v1", layers=[random_layer(800, "doomed")])
    other = pusher.push_image(REPO, tag="v2", layers=[random_layer(800, "other")])
    sync()
    fault_proxy.answer(
        rf"/manifests/{doomed.digest}$",
        method="GET",
        status=500,
        json_body={"errors": [{"code": "UNKNOWN", "message": "storage backend unavailable"}]},
    )
    repo = Repository.objects.select_related("registry").get(name=REPO)
    digests = [doomed.digest, other.digest]
    preview = planning.plan_deletion(repository=repo, digests=digests)

    with RegistryClient(fault_proxy.url) as client:
        outcome = execution.execute_deletion(
            repository=repo,
            digests=digests,
            fingerprint=preview.fingerprint,
            user=None,
            client=client,
        )

    assert [item.digest for item in outcome.deleted] == [other.digest]
    [failed] = outcome.failed
    assert failed.digest == doomed.digest
    assert "could not be kept for the Trash first" in failed.reason
    assert "storage backend unavailable" in failed.reason
    assert ("DELETE", f"/v2/{REPO}/manifests/{doomed.digest}") not in fault_proxy.requests
    assert answers(pusher, doomed.digest) and not answers(pusher, other.digest)
    record = DeletionRecord.objects.get(digest=doomed.digest)
    assert record.state == "failed" and "Trash" in record.message
    assert not KeptManifest.objects.filter(record=record).exists()
    assert KeptManifest.objects.get().record.digest == other.digest


def test_a_manifest_the_registry_no_longer_has_counts_as_deleted_without_a_delete(
    pusher, sync, fault_proxy
):
    gone = pusher.push_image(REPO, tag="v1", layers=[random_layer(800, "gone")])
    sync()
    repo = Repository.objects.select_related("registry").get(name=REPO)
    preview = planning.plan_deletion(repository=repo, digests=[gone.digest])
    fault_proxy.answer(
        rf"/manifests/{gone.digest}$",
        method="GET",
        status=404,
        json_body={"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]},
    )

    with RegistryClient(fault_proxy.url) as client:
        outcome = execution.execute_deletion(
            repository=repo,
            digests=[gone.digest],
            fingerprint=preview.fingerprint,
            user=None,
            client=client,
        )

    assert [item.digest for item in outcome.deleted] == [gone.digest]
    assert not [r for r in fault_proxy.requests if r[0] == "DELETE"]
    record = DeletionRecord.objects.get()
    assert (record.state, record.message) == ("done", execution.GONE_ALREADY)
    assert not KeptManifest.objects.exists()
