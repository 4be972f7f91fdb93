"""Media types and manifest / config parsing: pure functions, no HTTP."""

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dateutil.parser import isoparse

from registry.errors import (
    ContentTooComplex,
    InvalidResponse,
    MalformedManifest,
    UnsupportedManifest,
)

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
OCI_IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONTAINER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

INDEX_MEDIA_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
IMAGE_MEDIA_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST_V2})
SCHEMA1_MEDIA_TYPES = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})
IMAGE_CONFIG_MEDIA_TYPES = frozenset({OCI_IMAGE_CONFIG, DOCKER_CONTAINER_CONFIG})

MANIFEST_ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST_V2])

ATTESTATION_REFERENCE_TYPE = "attestation-manifest"

DIGEST_RE = re.compile(r"^(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")
# The distribution spec's grammar: lowercase path components, at most 255 characters.
_NAME_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME_RE = re.compile(rf"^{_NAME_COMPONENT}(?:/{_NAME_COMPONENT})*$")
REPOSITORY_NAME_PATTERN = _NAME_RE.pattern  # for documents (OpenAPI) that state the grammar
MAX_NAME_LENGTH = 255
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
# Also a database regular expression (PostgreSQL's and Python's syntax agree on it), so
# pages can leave these tags out of their counts in SQL.
REFERRER_TAG_PATTERN = r"^sha256-([a-f0-9]{64})(?:\.(?:sig|att|sbom))?$"
_REFERRER_TAG_RE = re.compile(REFERRER_TAG_PATTERN)
_SCHEMA1_MESSAGE = (
    "schema 1 manifests are not supported (Docker deprecated them in 2017); "
    "push the image again with a current client"
)


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        parts = [self.os, self.architecture] + ([self.variant] if self.variant else [])
        return "/".join(parts)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    artifact_type: str = ""


@dataclass
class ParsedManifest:
    media_type: str
    is_index: bool
    config: Descriptor | None
    layers: list[Descriptor]
    manifests: list[Descriptor]
    subject: Descriptor | None
    artifact_type: str
    annotations: dict[str, str]

    @property
    def is_artifact(self) -> bool:
        """A signature, SBOM or other referrer rather than a runnable image or index."""
        return bool(self.artifact_type) or self.subject is not None


@dataclass(frozen=True)
class HistoryEntry:
    created_by: str
    created: datetime | None
    empty_layer: bool
    comment: str


@dataclass
class ImageConfig:
    os: str
    architecture: str
    variant: str
    created: datetime | None
    labels: dict[str, str]
    history: list[HistoryEntry]

    @property
    def platform(self) -> Platform | None:
        if not self.os and not self.architecture:
            return None
        return Platform(self.os, self.architecture, self.variant)


def is_digest(value: object) -> bool:
    return isinstance(value, str) and DIGEST_RE.match(value) is not None


def is_repository_name(value: object) -> bool:
    """A name the distribution API can address; anything else comes from a lying catalog
    or a forged event, and must not reach a URL, the database or a page."""
    return (
        isinstance(value, str)
        and len(value) <= MAX_NAME_LENGTH
        and _NAME_RE.match(value) is not None
    )


def is_tag(value: object) -> bool:
    return isinstance(value, str) and _TAG_RE.match(value) is not None


def load_json(body: bytes, what: str) -> Any:
    """`json.loads`, raising ContentTooComplex for valid JSON Python will not parse
    (nesting past its recursion limit, integers of thousands of digits) and ValueError
    (JSONDecodeError or UnicodeDecodeError) for what is not JSON at all."""
    try:
        return json.loads(body)
    except RecursionError:
        raise ContentTooComplex(f"{what} nests JSON deeper than can be parsed") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise
    except ValueError:  # int's limit on digits (sys.get_int_max_str_digits)
        raise ContentTooComplex(f"{what} holds a number too long to parse") from None


def digest_of(body: bytes, algorithm: str = "sha256") -> str:
    if algorithm not in ("sha256", "sha512"):
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    return f"{algorithm}:{hashlib.new(algorithm, body).hexdigest()}"


def parse_manifest(body: bytes, content_type: str | None) -> ParsedManifest:
    """Parse and strictly validate an image index or image manifest.

    The media type comes from the body's `mediaType`, else the Content-Type header, else
    the shape of the document (`manifests` -> index, `config` -> image manifest).
    """
    data = _load_object(body)
    schema_version = data.get("schemaVersion")
    media_type = data.get("mediaType")
    if schema_version == 1 or media_type in SCHEMA1_MEDIA_TYPES:
        raise UnsupportedManifest(_SCHEMA1_MESSAGE)
    if schema_version != 2 or isinstance(schema_version, bool):
        raise MalformedManifest(f"manifest has schemaVersion {schema_version!r}, expected 2")
    if media_type is not None and not isinstance(media_type, str):
        raise MalformedManifest("manifest mediaType is not a string")
    media_type = media_type or _media_type_from_header(content_type) or _infer_media_type(data)
    if media_type in SCHEMA1_MEDIA_TYPES:
        raise UnsupportedManifest(_SCHEMA1_MESSAGE)
    if media_type in INDEX_MEDIA_TYPES:
        return _parse_index(data, media_type)
    if media_type in IMAGE_MEDIA_TYPES:
        return _parse_image_manifest(data, media_type)
    raise UnsupportedManifest(f"unsupported manifest media type {media_type!r}")


def _load_object(body: bytes) -> dict[str, Any]:
    try:
        data = load_json(body, "manifest")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise MalformedManifest("manifest is not valid JSON") from None
    if not isinstance(data, dict):
        raise MalformedManifest(f"manifest is a JSON {type(data).__name__}, not an object")
    return data


def _media_type_from_header(content_type: str | None) -> str | None:
    value = (content_type or "").split(";")[0].strip().lower()
    known = INDEX_MEDIA_TYPES | IMAGE_MEDIA_TYPES | SCHEMA1_MEDIA_TYPES
    return value if value in known else None


def _infer_media_type(data: dict[str, Any]) -> str:
    if "manifests" in data:
        return OCI_INDEX
    if "config" in data:
        return OCI_MANIFEST
    raise MalformedManifest("manifest has no mediaType and neither manifests nor config")


def _parse_index(data: dict[str, Any], media_type: str) -> ParsedManifest:
    entries = data.get("manifests")
    if not isinstance(entries, list):
        raise MalformedManifest("image index has no manifests list")
    return ParsedManifest(
        media_type=media_type,
        is_index=True,
        config=None,
        layers=[],
        manifests=[_descriptor(e, f"manifests[{i}]") for i, e in enumerate(entries)],
        subject=_optional_descriptor(data.get("subject"), "subject"),
        artifact_type=_string(data.get("artifactType")),
        annotations=_annotations(data.get("annotations")),
    )


def _parse_image_manifest(data: dict[str, Any], media_type: str) -> ParsedManifest:
    if data.get("config") is None:
        raise MalformedManifest("image manifest has no config")
    config = _descriptor(data["config"], "config")
    layers = data.get("layers")
    if layers is None:
        layers = []
    if not isinstance(layers, list):
        raise MalformedManifest("image manifest layers is not a list")
    artifact_type = _string(data.get("artifactType"))
    if not artifact_type and config.media_type not in IMAGE_CONFIG_MEDIA_TYPES:
        # Before OCI 1.1 an artifact was typed by its config's media type (Helm charts...).
        artifact_type = config.media_type
    return ParsedManifest(
        media_type=media_type,
        is_index=False,
        config=config,
        layers=[_descriptor(e, f"layers[{i}]") for i, e in enumerate(layers)],
        manifests=[],
        subject=_optional_descriptor(data.get("subject"), "subject"),
        artifact_type=artifact_type,
        annotations=_annotations(data.get("annotations")),
    )


def _optional_descriptor(value: Any, where: str) -> Descriptor | None:
    return None if value is None else _descriptor(value, where)


def _descriptor(value: Any, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise MalformedManifest(f"{where} is not a descriptor object")
    media_type = value.get("mediaType")
    if not isinstance(media_type, str) or not media_type:
        raise MalformedManifest(f"{where} has no mediaType")
    digest = value.get("digest")
    if not isinstance(digest, str) or not digest:
        raise MalformedManifest(f"{where} has no digest")
    if not is_digest(digest):
        raise MalformedManifest(f"{where} has an invalid digest {digest[:80]!r}")
    size = value.get("size")
    if size is None:
        raise MalformedManifest(f"{where} has no size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise MalformedManifest(f"{where} has an invalid size {size!r}")
    return Descriptor(
        media_type=media_type,
        digest=digest,
        size=size,
        platform=_platform(value.get("platform")),
        annotations=_annotations(value.get("annotations")),
        artifact_type=_string(value.get("artifactType")),
    )


def _platform(value: Any) -> Platform | None:
    if not isinstance(value, dict):
        return None
    return Platform(
        os=_string(value.get("os")),
        architecture=_string(value.get("architecture")),
        variant=_string(value.get("variant")),
    )


def _annotations(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


def _string(value: Any) -> str:
    return value if isinstance(value, str) else ""


def parse_config(body: bytes) -> ImageConfig:
    """Parse an image config blob, tolerantly: odd or missing fields become empty values."""
    try:
        data = load_json(body, "image config blob")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidResponse("image config blob is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidResponse(f"image config blob is a JSON {type(data).__name__}, not an object")
    container_config = data.get("config")
    labels = container_config.get("Labels") if isinstance(container_config, dict) else None
    history = data.get("history")
    return ImageConfig(
        os=_string(data.get("os")),
        architecture=_string(data.get("architecture")),
        variant=_string(data.get("variant")),
        created=parse_time(data.get("created")),
        labels=_annotations(labels),
        history=[_history_entry(h) for h in history if isinstance(h, dict)]
        if isinstance(history, list)
        else [],
    )


def _history_entry(value: dict[str, Any]) -> HistoryEntry:
    return HistoryEntry(
        created_by=_string(value.get("created_by")),
        created=parse_time(value.get("created")),
        empty_layer=value.get("empty_layer") is True,
        comment=_string(value.get("comment")),
    )


def parse_time(value: object) -> datetime | None:
    """An aware UTC datetime from RFC 3339 text (nanoseconds, `Z`, offsets); junk -> None.

    A time without an offset is taken as UTC.
    """
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = isoparse(value.strip())
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def is_attestation(descriptor: Descriptor) -> bool:
    """An index entry pointing at BuildKit's attestation manifest, not at an image."""
    platform = descriptor.platform
    return (
        platform is not None
        and platform.os == "unknown"
        and platform.architecture == "unknown"
        and descriptor.annotations.get("vnd.docker.reference.type") == ATTESTATION_REFERENCE_TYPE
    )


def referrer_tag_subject(tag: str) -> str | None:
    """The subject digest a referrer tag points at, or None for an ordinary tag.

    `sha256-<hex>` is the OCI referrers fallback tag; `sha256-<hex>.sig` / `.att` / `.sbom`
    are cosign's signature, attestation and SBOM tags.
    """
    match = _REFERRER_TAG_RE.match(tag)
    return f"sha256:{match.group(1)}" if match else None


def layers_in_history_order(
    layers: list[Descriptor], history: list[HistoryEntry]
) -> list[tuple[Descriptor, HistoryEntry | None]]:
    """Pair each layer with the history entry that created it.

    History entries with `empty_layer` made no layer, the others map in order onto the
    layers; a layer without a matching entry (squashed or hand-made images) gets None.
    """
    producing = [entry for entry in history if not entry.empty_layer]
    return [(layer, producing[i] if i < len(producing) else None) for i, layer in enumerate(layers)]
