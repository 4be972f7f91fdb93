"""The deletion planner and executor against a real registry (SPEC §4, §6)."""

import pytest
import responses

from devtools.pusher import PushedManifest, random_layer
from hubimages.deletion import execution, planning
from hubimages.lib import leases
from hubimages.lib.formatting import short_digest
from hubimages.models import DeletionRecord, Manifest, Repository, Tag
from hubimages.sync import store
from hubimages.sync.service import sync_repository

REPO = "team/app"


def stored_bytes(*manifests: PushedManifest, extra: dict[str, int] | None = None) -> int:
    """The distinct blobs the manifests hold: their own bytes, configs and layers."""
    sizes = dict(extra or {})
    for manifest in manifests:
        sizes[manifest.digest] = manifest.size
        if manifest.config_digest:
            sizes[manifest.config_digest] = manifest.config_size
        sizes.update(zip(manifest.layer_digests, manifest.layer_sizes, strict=True))
    return sum(sizes.values())


def plan(*digests: str, repository: str = REPO) -> planning.DeletionPlan:
    return planning.plan_deletion(
        repository=Repository.objects.get(name=repository), digests=list(digests)
    )


def execute(client, *digests: str, fingerprint: str, user=None, repository: str = REPO):
    return execution.execute_deletion(
        repository=Repository.objects.get(name=repository),
        digests=list(digests),
        fingerprint=fingerprint,
        user=user,
        client=client,
    )


def digests_in_database(repository: str = REPO) -> set[str]:
    return set(
        Manifest.objects.filter(repository__name=repository).values_list("digest", flat=True)
    )


def digests_in_registry(pusher, candidates, repository: str = REPO) -> set[str]:
    return {
        digest
        for digest in candidates
        if pusher.pull_manifest(repository, digest, method="HEAD").status_code == 200
    }


@pytest.fixture
def multi_arch(pusher):
    """An index with two images (and their attestations), an image it shares with an index
    that stays, a child with its own tag, an OCI referrer and a cosign signature."""
    base = random_layer(3_000, "base")
    amd64 = pusher.push_image(REPO, layers=[base, random_layer(2_000, "amd64")])
    arm64 = pusher.push_image(
        REPO, layers=[base, random_layer(2_500, "arm64")], architecture="arm64", variant="v8"
    )
    shared = pusher.push_image(
        REPO, layers=[base, random_layer(1_000, "s390x")], architecture="s390x"
    )
    tagged = pusher.push_image(
        REPO, tag="ppc-only", layers=[random_layer(700, "ppc")], architecture="ppc64le"
    )
    index = pusher.push_index(
        REPO, tag="v2", images=[amd64, arm64, shared, tagged], attestations=[amd64, arm64]
    )
    stays = pusher.push_index(REPO, tag="stable", images=[shared])
    sbom = pusher.push_referrer(REPO, index)
    signature = pusher.push_cosign_signature(REPO, index)
    fallback = pusher.pull_manifest(REPO, f"sha256-{index.hex}")
    return {
        "amd64": amd64,
        "arm64": arm64,
        "shared": shared,
        "tagged": tagged,
        "index": index,
        "attestations": index.children[4:],
        "stays": stays,
        "sbom": sbom,
        "signature": signature,
        "fallback": (fallback.headers["Docker-Content-Digest"], len(fallback.content)),
    }


def test_an_index_takes_its_unshared_images_attestations_and_referrers(multi_arch, sync):
    sync()
    m = multi_arch
    index, fallback_digest = m["index"], m["fallback"][0]

    result = plan(index.digest)

    because = {item.digest: item.because for item in result.delete}
    short = short_digest
    assert because == {
        index.digest: "selected",
        m["amd64"].digest: f"only used by index {short(index.digest)}",
        m["arm64"].digest: f"only used by index {short(index.digest)}",
        m["attestations"][0].digest: f"only used by index {short(index.digest)}",
        m["attestations"][1].digest: f"only used by index {short(index.digest)}",
        fallback_digest: f"referrer of {short(index.digest)}",
        m["sbom"].digest: f"referrer of {short(index.digest)}",
        m["signature"].digest: f"referrer of {short(index.digest)}",
    }
    assert result.delete[0].digest == index.digest
    assert {item.group for item in result.delete} == {index.digest}
    kinds = {item.digest: item.kind for item in result.delete}
    assert kinds[m["attestations"][0].digest] == "attestation"
    assert kinds[m["signature"].digest] == "artifact"
    platforms = {item.digest: item.platform for item in result.delete}
    assert platforms[m["arm64"].digest] == "linux/arm64/v8"
    assert [(k.digest, k.reason) for k in sorted(result.keep, key=lambda k: k.reason)] == [
        (m["tagged"].digest, "has its own tag ppc-only"),
        (m["shared"].digest, f"used by index {short(m['stays'].digest)}, which stays"),
    ]
    assert result.tags_removed == tuple(
        sorted(["v2", f"sha256-{index.hex}", f"sha256-{index.hex}.sig"])
    )
    assert result.refused == ()
    # The base layer stays with the shared image: everything else these manifests hold goes.
    assert result.reclaimable_bytes == stored_bytes(
        index,
        m["sbom"],
        m["signature"],
        *m["attestations"],
        extra={
            m["amd64"].digest: m["amd64"].size,
            m["amd64"].config_digest: m["amd64"].config_size,
            m["amd64"].layer_digests[1]: m["amd64"].layer_sizes[1],
            m["arm64"].digest: m["arm64"].size,
            m["arm64"].config_digest: m["arm64"].config_size,
            m["arm64"].layer_digests[1]: m["arm64"].layer_sizes[1],
            fallback_digest: m["fallback"][1],
        },
    )
    assert plan(index.digest).fingerprint == result.fingerprint


def test_deleting_the_index_that_kept_a_shared_image_takes_it_too(multi_arch, sync):
    sync()
    m = multi_arch

    result = plan(m["index"].digest, m["stays"].digest)

    deleted = {item.digest: item for item in result.delete}
    assert m["shared"].digest in deleted
    assert deleted[m["shared"].digest].group == m["index"].digest  # the first selection
    assert [k.digest for k in result.keep] == [m["tagged"].digest]
    assert [group for group, _ in result.groups()] == [m["index"].digest, m["stays"].digest]


def test_selecting_a_child_of_an_index_that_stays_is_refused_with_a_reason(multi_arch, sync):
    sync()
    m = multi_arch
    unknown = "sha256:" + "0" * 64

    result = plan(m["amd64"].digest, unknown, m["tagged"].digest)

    short = short_digest
    assert [(r.digest, r.reason) for r in result.refused] == [
        (
            m["amd64"].digest,
            f"used by index {short(m['index'].digest)}, which stays — "
            "delete the index instead or remove it from the index first",
        ),
        (unknown, f"not in repository {REPO}"),
        (
            m["tagged"].digest,
            f"used by index {short(m['index'].digest)}, which stays — "
            "delete the index instead or remove it from the index first",
        ),
    ]
    assert result.delete == ()
    assert result.reclaimable_bytes == 0
    # With its index selected too, the same child is simply part of the plan.
    both = plan(m["index"].digest, m["tagged"].digest)
    assert both.refused == ()
    assert {i.digest: i.because for i in both.delete}[m["tagged"].digest] == "selected"
    assert "ppc-only" in both.tags_removed


def test_deleting_an_image_removes_every_tag_on_its_digest_as_the_plan_said(
    pusher, sync, registry_client, deleter
):
    image = pusher.push_image(REPO, tag="v1", layers=[random_layer(4_000, "v1")])
    pusher.tag(REPO, "latest", image)
    pusher.tag(REPO, "prod", image)
    other = pusher.push_image(REPO, tag="v0", layers=[random_layer(4_000, "v0")])
    sync()

    preview = plan(image.digest[7:])  # without sha256:, as a person might type it

    assert [(i.digest, i.tags) for i in preview.delete] == [
        (image.digest, ("latest", "prod", "v1"))
    ]
    assert preview.tags_removed == ("latest", "prod", "v1")
    assert preview.reclaimable_bytes == stored_bytes(image)

    outcome = execute(registry_client, image.digest, fingerprint=preview.fingerprint, user=deleter)

    assert outcome.succeeded and not outcome.stale
    assert [i.digest for i in outcome.deleted] == [image.digest]
    assert outcome.reclaimed_bytes == preview.reclaimable_bytes
    assert pusher.list_tags(REPO) == ["v0"]
    assert digests_in_database() == {other.digest}
    assert set(Tag.objects.values_list("name", flat=True)) == {"v0"}
    record = DeletionRecord.objects.get()
    assert (record.user, record.username, record.repository, record.digest) == (
        deleter,
        "deleter",
        REPO,
        image.digest,
    )
    assert (record.kind, record.tags, record.size) == (
        "image",
        ["latest", "prod", "v1"],
        image.config_size + 4_000,
    )
    assert record.reclaimed_bytes == preview.reclaimable_bytes
    assert Repository.objects.get(name=REPO).revision > 0


def test_executing_a_cascade_deletes_parents_first_and_leaves_the_database_true(
    multi_arch, pusher, sync, registry_client
):
    sync()
    m = multi_arch
    preview = plan(m["index"].digest)
    revision = Repository.objects.get(name=REPO).revision

    outcome = execute(registry_client, m["index"].digest, fingerprint=preview.fingerprint)

    assert outcome.succeeded
    assert {i.digest for i in outcome.deleted} == {i.digest for i in preview.delete}
    order = [i.digest for i in outcome.deleted]
    assert order.index(m["index"].digest) < order.index(m["amd64"].digest)
    assert order.index(m["fallback"][0]) < order.index(m["sbom"].digest)
    everything = {i.digest for i in preview.delete} | {m["shared"].digest, m["tagged"].digest}
    assert digests_in_registry(pusher, everything) == {m["shared"].digest, m["tagged"].digest}
    assert pusher.list_tags(REPO) == ["ppc-only", "stable"]
    assert digests_in_database() == {m["shared"].digest, m["tagged"].digest, m["stays"].digest}
    assert Repository.objects.get(name=REPO).revision == revision + 1
    tagged = Manifest.objects.get(digest=m["tagged"].digest)
    assert tagged.is_top_level  # its index is gone: it is a row of its own now
    assert sum(DeletionRecord.objects.values_list("reclaimed_bytes", flat=True)) == (
        preview.reclaimable_bytes
    )
    again = sync(REPO)
    assert (again.manifests_added, again.manifests_removed, again.tags_changed) == (0, 0, 0)


def test_a_tag_pushed_between_preview_and_delete_changes_the_plan_and_nothing_is_deleted(
    pusher, sync, registry_client
):
    image = pusher.push_image(REPO, tag="v1", layers=[random_layer(1_000, "v1")])
    sync()
    preview = plan(image.digest)

    pusher.tag(REPO, "hotfix", image)
    outcome = execute(registry_client, image.digest, fingerprint=preview.fingerprint)

    assert outcome.stale and outcome.deleted == ()
    assert outcome.plan.fingerprint != preview.fingerprint
    assert outcome.plan.tags_removed == ("hotfix", "v1")
    assert pusher.list_tags(REPO) == ["hotfix", "v1"]
    assert digests_in_database() == {image.digest}
    assert not DeletionRecord.objects.exists()


def test_a_failing_delete_is_reported_the_rest_proceed_and_no_index_is_left_dangling(
    pusher, sync, registry_client, registry_url
):
    amd64 = pusher.push_image(REPO, layers=[random_layer(1_000, "amd64")])
    arm64 = pusher.push_image(REPO, layers=[random_layer(1_000, "arm64")], architecture="arm64")
    index = pusher.push_index(REPO, tag="v1", images=[amd64, arm64])
    loose = pusher.push_image(REPO, tag="loose", layers=[random_layer(1_000, "loose")])
    sync()
    preview = plan(index.digest, loose.digest)
    assert len(preview.delete) == 4

    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        mock.add_passthru(registry_url)
        mock.add(
            responses.DELETE,
            f"{registry_url}/v2/{REPO}/manifests/{index.digest}",
            status=500,
            json={"errors": [{"code": "UNKNOWN", "message": "storage backend unavailable"}]},
        )
        outcome = execute(
            registry_client, index.digest, loose.digest, fingerprint=preview.fingerprint
        )

    assert not outcome.succeeded
    assert [i.digest for i in outcome.deleted] == [loose.digest]
    assert [(f.digest, f.reason) for f in outcome.failed] == [
        (
            index.digest,
            f"registry answered 500 UNKNOWN for DELETE /v2/{REPO}/manifests/{index.digest}: "
            "storage backend unavailable",
        )
    ]
    reason = f"kept because index {short_digest(index.digest)} could not be deleted"
    assert sorted((s.digest, s.reason) for s in outcome.skipped) == sorted(
        [(amd64.digest, reason), (arm64.digest, reason)]
    )
    assert outcome.reclaimed_bytes == stored_bytes(loose)
    assert digests_in_registry(
        pusher, [index.digest, amd64.digest, arm64.digest, loose.digest]
    ) == {
        index.digest,
        amd64.digest,
        arm64.digest,
    }
    assert digests_in_database() == {index.digest, amd64.digest, arm64.digest}
    # Each DELETE sent is in the history, with what became of it; skipped ones were not sent.
    records = set(DeletionRecord.objects.values_list("digest", "state"))
    assert records == {(loose.digest, "done"), (index.digest, "failed")}
    assert "storage backend unavailable" in DeletionRecord.objects.get(digest=index.digest).message
    again = sync(REPO)
    assert (again.manifests_added, again.manifests_removed, again.tags_changed) == (0, 0, 0)


def test_a_concurrent_holder_of_the_lock_makes_deletion_and_sync_refuse(
    pusher, sync, registry_client, monkeypatch
):
    image = pusher.push_image(REPO, tag="v1", layers=[random_layer(1_000, "v1")])
    sync()
    preview = plan(image.digest)
    other = leases.acquire(leases.repository_lease_name(REPO), owner="delete:alice")

    with pytest.raises(leases.RepositoryBusy, match="busy: delete:alice is working on it"):
        execute(registry_client, image.digest, fingerprint=preview.fingerprint)
    monkeypatch.setattr(store, "LOCK_WAIT_SECONDS", 0)
    # A sync that finds nothing changed writes nothing, so it needs no lock...
    assert sync_repository(registry_client, REPO).error == ""
    # ...but one with something to write waits for the holder, then says it is busy.
    pusher.push_image(REPO, tag="v2", layers=[random_layer(1_000, "v2")])
    assert "busy" in sync_repository(registry_client, REPO).error

    assert pusher.list_tags(REPO) == ["v1", "v2"]
    assert digests_in_database() == {image.digest}
    leases.release(other)
    assert execute(registry_client, image.digest, fingerprint=preview.fingerprint).succeeded


def test_the_legacy_delete_permission_still_deletes_everywhere_and_a_viewer_nowhere(
    viewer, deleter
):
    from hubimages.teams.rights import rights_for

    assert rights_for(deleter).may_delete("default", REPO)
    assert rights_for(deleter).may_admin_policies("staging", "any/thing")
    assert not rights_for(viewer).may_delete("default", REPO)


def test_a_nested_index_goes_with_its_parent_and_each_index_goes_before_its_children(
    pusher, sync, registry_client
):
    amd64 = pusher.push_image(REPO, layers=[random_layer(500, "amd64")])
    arm64 = pusher.push_image(REPO, layers=[random_layer(500, "arm64")], architecture="arm64")
    inner = pusher.push_index(REPO, images=[amd64, arm64])
    riscv = pusher.push_image(REPO, layers=[random_layer(500, "riscv")], architecture="riscv64")
    outer = pusher.push_index(REPO, tag="all", images=[riscv, inner])
    sync()

    preview = plan(outer.digest)
    outcome = execute(registry_client, outer.digest, fingerprint=preview.fingerprint)

    because = {i.digest: i.because for i in preview.delete}
    assert because[amd64.digest] == f"only used by index {short_digest(inner.digest)}"
    order = [i.digest for i in outcome.deleted]
    assert order[0] == outer.digest
    assert order.index(inner.digest) < min(order.index(amd64.digest), order.index(arm64.digest))
    assert set(order) == {outer.digest, inner.digest, amd64.digest, arm64.digest, riscv.digest}
    assert digests_in_registry(pusher, order) == set()
    assert digests_in_database() == set()
