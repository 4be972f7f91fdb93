import json
from datetime import UTC, datetime

import pytest

from registry.errors import (
    ContentTooComplex,
    InvalidResponse,
    MalformedManifest,
    UnsupportedManifest,
)
from registry.media import (
    DOCKER_CONTAINER_CONFIG,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST_V2,
    DOCKER_SCHEMA1_SIGNED,
    OCI_EMPTY,
    OCI_IMAGE_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    HistoryEntry,
    Platform,
    digest_of,
    is_attestation,
    layers_in_history_order,
    parse_config,
    parse_manifest,
    parse_time,
    referrer_tag_subject,
)

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
C = "sha256:" + "c" * 64
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def body(document: dict) -> bytes:
    return json.dumps(document).encode()


def image_manifest(**extra) -> dict:
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_IMAGE_CONFIG, "digest": A, "size": 1469},
        "layers": [{"mediaType": LAYER, "digest": B, "size": 3_000_000}],
        **extra,
    }


def test_it_parses_an_oci_index_with_platforms_and_attestations():
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": A,
                "size": 1000,
                "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"},
            },
            {
                "mediaType": OCI_MANIFEST,
                "digest": B,
                "size": 840,
                "platform": {"os": "unknown", "architecture": "unknown"},
                "annotations": {
                    "vnd.docker.reference.type": "attestation-manifest",
                    "vnd.docker.reference.digest": A,
                },
            },
        ],
        "annotations": {"org.opencontainers.image.created": "2024-05-01T10:00:00Z"},
    }

    parsed = parse_manifest(body(index), None)

    assert parsed.is_index
    assert parsed.media_type == OCI_INDEX
    assert parsed.config is None and parsed.layers == []
    image, attestation = parsed.manifests
    assert str(image.platform) == "linux/arm64/v8"
    assert not is_attestation(image)
    assert is_attestation(attestation)
    assert parsed.annotations["org.opencontainers.image.created"] == "2024-05-01T10:00:00Z"
    assert not parsed.is_artifact


def test_it_parses_a_docker_manifest_list_typed_by_the_content_type_header():
    manifest_list = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": DOCKER_MANIFEST_V2,
                "digest": A,
                "size": 528,
                "platform": {"os": "linux", "architecture": "amd64"},
            }
        ],
    }

    parsed = parse_manifest(body(manifest_list), f"{DOCKER_MANIFEST_LIST}; charset=utf-8")

    assert parsed.is_index
    assert parsed.media_type == DOCKER_MANIFEST_LIST
    assert str(parsed.manifests[0].platform) == "linux/amd64"


def test_it_parses_an_image_manifest():
    parsed = parse_manifest(body(image_manifest()), OCI_MANIFEST)

    assert not parsed.is_index
    assert parsed.config == Descriptor(OCI_IMAGE_CONFIG, A, 1469)
    assert [layer.digest for layer in parsed.layers] == [B]
    assert parsed.artifact_type == ""
    assert parsed.subject is None


def test_it_infers_the_media_type_from_the_document_shape():
    document = image_manifest()
    del document["mediaType"]
    assert parse_manifest(body(document), "application/json").media_type == OCI_MANIFEST
    index = {"schemaVersion": 2, "manifests": []}
    assert parse_manifest(body(index), None).media_type == OCI_INDEX


def test_it_parses_an_artifact_with_subject_and_artifact_type():
    signature = image_manifest(
        artifactType="application/vnd.dev.sigstore.bundle.v0.3+json",
        config={"mediaType": OCI_EMPTY, "digest": C, "size": 2},
        subject={"mediaType": OCI_MANIFEST, "digest": A, "size": 1000},
    )

    parsed = parse_manifest(body(signature), None)

    assert parsed.artifact_type == "application/vnd.dev.sigstore.bundle.v0.3+json"
    assert parsed.subject == Descriptor(OCI_MANIFEST, A, 1000)
    assert parsed.is_artifact


def test_it_types_pre_oci_1_1_artifacts_by_their_config_media_type():
    chart = image_manifest(
        config={"mediaType": "application/vnd.cncf.helm.config.v1+json", "digest": A, "size": 9}
    )

    assert parse_manifest(body(chart), None).artifact_type == (
        "application/vnd.cncf.helm.config.v1+json"
    )


def test_it_does_not_type_docker_images_as_artifacts():
    image = image_manifest(
        mediaType=DOCKER_MANIFEST_V2,
        config={"mediaType": DOCKER_CONTAINER_CONFIG, "digest": A, "size": 9},
    )

    assert parse_manifest(body(image), None).artifact_type == ""


def test_it_drops_annotations_that_are_not_strings():
    document = image_manifest(annotations={"good": "yes", "number": 3, "none": None})

    assert parse_manifest(body(document), None).annotations == {"good": "yes"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "not an object"),
        (body({"schemaVersion": 3, "manifests": []}), "schemaVersion 3"),
        (body({"schemaVersion": 2, "mediaType": OCI_INDEX}), "no manifests list"),
        (body({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}), "no config"),
        (body({"schemaVersion": 2}), "neither manifests nor config"),
        (body(image_manifest(config={"mediaType": OCI_IMAGE_CONFIG, "size": 1})), "no digest"),
        (body(image_manifest(config={"digest": A, "size": 1})), "no mediaType"),
        (body(image_manifest(config={"mediaType": OCI_IMAGE_CONFIG, "digest": A})), "no size"),
        (body(image_manifest(layers=[{"mediaType": LAYER, "digest": A, "size": -1}])), "size"),
        (body(image_manifest(layers=[{"mediaType": LAYER, "digest": A, "size": "9"}])), "size"),
        (body(image_manifest(layers=[{"mediaType": LAYER, "digest": A, "size": 1.5}])), "size"),
        (body(image_manifest(layers=[{"mediaType": LAYER, "digest": "md5:ab", "size": 1}])), "dig"),
        (body(image_manifest(layers=[{"mediaType": LAYER, "digest": A.upper(), "size": 1}])), "d"),
        (body(image_manifest(layers="nope")), "layers is not a list"),
    ],
)
def test_it_refuses_malformed_manifests_with_a_clear_message(raw, message):
    with pytest.raises(MalformedManifest, match=message):
        parse_manifest(raw, None)


def test_it_accepts_sha512_digests():
    digest = "sha512:" + "e" * 128
    document = image_manifest(layers=[{"mediaType": LAYER, "digest": digest, "size": 1}])

    assert parse_manifest(body(document), None).layers[0].digest == digest


@pytest.mark.parametrize(
    ("document", "content_type"),
    [
        ({"schemaVersion": 1, "name": "x", "tag": "latest", "fsLayers": []}, None),
        ({"schemaVersion": 1, "name": "x"}, DOCKER_SCHEMA1_SIGNED),
    ],
)
def test_it_reports_schema_1_manifests_as_unsupported(document, content_type):
    with pytest.raises(UnsupportedManifest, match="schema 1 manifests are not supported"):
        parse_manifest(body(document), content_type)


def test_it_reports_unknown_manifest_media_types_as_unsupported():
    document = {"schemaVersion": 2, "mediaType": "application/vnd.oci.artifact.manifest.v1+json"}

    with pytest.raises(UnsupportedManifest, match="unsupported manifest media type"):
        parse_manifest(body(document), None)


def test_platform_prints_without_trailing_slash():
    assert str(Platform("linux", "amd64")) == "linux/amd64"
    assert str(Platform("linux", "arm", "v7")) == "linux/arm/v7"


def test_it_needs_unknown_platform_and_annotation_to_call_an_entry_an_attestation():
    annotations = {"vnd.docker.reference.type": "attestation-manifest"}
    unknown = Platform("unknown", "unknown")

    assert is_attestation(Descriptor(OCI_MANIFEST, A, 1, unknown, annotations))
    assert not is_attestation(Descriptor(OCI_MANIFEST, A, 1, unknown))
    assert not is_attestation(Descriptor(OCI_MANIFEST, A, 1, Platform("linux", "amd64"), {}))
    assert not is_attestation(
        Descriptor(OCI_MANIFEST, A, 1, Platform("linux", "amd64"), annotations)
    )
    assert not is_attestation(Descriptor(OCI_MANIFEST, A, 1, None, annotations))


@pytest.mark.parametrize(
    ("tag", "subject"),
    [
        ("sha256-" + "a" * 64, A),
        ("sha256-" + "a" * 64 + ".sig", A),
        ("sha256-" + "a" * 64 + ".att", A),
        ("sha256-" + "a" * 64 + ".sbom", A),
        ("sha256-" + "a" * 63, None),
        ("sha256-" + "A" * 64, None),
        ("sha256-" + "a" * 64 + ".txt", None),
        ("sha256-" + "a" * 64 + ".sig.old", None),
        ("latest", None),
        ("v1.2.3", None),
    ],
)
def test_it_reads_the_subject_of_referrer_tags(tag, subject):
    assert referrer_tag_subject(tag) == subject


def test_it_computes_digests():
    assert digest_of(b"") == (
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert digest_of(b"", "sha512").startswith("sha512:cf83e135")
    with pytest.raises(ValueError):
        digest_of(b"", "md5")


def test_it_parses_a_config_with_nanosecond_times():
    config = {
        "architecture": "arm",
        "os": "linux",
        "variant": "v7",
        "created": "2024-03-05T12:34:56.123456789Z",
        "config": {"Labels": {"org.opencontainers.image.source": "https://x", "n": 1}},
        "history": [
            {"created": "2024-03-05T12:00:00.5+02:00", "created_by": "ADD rootfs.tar /"},
            {"created_by": "ENV A=1", "empty_layer": True, "comment": "buildkit"},
        ],
    }

    parsed = parse_config(body(config))

    assert parsed.platform == Platform("linux", "arm", "v7")
    assert parsed.created == datetime(2024, 3, 5, 12, 34, 56, 123456, tzinfo=UTC)
    assert parsed.labels == {"org.opencontainers.image.source": "https://x"}
    assert parsed.history == [
        HistoryEntry(
            "ADD rootfs.tar /", datetime(2024, 3, 5, 10, 0, 0, 500000, tzinfo=UTC), False, ""
        ),
        HistoryEntry("ENV A=1", None, True, "buildkit"),
    ]


def test_it_turns_bogus_config_values_into_empty_ones():
    config = {
        "os": 7,
        "architecture": None,
        "created": "yesterday-ish",
        "config": "nope",
        "history": [{"created": 12, "created_by": ["x"], "empty_layer": "true"}, "junk"],
    }

    parsed = parse_config(body(config))

    assert (parsed.os, parsed.architecture, parsed.variant) == ("", "", "")
    assert parsed.platform is None
    assert parsed.created is None
    assert parsed.labels == {}
    assert parsed.history == [HistoryEntry("", None, False, "")]
    assert parse_config(b"{}").history == []


@pytest.mark.parametrize("raw", [b"\x89PNG", b"[]", b'"text"'])
def test_it_refuses_config_blobs_that_are_not_json_objects(raw):
    with pytest.raises(InvalidResponse, match="config blob"):
        parse_config(raw)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-01-02T03:04:05Z", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2024-01-02T03:04:05.999999999Z", datetime(2024, 1, 2, 3, 4, 5, 999999, tzinfo=UTC)),
        ("2024-01-02T05:04:05+02:00", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2024-01-02T03:04:05", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("not a time", None),
        ("", None),
        (None, None),
        (1700000000, None),
    ],
)
def test_it_parses_rfc3339_times_to_aware_utc(value, expected):
    assert parse_time(value) == expected


def test_it_pairs_layers_with_the_history_entries_that_made_them():
    layers = [Descriptor(LAYER, A, 1), Descriptor(LAYER, B, 2), Descriptor(LAYER, C, 3)]
    base = HistoryEntry("ADD rootfs", None, False, "")
    env = HistoryEntry("ENV X=1", None, True, "")
    run = HistoryEntry("RUN make", None, False, "")

    pairs = layers_in_history_order(layers, [base, env, run])

    assert pairs == [(layers[0], base), (layers[1], run), (layers[2], None)]


@pytest.mark.parametrize(
    ("extra", "message"),
    [(b"[" * 100_000 + b"]" * 100_000, "nests JSON deeper"), (b"7" * 5_000, "number too long")],
    ids=["deep", "long number"],
)
def test_json_python_will_not_parse_is_too_complex_not_malformed(extra, message):
    manifest = b'{"schemaVersion": 2, "config": {}, "extra": ' + extra + b"}"
    config = b'{"os": "linux", "extra": ' + extra + b"}"

    with pytest.raises(ContentTooComplex, match=message):
        parse_manifest(manifest, OCI_MANIFEST)
    with pytest.raises(ContentTooComplex, match=message):
        parse_config(config)
