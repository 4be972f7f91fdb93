"""The real registry process and the pusher that tests, the demo and benchmarks rely on."""

from collections.abc import Iterator

import pytest
import requests

from devtools.pusher import ImagePusher, PushedManifest, random_layer
from devtools.server import LocalRegistry
from registry.client import RegistryClient
from registry.media import DOCKER_MANIFEST_V2, OCI_INDEX, OCI_MANIFEST


@pytest.fixture
def local_registry(tmp_path) -> Iterator[LocalRegistry]:
    with LocalRegistry(tmp_path / "registry") as registry:
        yield registry


@pytest.fixture
def pusher(local_registry) -> ImagePusher:
    return ImagePusher(local_registry.url)


def stored_bytes(*manifests: PushedManifest) -> int:
    """Every distinct blob the manifests hold: their own bytes, configs and layers."""
    sizes = {}
    for manifest in manifests:
        sizes[manifest.digest] = manifest.size
        if manifest.config_digest:
            sizes[manifest.config_digest] = manifest.config_size
        sizes.update(zip(manifest.layer_digests, manifest.layer_sizes, strict=True))
    return sum(sizes.values())


def test_it_starts_stops_and_keeps_its_storage_across_restarts(tmp_path):
    registry = LocalRegistry(tmp_path / "registry")
    registry.start()
    assert requests.get(f"{registry.url}/v2/", timeout=5).status_code == 200
    ImagePusher(registry.url).push_image("a/b", tag="v1", layers=[random_layer(10, 1)])

    registry.restart()
    assert ImagePusher(registry.url).list_tags("a/b") == ["v1"]

    registry.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{registry.url}/v2/", timeout=5)


def test_an_image_comes_back_with_its_media_type_and_exact_bytes(pusher):
    oci = pusher.push_image(
        "library/web", tag="1.0", layers=[random_layer(1000, "a")], labels={"a": "b"}
    )
    docker = pusher.push_image(
        "library/web", tag="docker", layers=[random_layer(1000, "a")], media_type="docker"
    )

    for manifest, reference, media_type in [
        (oci, "1.0", OCI_MANIFEST),
        (docker, "docker", DOCKER_MANIFEST_V2),
        (oci, oci.digest, OCI_MANIFEST),
    ]:
        response = pusher.pull_manifest("library/web", reference)
        assert response.status_code == 200
        assert response.headers["Content-Type"] == media_type
        assert response.headers["Docker-Content-Digest"] == manifest.digest
        assert response.content == manifest.body


def test_an_index_with_attestations_lists_them_as_unknown_platforms(pusher):
    amd64 = pusher.push_image("library/app", layers=[random_layer(500, 1)])
    arm64 = pusher.push_image(
        "library/app", layers=[random_layer(500, 2)], architecture="arm64", variant="v8"
    )

    index = pusher.push_index("library/app", tag="latest", images=[amd64, arm64], attestations=True)

    response = pusher.pull_manifest("library/app", "latest")
    assert response.headers["Content-Type"] == OCI_INDEX
    assert response.content == index.body
    entries = response.json()["manifests"]
    assert [entry["platform"] for entry in entries] == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm64", "os": "linux", "variant": "v8"},
        {"architecture": "unknown", "os": "unknown"},
        {"architecture": "unknown", "os": "unknown"},
    ]
    assert [entry["annotations"]["vnd.docker.reference.digest"] for entry in entries[2:]] == [
        amd64.digest,
        arm64.digest,
    ]
    assert index.child_digests == [entry["digest"] for entry in entries]
    for child in index.children:
        assert pusher.pull_manifest("library/app", child.digest).status_code == 200


def test_shared_layers_are_stored_once(local_registry, pusher):
    base = random_layer(20_000, "base")
    api = pusher.push_image("team/api", tag="v1", layers=[base, random_layer(5_000, "api")])
    worker = pusher.push_image(
        "team/worker", tag="v1", layers=[base, random_layer(7_000, "worker")]
    )

    assert api.layer_digests[0] == worker.layer_digests[0]
    assert local_registry.blob_bytes_on_disk() == stored_bytes(api, worker)


def test_garbage_collect_frees_exactly_the_unshared_bytes_of_a_deleted_image(
    local_registry, pusher
):
    base = random_layer(20_000, "base")
    kept = pusher.push_image("team/api", tag="v1", layers=[base, random_layer(5_000, "v1")])
    deleted = pusher.push_image("team/api", tag="v2", layers=[base, random_layer(9_000, "v2")])
    before = local_registry.blob_bytes_on_disk()

    pusher.delete_manifest("team/api", deleted.digest)
    local_registry.garbage_collect(dry_run=True)
    assert local_registry.blob_bytes_on_disk() == before
    local_registry.garbage_collect()

    freed = deleted.size + deleted.config_size + deleted.layer_sizes[1]
    assert local_registry.blob_bytes_on_disk() == before - freed == stored_bytes(kept)
    assert pusher.list_tags("team/api") == ["v1"]
    assert pusher.pull_manifest("team/api", "v1").status_code == 200


def test_deleting_a_manifest_twice_answers_manifest_unknown(pusher):
    image = pusher.push_image("a/b", tag="v1", layers=[random_layer(10, 1)])
    pusher.delete_manifest("a/b", image.digest)

    again = pusher.delete_manifest("a/b", image.digest, missing_ok=True)

    assert again.status_code == 404
    assert again.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"


def test_an_htpasswd_registry_answers_401_without_credentials(tmp_path):
    with LocalRegistry(tmp_path / "registry", htpasswd=("ci", "s3cret")) as registry:
        assert requests.get(f"{registry.url}/v2/", timeout=5).status_code == 401
        assert requests.get(f"{registry.url}/v2/", auth=("ci", "s3cret"), timeout=5).ok

        pusher = ImagePusher(registry.url, auth=("ci", "s3cret"))
        image = pusher.push_image("private/app", tag="v1", layers=[random_layer(100, 1)])
        assert pusher.pull_manifest("private/app", "v1").json() == image.json


def test_the_referrers_fallback_tag_lists_every_referrer(pusher):
    image = pusher.push_image("team/web", tag="v1", layers=[random_layer(100, 1)])
    sbom = pusher.push_referrer("team/web", image)
    scan = pusher.push_referrer(
        "team/web", image, artifact_type="application/vnd.example.scan.v1+json", payload=b"{}"
    )
    signature = pusher.push_cosign_signature("team/web", image)

    fallback = pusher.pull_manifest("team/web", f"sha256-{image.hex}").json()
    assert fallback["mediaType"] == OCI_INDEX
    assert [(entry["digest"], entry["artifactType"]) for entry in fallback["manifests"]] == [
        (sbom.digest, "application/vnd.example.sbom.v1+json"),
        (scan.digest, "application/vnd.example.scan.v1+json"),
    ]
    assert pusher.pull_manifest("team/web", sbom.digest).json()["subject"] == image.descriptor()
    assert pusher.list_tags("team/web") == sorted(
        ["v1", f"sha256-{image.hex}", f"sha256-{image.hex}.sig"]
    )
    assert signature.tag == f"sha256-{image.hex}.sig"


def test_a_deleted_manifest_put_back_by_its_kept_bytes_answers_again_byte_for_byte(
    local_registry, pusher
):
    """What the Trash relies on: until the collector runs, a deleted manifest's layers
    stay, so its exact bytes PUT by digest bring it back (and PUT by tag tags it)."""
    image = pusher.push_image("team/app", tag="v1", layers=[random_layer(500, "put-back")])
    with RegistryClient(local_registry.url) as client:
        kept = client.get_manifest("team/app", image.digest)
        assert client.delete_manifest("team/app", image.digest)
        assert client.head_manifest("team/app", image.digest) is None

        assert client.put_manifest("team/app", kept.digest, kept.body, kept.media_type) == (
            image.digest
        )
        assert client.put_manifest("team/app", "v1", kept.body, kept.media_type) == image.digest

        again = client.get_manifest("team/app", "v1")
    assert (again.digest, again.body, again.media_type) == (image.digest, image.body, OCI_MANIFEST)
