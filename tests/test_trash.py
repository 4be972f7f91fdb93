"""The Trash against a real registry (SPEC §12): what a deletion keeps, the states the
registry's answers give, restoring (an item, an operation, a retention run) and what the
real garbage collector leaves restorable."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from devtools.pusher import ImagePusher, PushedManifest, random_layer
from devtools.server import LocalRegistry
from devtools.worker import run_tasks
from hubimages.deletion import execution, planning
from hubimages.jobs import queue, worker
from hubimages.lib import leases
from hubimages.models import (
    Deletion,
    DeletionRecord,
    Job,
    KeptManifest,
    Lease,
    Manifest,
    Repository,
    RetentionRun,
    StorageSample,
)
from hubimages.registries import rows
from hubimages.registries.client import ClientsByRegistry
from hubimages.registries.client import registry_client as registry_client_of
from hubimages.registries.config import RegistryConfig
from hubimages.retention import engine, policies, runs
from hubimages.storage import collection
from hubimages.storage import figures as storage_figures
from hubimages.sync import rollups
from hubimages.sync.service import sync_registry
from hubimages.trash import listing, states
from hubimages.trash import restore as restore_module
from hubimages.trash.restore import RestoreOutcome, RestoreRefused, restore_operations
from registry.client import RegistryClient
from registry.errors import RegistryError

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


def restore(
    client: RegistryClient, *operations: Deletion, digests=None, move_tags: bool = False
) -> RestoreOutcome:
    return restore_operations(
        list(operations),
        digests=digests,
        move_tags=move_tags,
        client_for=lambda registry: client,
        username="bob",
    )


def registry_tags(client: RegistryClient, repository: str = REPO) -> dict[str, str]:
    return {
        tag: client.head_manifest(repository, tag).digest for tag in client.list_tags(repository)
    }


def pull(client: RegistryClient, reference: str, repository: str = REPO) -> list[str]:
    """What `docker pull` fetches: the manifest by tag, an index's children, each image's
    config and layers, every one verified against its digest. Returns the blobs read."""
    fetched = client.get_manifest(repository, reference)
    manifests = [fetched] + [
        client.get_manifest(repository, child.digest) for child in fetched.parsed.manifests
    ]
    blobs = []
    for manifest in manifests:
        parsed = manifest.parsed
        for blob in ([parsed.config] if parsed.config else []) + parsed.layers:
            client.get_blob(repository, blob.digest)
            blobs.append(blob.digest)
    return blobs


TIMES = ("pushed_at", "pushed_at_estimated", "last_pulled_at", "first_seen_at")


def database(repository: str = REPO) -> dict[str, tuple]:
    """Each stored manifest's digest -> kind, tags and times."""
    rows = Manifest.objects.filter(repository__name=repository).prefetch_related("tags")
    return {
        row.digest: (
            row.kind,
            sorted(t.name for t in row.tags.all()),
            *(getattr(row, f) for f in TIMES),
        )
        for row in rows
    }


DERIVED = ("digest", "is_top_level", "is_tagged", "total_size", "subject_id", "pushed_at")


def derived(repository: str = REPO) -> tuple:
    """What the list reads besides the manifests themselves: each manifest's derived columns
    and the repository's counts per filter."""
    rows = Manifest.objects.filter(repository__name=repository).order_by("digest")
    counts = Repository.objects.get(name=repository).list_counts
    return list(rows.values_list(*DERIVED)), counts


def rederived(repository: str = REPO) -> tuple:
    """The same, computed again over the whole repository (what a sync does)."""
    rollups.refresh(Repository.objects.get(name=repository))
    return derived(repository)


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


# -- restoring ---------------------------------------------------------------------------------


def test_a_deletion_restored_whole_is_back_byte_for_byte_tagged_pullable_and_survives_gc(
    scene, registry_server, registry_client, pusher
):
    """Then deleted again and collected: Lost, refused with the reason, nothing half back."""
    index, old = scene["index"], scene["old"]
    fallback_digest, fallback_body = scene["fallback"]
    bodies = {d: m.body for d, m in scene["manifests"].items()} | {fallback_digest: fallback_body}
    Manifest.objects.filter(digest=old.digest).update(
        pushed_at=timezone.now() - timedelta(days=90),
        pushed_at_estimated=False,
        last_pulled_at=timezone.now() - timedelta(days=30),
    )
    registry_server.garbage_collect()  # only this test's effect is measured below
    stored = registry_server.blob_bytes_on_disk()
    tags, before = registry_tags(registry_client), database()

    operation = delete(registry_client, index.digest, old.digest)
    assert not any(answers(pusher, digest) for digest in bodies)
    assert sorted(registry_tags(registry_client)) == ["nightly", "stable"]
    assert collection.waiting_for_collection().bytes == operation.reclaimed_bytes > 0

    outcome = restore(registry_client, operation)

    assert outcome.complete and outcome.failed == [] and outcome.conflicts == []
    assert {item["digest"] for item in outcome.restored} == set(bodies)
    order = [item["digest"] for item in outcome.restored].index  # children, subjects first
    assert all(order(child) < order(index.digest) for child in index.child_digests)
    assert order(index.digest) < order(scene["signature"].digest)
    assert order(index.digest) < order(scene["sbom"].digest) < order(fallback_digest)
    for digest, body in bodies.items():
        fetched = registry_client.get_manifest(REPO, digest)
        assert fetched.body == body
    assert registry_tags(registry_client) == tags
    assert database() == before  # kinds, tags, Last pushed and Last pulled as they were
    assert derived() == rederived()  # the list's columns and counts, kept as a sync would
    assert set(pull(registry_client, "v1")) >= set(index.children[0].blob_digests)
    pull(registry_client, "nightly")
    assert {r.state for r in operation.records.all()} == {"restored"}
    assert {r.restored_by for r in operation.records.all()} == {"bob"}
    operation.refresh_from_db()
    assert operation.reclaimed_bytes == 0  # nothing of it waits for the collector now
    assert collection.waiting_for_collection().bytes == 0
    registry_server.garbage_collect()
    assert registry_server.blob_bytes_on_disk() == stored  # it frees nothing of them
    assert all(answers(pusher, digest) for digest in bodies)
    pull(registry_client, "v1")

    again = restore(registry_client, operation)
    assert again.restored == [] and len(again.already) == len(bodies)
    assert "nothing more to restore" in again.message()
    assert again.complete

    second = delete(registry_client, index.digest, old.digest)
    registry_server.garbage_collect()
    states.check_registry(rows.get(), registry_client)
    assert {r.kept.state for r in second.records.select_related("kept")} == {"lost"}

    for deletion in (second, operation):
        with pytest.raises(RestoreRefused, match="is lost: the garbage collector removed"):
            restore(registry_client, deletion)
    assert not any(answers(pusher, digest) for digest in bodies)  # nothing half restored
    assert sorted(registry_tags(registry_client)) == ["nightly", "stable"]
    assert scene["stays"].digest in database() and not set(database()) & set(bodies)
    assert {r.state for r in second.records.all()} == {"done"}


def test_a_retention_run_undone_as_a_whole_brings_back_exactly_what_it_deleted(
    pusher, sync, registry_client, registry_url
):
    web = "team/web"
    pusher.push_image(REPO, tag="v1", layers=[random_layer(600, "app-v1")])
    pusher.push_image(REPO, tag="main-1", layers=[random_layer(600, "main-1")])
    pusher.push_image(REPO, tag="main-2", layers=[random_layer(600, "main-2")])
    pusher.push_image(web, tag="v1", layers=[random_layer(600, "web-v1")])
    amd64 = pusher.push_image(web, layers=[random_layer(600, "pr-amd64")])
    arm64 = pusher.push_image(web, layers=[random_layer(600, "pr-arm64")], architecture="arm64")
    pusher.push_index(web, tag="pr-3", images=[amd64, arm64], attestations=True)
    sync()
    before = {name: (registry_tags(registry_client, name), database(name)) for name in (REPO, web)}
    policy = policies.parse_policy(
        {"name": "ci", "repositories": ["team/**"], "rules": [{"keep": "always", "tags": ["v*"]}]}
    )
    dry = engine.dry_run(policy, now=timezone.now())
    result = runs.run(
        policy=policy,
        now=dry.now,
        fingerprint=dry.fingerprint,
        client_for=lambda registry: registry_client,
        trigger=RetentionRun.Trigger.MANUAL,
        started_by="tester",
    )
    assert result.record.manifests_deleted == 7
    operations = list(result.record.deletions.order_by("pk"))
    assert [op.repository for op in operations] == [REPO, web]
    assert {op.pk for op in listing.operations()} == {op.pk for op in operations}
    assert sorted(registry_tags(registry_client, web)) == ["v1"]
    storage_figures.record_change()  # what the worker that ran the retention job does then

    job = queue.start_restore(operations=operations, started_by="bob")
    run_tasks()

    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED, job.message
    assert len(job.outcome["restored"]) == 7
    # The worker that ran the restore added a point of the storage history: back up to
    # what the full sync saw, not at the next full sync.
    synced, deleted, restored = StorageSample.objects.values_list("stored_bytes", flat=True)
    assert deleted < synced == restored == storage_figures.figures()["history"][-1]["stored_bytes"]
    assert job.outcome["operations"] == [op.pk for op in operations]
    for name in (REPO, web):
        assert (registry_tags(registry_client, name), database(name)) == before[name]
        assert derived(name) == rederived(name)


def test_a_tag_that_now_names_another_image_is_a_conflict_moved_back_only_when_asked(
    pusher, sync, registry_client, deleter_client
):
    first = pusher.push_image(REPO, tag="v1", layers=[random_layer(700, "first")])
    pusher.tag(REPO, "stable", first)
    sync()
    operation = delete(registry_client, first.digest)
    newer = pusher.push_image(REPO, tag="v1", layers=[random_layer(700, "newer")])

    outcome = restore(registry_client, operation)

    assert outcome.complete and [i["digest"] for i in outcome.restored] == [first.digest]
    assert outcome.conflicts == [
        {"tag": "v1", "digest": first.digest, "now": newer.digest, "moved": False}
    ]
    assert outcome.tags == [{"tag": "stable", "digest": first.digest}]
    assert "left alone (v1)" in outcome.message()
    assert registry_tags(registry_client) == {"v1": newer.digest, "stable": first.digest}
    # The Trash shows the conflict left, and offers to move the tag back.
    [shown] = listing.with_items([operation])
    assert shown.items[0].conflicts == ({"tag": "v1", "now": newer.digest},)
    assert shown.conflicts == 1 and not shown.may_restore
    page = deleter_client.get("/trash/").content.decode()
    assert f'now names <code title="{newer.digest}">' in page
    assert "Move tags back (1 item)" in page

    answer = deleter_client.post(
        f"/trash/{operation.pk}/restore", {"scope": "all", "move_tags": "yes"}
    )
    run_tasks()

    job = Job.objects.get(kind="restore")
    assert answer.status_code == 303 and job.state == Job.State.SUCCEEDED, job.message
    assert [c["moved"] for c in job.outcome["conflicts"]] == [True]
    assert registry_tags(registry_client) == {"v1": first.digest, "stable": first.digest}
    assert sorted(database()[first.digest][1]) == ["stable", "v1"]
    [shown] = listing.with_items([operation])
    assert shown.items[0].conflicts == () and shown.conflicts == 0
    assert "Move tags back" not in deleter_client.get("/trash/").content.decode()


def test_a_digest_the_registry_answers_wrongly_fails_that_item_and_what_needs_it(
    pusher, sync, fault_proxy
):
    amd64 = pusher.push_image(REPO, layers=[random_layer(700, "amd64")])
    arm64 = pusher.push_image(REPO, layers=[random_layer(700, "arm64")], architecture="arm64")
    index = pusher.push_index(REPO, tag="v1", images=[amd64, arm64])
    sync()
    with RegistryClient(fault_proxy.url) as client:
        operation = delete(client, index.digest)
        freed = operation.reclaimed_bytes
        other = "sha256:" + "e" * 64
        fault_proxy.answer(
            rf"/manifests/{arm64.digest}$",
            method="PUT",
            status=201,
            headers={"Docker-Content-Digest": other},
        )

        outcome = restore(client, operation)

    assert not outcome.complete
    assert [i["digest"] for i in outcome.restored] == [amd64.digest]
    reasons = {item["digest"]: item["reason"] for item in outcome.failed}
    assert set(reasons) == {arm64.digest, index.digest}
    assert f"the registry stored {other}, not {arm64.digest}" in reasons[arm64.digest]
    assert reasons[index.digest].startswith("not restored:")
    assert derived() == rederived()  # half of an index back: an image of its own for now
    assert not answers(pusher, index.digest) and not answers(pusher, arm64.digest)
    assert pusher.list_tags(REPO) == []
    records = {r.digest: r for r in operation.records.select_related("kept")}
    assert records[amd64.digest].state == "restored"
    assert records[index.digest].state == "done"
    assert "stored" in records[arm64.digest].kept.message
    # What came back no longer waits for the collector; the probe is one still deleted.
    operation.refresh_from_db()
    assert operation.reclaimed_bytes == freed - (amd64.size + amd64.config_size + 700)
    assert operation.probe_digest == arm64.layer_digests[0]
    assert collection.waiting_for_collection().bytes == operation.reclaimed_bytes

    fault_proxy.clear()
    with RegistryClient(fault_proxy.url) as client:
        rest = restore(client, operation)  # the rest, now that the registry answers true
    assert rest.complete and {i["digest"] for i in rest.restored} == {arm64.digest, index.digest}
    assert [i["digest"] for i in rest.already] == [amd64.digest]
    assert answers(pusher, "v1")


def test_a_restore_whose_repository_lease_is_taken_over_sends_no_further_put(
    pusher, sync, registry_client, fault_proxy
):
    """Fenced as deletions are: a restore whose host stalled past its lease, taken over by
    another process, stops before its next PUT; run again, it brings the rest back."""
    images = [
        pusher.push_image(REPO, tag=f"v{n}", layers=[random_layer(300, f"fenced-{n}")])
        for n in range(4)
    ]
    sync()
    operation = delete(registry_client, *(image.digest for image in images))
    name = leases.repository_lease_name(REPO)
    stolen = []

    def stall_at_the_second(line: str) -> None:
        if line.startswith("Restoring 2 of"):
            Lease.objects.filter(name=name).update(expires_at=timezone.now() - timedelta(seconds=5))
            stolen.append(leases.acquire(name, owner="thief"))

    with RegistryClient(fault_proxy.url) as client, pytest.raises(leases.LeaseLost):
        restore_operations(
            [operation],
            client_for=lambda registry: client,
            username="bob",
            progress=stall_at_the_second,
        )

    puts = [path for method, path in fault_proxy.requests if method == "PUT"]
    assert len(puts) == 2 and stolen[0] is not None  # the one under way when it was taken
    assert sum(answers(pusher, image.digest) for image in images) == 2
    assert {r.state for r in operation.records.all()} == {"done"}
    leases.release(stolen[0])

    again = restore(registry_client, operation)

    assert again.complete and len(again.restored) == 4
    assert registry_tags(registry_client) == {f"v{n}": i.digest for n, i in enumerate(images)}


def test_an_index_restored_alone_brings_its_children_and_a_shared_layer_leaves_one_partly_lost(
    pusher, sync, registry_client, registry_server
):
    base = random_layer(900, "base")
    amd64 = pusher.push_image(REPO, layers=[base, random_layer(700, "amd64")])
    arm64 = pusher.push_image(REPO, layers=[random_layer(700, "arm64")], architecture="arm64")
    index = pusher.push_index(REPO, tag="v1", images=[amd64, arm64])
    solo = pusher.push_image(REPO, tag="solo", layers=[base, random_layer(800, "solo")])
    pusher.push_image(REPO, tag="base", layers=[base])  # keeps the base layer
    sync()
    operation = delete(registry_client, index.digest, solo.digest)

    states.check_registry(rows.get(), registry_client)
    assert {i.digest: i.state for i in listing.with_items([operation])[0].items} == {
        index.digest: "restorable",
        amd64.digest: "restorable",
        arm64.digest: "restorable",
        solo.digest: "restorable",
    }

    outcome = restore(registry_client, operation, digests=[index.digest])

    restored = [i["digest"] for i in outcome.restored]
    assert set(restored[:2]) == {amd64.digest, arm64.digest} and restored[2:] == [index.digest]
    assert not answers(pusher, solo.digest)
    assert derived() == rederived()

    pusher.delete_manifest(REPO, index.digest)
    pusher.delete_manifest(REPO, arm64.digest)  # someone else's deletion: not in the Trash
    registry_server.garbage_collect()
    states.check_registry(rows.get(), registry_client)

    [item] = [i for i in listing.with_items([operation])[0].items if i.digest == solo.digest]
    assert item.state == "partly_lost"  # its own layer went, the shared base stayed
    assert set(item.missing) == {solo.config_digest, solo.layer_digests[1]}
    assert item.checked_at is not None
    with pytest.raises(RestoreRefused, match="is partly lost: the registry no longer has"):
        restore(registry_client, operation, digests=[solo.digest])
    with pytest.raises(RestoreRefused, match="not in the Trash of deletion"):
        restore(registry_client, operation, digests=["sha256:" + "0" * 64])


def test_after_a_full_sync_notices_a_collection_the_workers_check_the_trash(
    scene, registry_server, registry_client, registry_url
):
    operation = delete(registry_client, scene["old"].digest)
    queue.start_sync(registry="default")
    run_tasks()
    kept = KeptManifest.objects.get(record__operation=operation)
    assert (kept.state, kept.checked_at) == ("unchecked", None)  # nothing collected yet

    registry_server.garbage_collect()
    job = queue.start_sync(registry="default")
    run_tasks()

    assert Job.objects.get(pk=job.pk).state == Job.State.SUCCEEDED
    kept.refresh_from_db()
    assert kept.state == "lost" and kept.checked_at is not None
    operation.refresh_from_db()
    assert operation.collected_at is not None
    assert collection.reclaimed().bytes == operation.reclaimed_bytes > 0
    assert collection.waiting_for_collection().bytes == 0


def test_a_check_the_registry_fails_midway_stores_no_state_at_all(
    scene, registry_client, fault_proxy
):
    operation = delete(registry_client, scene["index"].digest, scene["old"].digest)
    arm64 = scene["index"].children[1]
    fault_proxy.answer(rf"/blobs/{arm64.layer_digests[1]}$", method="HEAD", status=500)

    with RegistryClient(fault_proxy.url) as client, pytest.raises(RegistryError):
        states.check_registry(rows.get(), client)

    kept = KeptManifest.objects.filter(record__operation=operation)
    assert set(kept.values_list("state", "checked_at")) == {("unchecked", None)}


def test_check_now_is_a_job_that_asks_the_registry(scene, registry_client, registry_url):
    operation = delete(registry_client, scene["old"].digest)

    job = queue.start_trash_check(registry="default", started_by="bob")
    assert queue.start_trash_check(registry="default") == job  # a second click follows it
    run_tasks()

    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED
    assert job.outcome == {"registry": "default", "states": {"restorable": 1}}
    assert KeptManifest.objects.get(record__operation=operation).state == "restorable"


def test_the_trash_forgets_what_it_kept_after_trash_keep_days(scene, registry_client, settings):
    settings.TRASH_KEEP_DAYS = 14
    operation = delete(registry_client, scene["old"].digest)
    fresh = delete(registry_client, scene["index"].digest)
    operation.records.update(deleted_at=timezone.now() - timedelta(days=15))

    assert [op.pk for op in listing.operations()] == [fresh.pk]  # no longer offered
    with pytest.raises(RestoreRefused, match="not in the Trash"):
        restore(registry_client, operation, digests=[scene["old"].digest])

    worker.housekeeping(timezone.now())

    assert not KeptManifest.objects.filter(record__operation=operation).exists()
    assert KeptManifest.objects.filter(record__operation=fresh).count() == 8
    assert operation.records.get().state == "done"  # the history keeps its record


# -- several registries ------------------------------------------------------------------------


@pytest.fixture
def prod_and_staging(tmp_path, settings, db):
    """Two registries holding the same image (the same digest) in a repository of the same
    name, synced."""
    with (
        LocalRegistry(tmp_path / "prod") as prod,
        LocalRegistry(tmp_path / "staging") as staging,
    ):
        settings.REGISTRY_URL = ""
        settings.REGISTRIES = [
            RegistryConfig(name="prod", url=prod.url),
            RegistryConfig(name="staging", url=staging.url),
        ]
        layers = [random_layer(2_000, "same in both")]
        images = {}
        for name, server in (("prod", prod), ("staging", staging)):
            images[name] = ImagePusher(server.url).push_image(REPO, tag="v1", layers=layers)
            with registry_client_of(rows.get(name)) as client:
                assert sync_registry(client, registry=rows.get(name), workers=2).errors == []
        yield {"prod": prod, "staging": staging, "image": images["staging"]}


def test_a_restore_puts_back_into_its_own_registry_under_that_registrys_repository_lease(
    prod_and_staging, monkeypatch, admin_client
):
    image = prod_and_staging["image"]
    staging = Repository.objects.select_related("registry").get(registry__name="staging", name=REPO)
    plan = planning.plan_deletion(repository=staging, digests=[image.digest])
    with registry_client_of(staging.registry) as client:
        outcome = execution.execute_deletion(
            repository=staging,
            digests=[image.digest],
            fingerprint=plan.fingerprint,
            user=None,
            client=client,
            username="alice",
        )
    operation = Deletion.objects.get(pk=outcome.operation_id)
    assert operation.registry == "staging"
    assert [op.pk for op in listing.operations("staging")] == [operation.pk]
    assert not listing.operations("prod").exists()
    api = {
        name: admin_client.get(f"/api/v1/trash?registry={name}").json()
        for name in ("prod", "staging")
    }
    assert api["prod"]["count"] == 0 and api["staging"]["count"] == 1
    assert api["staging"]["results"][0]["registry"] == "staging"
    page = admin_client.get("/trash/?registry=staging").content.decode()
    assert f'id="operation-{operation.pk}"' in page and f"/r/staging/{REPO}/" in page
    assert (
        f'id="operation-{operation.pk}"'
        not in admin_client.get("/trash/?registry=prod").content.decode()
    )
    prod = RegistryClient(prod_and_staging["prod"].url)
    assert prod.head_manifest(REPO, image.digest) is not None  # prod's copy never touched

    # Another process holds staging's team/app: the restore waits for that lease, not prod's.
    monkeypatch.setattr(restore_module, "LOCK_WAIT_SECONDS", 0.2)
    held = leases.acquire(leases.repository_lease_name(REPO, "staging"), owner="someone")
    with ClientsByRegistry() as client_for, pytest.raises(leases.RepositoryBusy, match="staging/"):
        restore_operations([operation], client_for=client_for, username="bob")
    leases.release(held)
    assert leases.repository_lease_name(REPO, "staging") == f"repository:staging/{REPO}"
    prod_held = leases.acquire(leases.repository_lease_name(REPO, "prod"), owner="someone")

    job = queue.start_restore(operations=[operation], started_by="bob")
    run_tasks()

    leases.release(prod_held)
    job.refresh_from_db()
    assert (job.state, job.registry) == (Job.State.SUCCEEDED, "staging"), job.message
    staging_client = RegistryClient(prod_and_staging["staging"].url)
    assert staging_client.get_manifest(REPO, "v1").body == image.body
    assert Manifest.objects.filter(
        repository__registry__name="staging", repository__name=REPO, digest=image.digest
    ).exists()
    assert Manifest.objects.filter(repository__registry__name="prod", digest=image.digest).exists()
    assert {r.state for r in operation.records.all()} == {"restored"}
