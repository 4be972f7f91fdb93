"""Registries that differ from CNCF distribution 2.8 in documented ways (issue 14).

A real 2.8 registry behind `devtools.faultproxy`, which adds what 2.8 lacks: paged tag
lists (Harbor, GHCR, distribution 3.x), the OCI referrers API, tag deletes. Deletes
turned off are 2.8's own `405 UNSUPPORTED`."""

from __future__ import annotations

import pytest
from django.template.loader import render_to_string

from devtools.pusher import random_layer
from devtools.server import LocalRegistry
from hubimages.deletion.execution import DELETES_DISABLED, execute_deletion
from hubimages.deletion.planning import plan_deletion
from hubimages.jobs import runner
from hubimages.models import Manifest, Repository, Tag
from hubimages.sync.service import sync_registry
from registry.client import RegistryClient

pytestmark = pytest.mark.django_db

REPO = "team/app"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def tags_of(repository: str = REPO) -> dict[str, str]:
    return dict(
        Tag.objects.filter(repository__name=repository).values_list("name", "manifest__digest")
    )


def requests_to(proxy, method: str, fragment: str) -> list[str]:
    return [path for m, path in proxy.requests if m == method and fragment in path]


def test_tag_lists_paged_with_n_and_last_are_read_to_the_end(pusher, fault_proxy):
    for n in range(7):
        pusher.push_image(REPO, tag=f"v{n}", layers=[random_layer(32, f"paged-{n}")])
    fault_proxy.paged_tags(size=3)

    with RegistryClient(fault_proxy.url) as client:
        summary = sync_registry(client, repositories=[REPO])

    assert summary.errors == []
    assert set(tags_of()) == {f"v{n}" for n in range(7)}
    pages = requests_to(fault_proxy, "GET", "/tags/list")
    assert len(pages) == 3 and "last=v2" in pages[1] and "last=v5" in pages[2]


def test_referrers_pushed_by_digest_alone_are_found_through_the_referrers_api(
    pusher, fault_proxy, registry_url
):
    image = pusher.push_image(REPO, tag="v1", layers=[random_layer(64, "subject")])
    sbom = pusher.push_referrer(REPO, image, fallback_tag=False)  # no tag points at it
    descriptor = {"mediaType": OCI_MANIFEST, "digest": sbom.digest, "size": sbom.size}
    descriptor["artifactType"] = "application/vnd.example.sbom.v1+json"

    with RegistryClient(registry_url) as plain:  # 2.8: no API, no tag: out of reach
        sync_registry(plain, repositories=[REPO])
    assert not Manifest.objects.filter(digest=sbom.digest).exists()

    fault_proxy.referrers({image.digest: [descriptor]})
    Repository.objects.all().delete()
    with RegistryClient(fault_proxy.url) as client:
        summary = sync_registry(client, repositories=[REPO])

    assert summary.errors == []
    stored = Manifest.objects.get(digest=sbom.digest)
    assert stored.kind == "artifact" and stored.subject.digest == image.digest
    assert stored.is_top_level is False  # shown under its subject


def test_a_registry_without_the_referrers_api_is_asked_once(pusher, fault_proxy):
    for n in range(4):
        pusher.push_image(REPO, tag=f"v{n}", layers=[random_layer(32, f"no-api-{n}")])

    with RegistryClient(fault_proxy.url) as client:
        sync_registry(client, repositories=[REPO], workers=1)
        sync_registry(client, repositories=["other"], workers=1)

    assert len(requests_to(fault_proxy, "GET", "/referrers/")) == 1  # 2.8 answers 404


def test_a_registry_refusing_to_delete_a_tagged_manifest_gets_its_tags_deleted_first(
    pusher, fault_proxy
):
    image = pusher.push_image(REPO, tag="old", layers=[random_layer(64, "old")])
    pusher.push_image(REPO, tag="new", layers=[random_layer(64, "new")])
    # As registries that keep a manifest while a tag names it (the OCI distribution spec
    # deletes tags first in its conformance tests), then a 3.x-style DELETE by tag.
    refused = fault_proxy.answer(
        rf"/manifests/{image.digest}$",
        method="DELETE",
        status=409,
        json_body={"errors": [{"code": "DENIED", "message": "manifest is still tagged"}]},
        times=1,
    )
    untag = fault_proxy.answer(r"/manifests/old$", method="DELETE", status=202)
    with RegistryClient(fault_proxy.url) as client:
        sync_registry(client, repositories=[REPO])
        repository = Repository.objects.get(name=REPO)
        plan = plan_deletion(repository=repository, digests=[image.digest])

        outcome = execute_deletion(
            repository=repository,
            digests=[image.digest],
            fingerprint=plan.fingerprint,
            user=None,
            username="test",
            client=client,
        )

    assert outcome.succeeded, outcome
    assert (refused.hits, untag.hits) == (1, 1)
    assert requests_to(fault_proxy, "DELETE", "/manifests/")[-1].endswith(image.digest)
    assert pusher.list_tags(REPO) == ["new"]
    assert set(tags_of()) == {"new"}


def test_a_registry_with_deletes_turned_off_is_explained_and_asked_only_once(tmp_path, db):
    with LocalRegistry(tmp_path / "registry", delete_enabled=False) as server:
        from devtools.pusher import ImagePusher

        pusher = ImagePusher(server.url)
        amd64 = pusher.push_image(REPO, layers=[random_layer(64, "amd64")])
        arm64 = pusher.push_image(REPO, layers=[random_layer(64, "arm64")], architecture="arm64")
        index = pusher.push_index(REPO, tag="v1", images=[amd64, arm64])
        loose = pusher.push_image(REPO, tag="loose", layers=[random_layer(64, "loose")])
        selected = [index.digest, loose.digest]
        with RegistryClient(server.url) as client:
            sync_registry(client, repositories=[REPO])
            repository = Repository.objects.get(name=REPO)
            plan = plan_deletion(repository=repository, digests=selected)
            outcome = execute_deletion(
                repository=repository,
                digests=selected,
                fingerprint=plan.fingerprint,
                user=None,
                username="test",
                client=client,
            )

    assert outcome.deletes_disabled
    assert len(outcome.failed) == 1  # the first DELETE; no other was sent
    assert "405 UNSUPPORTED" in outcome.failed[0].reason
    assert "storage.delete.enabled: true" in outcome.failed[0].reason
    assert DELETES_DISABLED in {item.reason for item in outcome.skipped}
    assert not outcome.deleted
    page = render_to_string(
        "includes/deletion_outcome.html",
        {"deletion": runner.deletion_outcome(outcome), "repository": repository},
    )
    assert 'id="deletes-disabled"' in page
    assert "The registry does not allow deleting" in page
    assert "storage.delete.enabled: true" in page
