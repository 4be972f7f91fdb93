"""sync_registry against a real CNCF distribution registry (SPEC §1, §2, §5)."""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
import requests
import responses
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from devtools.pusher import random_layer
from devtools.server import LocalRegistry
from hubimages.inventory import lists
from hubimages.models import Blob, IndexEntry, Manifest, Repository, SyncRun, Tag
from hubimages.storage.figures import after_full_sync
from hubimages.sync.service import sync_registry
from registry.client import RegistryClient

pytestmark = pytest.mark.django_db


def manifest(repository: str, digest: str) -> Manifest:
    return Manifest.objects.get(repository__name=repository, digest=digest)


def tags_of(repository: str) -> dict[str, str]:
    return dict(
        Tag.objects.filter(repository__name=repository).values_list("name", "manifest__digest")
    )


def rows(repository: str, **query) -> list[dict]:
    repo = Repository.objects.get(name=repository)
    listing = lists.top_level(repo, lists.ListQuery(**query))
    return [lists.row_as_dict(row, registry="default") for row in lists.with_details(listing)]


def counting_client(url: str, **kwargs) -> tuple[RegistryClient, Counter]:
    """A real client whose session counts every request by method and path kind."""
    counts: Counter = Counter()
    session = requests.Session()

    def count(response, *args, **kw):
        path = response.request.path_url
        kind = "manifests" if "/manifests/" in path else "blobs" if "/blobs/" in path else path
        counts[(response.request.method, kind)] += 1

    session.hooks["response"].append(count)
    return RegistryClient(url, session=session, **kwargs), counts


def test_it_classifies_indexes_images_and_attestations_with_their_sizes(pusher, sync):
    base = random_layer(4000, "base")
    amd = pusher.push_image("team/api", layers=[base, random_layer(1000, "amd")])
    arm = pusher.push_image(
        "team/api", layers=[base, random_layer(2000, "arm")], architecture="arm64", variant="v8"
    )
    index = pusher.push_index("team/api", tag="v1", images=[amd, arm], attestations=True)

    sync()

    listed = rows("team/api")
    assert [row["digest"] for row in listed] == [index.digest]
    row = listed[0]
    assert row["kind"] == "index"
    assert row["tags"] == ["v1"]
    assert row["platforms"] == ["linux/amd64", "linux/arm64/v8"]
    kinds = {child["digest"]: child["kind"] for child in row["children"]}
    assert kinds[amd.digest] == kinds[arm.digest] == "image"
    attestations = [d for d, kind in kinds.items() if kind == "attestation"]
    assert len(attestations) == 2
    # Image size = config + layers; index size = distinct blobs of its children, once each.
    assert manifest("team/api", amd.digest).total_size == amd.config_size + sum(amd.layer_sizes)
    distinct = {}
    for child in index.children:
        distinct[child.config_digest] = child.config_size
        distinct.update(zip(child.layer_digests, child.layer_sizes, strict=True))
    assert row["size"] == sum(distinct.values())
    assert row["size"] < sum(child["size"] for child in row["children"])  # base counted once


def test_it_reads_docker_manifest_lists_and_one_image_in_two_indexes(pusher, sync):
    shared = pusher.push_image("app", layers=[random_layer(800, "shared")], media_type="docker")
    other = pusher.push_image(
        "app", layers=[random_layer(900, "other")], architecture="arm64", media_type="docker"
    )
    first = pusher.push_index("app", tag="one", images=[shared, other], media_type="docker")
    second = pusher.push_index("app", tag="two", images=[shared], media_type="docker")

    sync()

    listed = {row["digest"]: row for row in rows("app")}
    assert set(listed) == {first.digest, second.digest}
    assert (
        listed[first.digest]["media_type"]
        == "application/vnd.docker.distribution.manifest.list.v2+json"
    )
    assert IndexEntry.objects.filter(child__digest=shared.digest).count() == 2
    assert manifest("app", shared.digest).is_top_level is False


def test_it_lists_several_tags_on_one_digest_and_untagged_images(pusher, sync):
    image = pusher.push_image("web", tag="latest", layers=[random_layer(500, "web-1")])
    pusher.tag("web", "1.0", image)
    pusher.tag("web", "stable", image)
    untagged = pusher.push_image("web", layers=[random_layer(500, "by-digest")])

    sync()

    # A manifest pushed by digest only is invisible to the API (SPEC §5's stated limit)...
    assert not Manifest.objects.filter(digest=untagged.digest).exists()
    listed = rows("web")
    assert listed[0]["tags"] == ["1.0", "latest", "stable"]
    # ...but a build that loses its tag stays, as an untagged image, while the registry has it.
    rebuilt = pusher.push_image("web", tag="latest", layers=[random_layer(500, "web-2")])
    pusher.tag("web", "1.0", rebuilt)
    pusher.tag("web", "stable", rebuilt)
    sync()
    listed = {row["digest"]: row for row in rows("web")}
    assert listed[image.digest]["tags"] == []
    assert listed[rebuilt.digest]["tags"] == ["1.0", "latest", "stable"]
    assert rows("web", filter="tagged")[0]["digest"] == rebuilt.digest

    pusher.delete_manifest("web", image.digest)
    summary = sync()  # one 404 marks it unconfirmed; a later sync's removes it
    assert summary.manifests_removed == 0
    assert Manifest.objects.get(digest=image.digest).unconfirmed_since is not None
    summary = sync()
    assert summary.manifests_removed == 1
    assert not Manifest.objects.filter(digest=image.digest).exists()


def test_it_shows_referrers_and_cosign_signatures_under_their_subject(pusher, sync):
    image = pusher.push_image("signed", tag="v1", layers=[random_layer(700, "signed")])
    sbom = pusher.push_referrer("signed", image)
    signature = pusher.push_cosign_signature("signed", image)

    sync()

    listed = rows("signed")
    assert [row["digest"] for row in listed] == [image.digest]
    children = {child["digest"]: child for child in listed[0]["children"]}
    assert children[signature.digest]["kind"] == "artifact"
    assert children[signature.digest]["tags"] == [f"sha256-{image.hex}.sig"]
    fallback_index = Tag.objects.get(name=f"sha256-{image.hex}").manifest
    assert fallback_index.kind == "artifact"
    assert fallback_index.subject.digest == image.digest
    assert manifest("signed", sbom.digest).kind == "artifact"
    assert manifest("signed", sbom.digest).is_top_level is False
    # Artifacts never show as Images or as tagged images of their own.
    assert {row["digest"] for row in rows("signed", filter="tagged")} == {image.digest}


@pytest.mark.parametrize(
    ("created", "annotation", "expected"),
    [
        ("2024-03-01T10:00:00Z", None, datetime(2024, 3, 1, 10, tzinfo=UTC)),
        ("2024-03-01T10:00:00Z", "2025-01-02T03:04:05Z", datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("1970-01-01T00:00:00Z", None, None),
        ("2999-01-01T00:00:00Z", None, None),
    ],
)
def test_it_estimates_last_pushed_from_plausible_build_times(
    pusher, sync, created, annotation, expected
):
    annotations = {"org.opencontainers.image.created": annotation} if annotation else None
    image = pusher.push_image(
        "times", tag="t", layers=[random_layer(100, "t")], created=created, annotations=annotations
    )
    before = timezone.now()
    sync()
    stored = manifest("times", image.digest)
    assert stored.pushed_at_estimated is True
    if expected is None:  # implausible: the time the sync first saw it
        assert before - timedelta(seconds=1) <= stored.pushed_at <= timezone.now()
    else:
        assert stored.pushed_at == expected


def test_an_index_takes_its_newest_image_build_time(pusher, sync):
    old = pusher.push_image("multi", layers=[random_layer(10, "o")], created="2023-05-01T00:00:00Z")
    new = pusher.push_image(
        "multi",
        layers=[random_layer(10, "n")],
        architecture="arm64",
        created="2024-07-01T00:00:00Z",
    )
    index = pusher.push_index("multi", tag="x", images=[old, new])
    sync()
    assert manifest("multi", index.digest).pushed_at == datetime(2024, 7, 1, tzinfo=UTC)


def test_it_pages_the_catalog_and_removes_vanished_repositories(registry_server, pusher, sync):
    names = [f"page/r{i}" for i in range(7)]
    for i, name in enumerate(names):
        pusher.push_image(name, tag="v", layers=[random_layer(50, f"p{i}")])
    client, counts = counting_client(registry_server.url)
    assert list(client.iter_repositories(page_size=3)) == sorted(names)
    assert (
        counts[("GET", "/v2/_catalog?n=3")] == 1
        and sum(n for (method, path), n in counts.items() if "_catalog" in path) == 3
    )

    sync()
    assert set(Repository.objects.values_list("name", flat=True)) == set(names)
    Repository.objects.create(name="gone/away")
    summary = sync()
    assert summary.repositories_removed == 1
    assert not Repository.objects.filter(name="gone/away").exists()


WRITES = ("INSERT", "UPDATE", "DELETE")


def test_a_second_sync_fetches_no_manifest_bodies(registry_server, pusher, db):
    for n in range(3):
        images = [
            pusher.push_image("inc", layers=[random_layer(64, f"inc{n}{arch}")], architecture=arch)
            for arch in ("amd64", "arm64")
        ]
        pusher.push_index("inc", tag=f"v{n}", images=images, attestations=True)
    client, counts = counting_client(registry_server.url)
    first = sync_registry(client, workers=4)
    assert first.manifests_added == 3 * 5
    # A tag never seen is read with one GET by tag (body and digest at once): no HEAD.
    assert counts[("GET", "manifests")] == 15
    assert counts[("HEAD", "manifests")] == 0
    assert counts[("GET", "blobs")] == 3 * 4  # the configs of the images and attestations
    counts.clear()

    with CaptureQueriesContext(connection) as queries:
        second = sync_registry(client, workers=4, after_full_sync=after_full_sync)

    assert second.manifests_added == second.manifests_removed == second.tags_changed == 0
    assert counts[("GET", "manifests")] == 0
    assert counts[("GET", "blobs")] == 0
    assert counts[("HEAD", "manifests")] == 3  # one per tag: the least a resync can do
    # Every tag HEADed to where it was: the repository writes nothing and takes no lock;
    # what is written is the run's record, the full sync's lease, one `synced_at` and the
    # storage history's point for this full sync.
    writes = [q["sql"] for q in queries.captured_queries if q["sql"].startswith(WRITES)]
    tables = {re.search(r'(?:INTO|UPDATE|FROM) "(\w+)"', sql).group(1) for sql in writes}
    assert tables == {
        "hubimages_syncrun",
        "hubimages_lease",
        "hubimages_repository",
        "hubimages_storagesample",
    }
    leases_taken = [sql for sql in writes if sql.startswith("INSERT INTO") and "_lease" in sql]
    assert leases_taken and not any("repository:" in sql for sql in leases_taken)
    assert sum("hubimages_repository" in sql for sql in writes) == 1
    # A new tag costs one GET by tag for the new manifest, its config, and the HEADs.
    pusher.push_image("inc", tag="extra", layers=[random_layer(64, "extra")])
    counts.clear()
    third = sync_registry(client, workers=4)
    assert third.manifests_added == 1
    assert counts[("GET", "manifests")] == 1 and counts[("GET", "blobs")] == 1
    assert counts[("HEAD", "manifests")] == 3


def test_a_known_tag_that_moved_is_headed_then_fetched_by_digest_only_if_new(
    registry_server, pusher, db
):
    first = pusher.push_image("moved", tag="latest", layers=[random_layer(64, "one")])
    pusher.tag("moved", "stable", first)
    client, counts = counting_client(registry_server.url)
    sync_registry(client, workers=4)
    second = pusher.push_image("moved", tag="latest", layers=[random_layer(64, "two")])
    pusher.tag("moved", "stable", second)
    counts.clear()

    summary = sync_registry(client, workers=4)

    assert (summary.manifests_added, summary.tags_changed) == (1, 2)
    # Both tags are known, and `first`, untagged now, stays while a HEAD finds it.
    assert counts[("HEAD", "manifests")] == 2 + 1
    assert counts[("GET", "manifests")] == 1  # one new digest behind two tags
    # Back to a manifest the database holds: a HEAD tells where, nothing to GET.
    pusher.tag("moved", "latest", first)
    counts.clear()
    assert sync_registry(client, workers=4).tags_changed == 1
    assert counts[("GET", "manifests")] == 0 and counts[("HEAD", "manifests")] == 2
    assert tags_of("moved") == {"latest": first.digest, "stable": second.digest}


def test_it_syncs_a_registry_behind_basic_auth(tmp_path, settings, db):
    with LocalRegistry(tmp_path / "auth", htpasswd=("ci", "s3cret-pass")) as server:
        from devtools.pusher import ImagePusher

        ImagePusher(server.url, auth=("ci", "s3cret-pass")).push_image(
            "private/app", tag="v1", layers=[random_layer(10, "private")]
        )
        anonymous = RegistryClient(server.url)
        with pytest.raises(Exception) as refused:
            list(anonymous.iter_repositories())
        assert "401" in str(refused.value) or "auth" in str(refused.value).lower()

        client = RegistryClient(server.url, username="ci", password="s3cret-pass")
        summary = sync_registry(client)
    assert summary.errors == []
    assert tags_of("private/app").keys() == {"v1"}
    assert "s3cret-pass" not in str(refused.value)


def test_a_failed_repository_keeps_its_previous_data_and_the_others_go_on(
    registry_server, pusher, sync, registry_client
):
    good = pusher.push_image("good", tag="v1", layers=[random_layer(10, "g")])
    kept = pusher.push_image("flaky", tag="v1", layers=[random_layer(10, "f")])
    sync()
    before = tags_of("flaky")
    broken = pusher.push_image("flaky", tag="v2", layers=[random_layer(10, "f2")])
    pusher.push_image("good", tag="v2", layers=[random_layer(10, "g2")])

    with responses.RequestsMock(assert_all_requests_are_fired=False) as stub:
        stub.add_passthru(registry_server.url)
        # A new tag is read with a GET by tag (the body and its digest in one request).
        stub.get(
            re.compile(rf"{registry_server.url}/v2/flaky/manifests/(v2|{broken.digest})$"),
            body=b"{not json",
            content_type="application/vnd.oci.image.manifest.v1+json",
            headers={"Docker-Content-Digest": broken.digest},
        )
        summary = sync(expect_errors=True)

    assert len(summary.errors) == 1 and summary.errors[0].startswith("flaky:")
    assert tags_of("flaky") == before == {"v1": kept.digest}
    assert set(tags_of("good")) == {"v1", "v2"}
    assert Manifest.objects.filter(digest=good.digest).exists()
    run = SyncRun.objects.latest()
    assert run.succeeded is False and run.summary["errors"] == summary.errors


def test_a_registry_that_is_down_is_reported_and_changes_nothing(pusher, sync, db):
    pusher.push_image("stays", tag="v1", layers=[random_layer(10, "s")])
    sync()
    dead = RegistryClient("http://127.0.0.1:9", max_retries=1, sleep=lambda s: None)
    summary = sync_registry(dead)
    assert not summary.succeeded
    assert "127.0.0.1:9" in summary.errors[0]
    assert Repository.objects.filter(name="stays").exists()


def test_the_command_prints_a_summary_and_fails_on_errors(pusher, registry_url, db, capsys):
    pusher.push_image("cmd/app", tag="v1", layers=[random_layer(10, "c")])
    call_command("sync_registry", "--workers", "2")
    out = capsys.readouterr().out
    assert "cmd/app" in out
    assert "Synced 1 repository" in out and "1 manifest added" in out

    call_command("sync_registry", "--repository", "cmd/app")
    assert "0 manifests added" in capsys.readouterr().out


def test_the_command_exits_non_zero_with_the_registrys_message(settings, db, capsys):
    settings.REGISTRY_URL = "http://127.0.0.1:9"
    with pytest.raises(CommandError):
        call_command("sync_registry")
    assert "127.0.0.1:9" in capsys.readouterr().err


def test_list_images_prints_the_stable_json_shape(pusher, sync, capsys):
    amd = pusher.push_image("json/app", layers=[random_layer(30, "j1")])
    index = pusher.push_index("json/app", tag="v1", images=[amd])
    sync()
    call_command("list_images", "json/app", "--json", "--filter", "index", "--sort=-size")
    import json

    listing = json.loads(capsys.readouterr().out)
    assert listing["repository"] == "json/app" and listing["count"] == 1
    assert listing["registry"] == "default"
    row = listing["results"][0]
    assert set(row) == {
        "registry", "digest", "kind", "media_type", "tags", "platforms", "size", "last_pushed",
        "last_pushed_estimated", "last_pulled", "stale", "status", "first_seen", "in_use",
        "children",
    }  # fmt: skip
    assert row["in_use"] == []  # no live in-use report names it (SPEC §13)
    assert row["digest"] == index.digest and row["last_pulled"] is None
    assert row["last_pushed"].endswith("Z")
    assert set(row["children"][0]) == {"digest", "kind", "platform", "size", "tags", "status"}


def test_blobs_are_global_and_shared_layers_stored_once(pusher, sync):
    shared = random_layer(2048, "shared-across")
    pusher.push_image("a/one", tag="v", layers=[shared])
    pusher.push_image("b/two", tag="v", layers=[shared, random_layer(10, "b")])
    sync()
    from devtools.pusher import sha256

    assert Blob.objects.filter(digest=sha256(shared)).count() == 1
    assert Blob.objects.get(digest=sha256(shared)).manifest_links.count() == 2


def test_a_tag_deleted_mid_sync_is_skipped_with_a_warning(registry_server, pusher, sync):
    pusher.push_image("moving", tag="stays", layers=[random_layer(10, "m1")])
    pusher.push_image("moving", tag="vanishes", layers=[random_layer(10, "m2")])

    with responses.RequestsMock(assert_all_requests_are_fired=True) as stub:
        stub.add_passthru(registry_server.url)
        stub.get(  # a tag hubimages does not know yet is read with a GET by tag
            f"{registry_server.url}/v2/moving/manifests/vanishes",
            status=404,
            json={"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]},
        )
        summary = sync()

    assert set(tags_of("moving")) == {"stays"}
    assert any("vanishes" in warning for warning in summary.warnings)


def test_a_sync_applies_push_and_pull_times_recorded_before_it_stored_the_manifest(pusher, sync):
    from hubimages.models import RegistryEvent

    image = pusher.push_image("early", tag="v1", layers=[random_layer(10, "early")])
    pushed = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
    pulled = datetime(2026, 2, 1, 9, 30, tzinfo=UTC)
    common = {"repository": "early", "digest": image.digest}
    RegistryEvent.objects.create(event_id="p1", action="push", occurred_at=pushed, **common)
    RegistryEvent.objects.create(
        event_id="g1", action="pull", occurred_at=pulled, state="waiting", **common
    )

    sync()

    stored = manifest("early", image.digest)
    assert (stored.pushed_at, stored.pushed_at_estimated) == (pushed, False)
    assert stored.last_pulled_at == pulled


def test_attestations_without_a_build_time_take_their_index_s_push_time(pusher, sync):
    image = pusher.push_image(
        "attested", layers=[random_layer(10, "att")], created="2024-02-02T00:00:00Z"
    )
    index = pusher.push_index("attested", tag="v1", images=[image], attestations=True)
    sync()
    attestation = manifest("attested", index.child_digests[1])
    assert attestation.kind == "attestation"
    assert attestation.pushed_at == manifest("attested", index.digest).pushed_at
    assert attestation.pushed_at == datetime(2024, 2, 2, tzinfo=UTC)


def test_a_legacy_schema1_tag_is_skipped_with_a_warning_and_the_rest_syncs(
    registry_server, pusher, sync
):
    pusher.push_image("legacy", tag="modern", layers=[random_layer(10, "modern")])
    old = pusher.push_image("legacy", tag="ancient", layers=[random_layer(10, "ancient")])
    schema1 = b'{"schemaVersion": 1, "name": "legacy", "tag": "ancient", "fsLayers": []}'

    with responses.RequestsMock(assert_all_requests_are_fired=True) as stub:
        stub.add_passthru(registry_server.url)
        stub.get(  # by tag, then by digest once a HEAD gave it: schema 1 both times
            re.compile(rf"{registry_server.url}/v2/legacy/manifests/(ancient|{old.digest})$"),
            body=schema1,
            content_type="application/vnd.docker.distribution.manifest.v1+prettyjws",
        )
        summary = sync()

    assert set(tags_of("legacy")) == {"modern"}
    assert any(
        old.digest in warning and "schema 1" in warning.lower() for warning in summary.warnings
    ), summary.warnings


def test_registries_without_a_catalog_sync_the_repositories_named_in_settings(
    registry_server, pusher, settings, db, capsys
):
    settings.REGISTRY_URL = registry_server.url
    for name in ("org/one", "org/two", "org/three"):
        pusher.push_image(name, tag="v1", layers=[random_layer(10, name)])
    Repository.objects.create(name="org/old")

    with responses.RequestsMock(assert_all_requests_are_fired=False) as stub:
        stub.add_passthru(registry_server.url)
        stub.get(
            f"{registry_server.url}/v2/_catalog?n=1000",
            status=404,
            json={"errors": [{"code": "UNSUPPORTED", "message": "catalog is not available"}]},
        )
        with pytest.raises(CommandError):
            call_command("sync_registry")
        assert "REGISTRY_REPOSITORIES" in capsys.readouterr().err

        settings.REGISTRY_REPOSITORIES = ["org/one", "org/three"]
        call_command("sync_registry")

    assert set(Repository.objects.values_list("name", flat=True)) == {"org/one", "org/three"}
