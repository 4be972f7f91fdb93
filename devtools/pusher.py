"""Push images, indexes and artifacts through a registry's HTTP API.

For tests, the demo and benchmarks: content is built from seeds so that tests can make
layers that are shared (same contents, same digest) or not. Layers are pseudo-random
bytes, not real tarballs; registries never look inside them.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import requests

from registry import media

# Artifact types the samples use; hubimages itself never needs to name them.
IN_TOTO = "application/vnd.in-toto+json"
COSIGN_SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"

EMPTY_JSON = b"{}"
TIMEOUT = 30

Kind = Literal["oci", "docker"]
Platform = tuple[str, str, str]


class PushError(RuntimeError):
    def __init__(self, message: str, response: requests.Response | None = None) -> None:
        if response is not None:
            message = f"{message}: {response.status_code} {response.text[:500]}"
        super().__init__(message)
        self.response = response


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int


@dataclass
class PushedManifest:
    digest: str
    size: int
    media_type: str
    body: bytes
    config_digest: str | None = None
    config_size: int = 0
    layer_digests: list[str] = field(default_factory=list)
    layer_sizes: list[int] = field(default_factory=list)
    child_digests: list[str] = field(default_factory=list)
    children: list[PushedManifest] = field(default_factory=list)
    platform: Platform | None = None
    artifact_type: str | None = None
    tag: str | None = None

    @property
    def hex(self) -> str:
        return self.digest.removeprefix("sha256:")

    @property
    def blob_digests(self) -> list[str]:
        """The config and layers (not the manifest's own bytes)."""
        config = [self.config_digest] if self.config_digest else []
        return config + self.layer_digests

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def random_layer(size: int, seed: int | str) -> bytes:
    """Deterministic, incompressible bytes: the same seed gives the same layer."""
    return hashlib.shake_256(f"hubimages-layer:{type(seed).__name__}:{seed}".encode()).digest(size)


def _timestamp(created: datetime | str | None) -> str | None:
    if created is None or isinstance(created, str):
        return created
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return created.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _encode(body: dict[str, Any] | bytes) -> bytes:
    if isinstance(body, bytes):
        return body
    return json.dumps(body, indent=3).encode()


def _subject_descriptor(subject: Any) -> dict[str, Any]:
    if isinstance(subject, PushedManifest):
        return subject.descriptor()
    digest, media_type, size = subject
    return {"mediaType": media_type, "digest": digest, "size": size}


class ImagePusher:
    def __init__(
        self,
        base_url: str,
        *,
        auth: tuple[str, str] | None = None,
        user_agent: str = "hubimages-test-pusher/1",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["User-Agent"] = user_agent
        if auth:
            self.session.auth = auth

    # -- blobs and manifests ------------------------------------------------------------

    def push_blob(self, repository: str, data: bytes) -> Blob:
        """Monolithic upload: POST opens the upload, one PUT with ``?digest=`` ends it."""
        blob = Blob(sha256(data), len(data))
        head = self.session.head(self._url(repository, "blobs", blob.digest), timeout=TIMEOUT)
        if head.status_code == 200:
            return blob
        start = self.session.post(
            f"{self.base_url}/v2/{repository}/blobs/uploads/", timeout=TIMEOUT
        )
        if start.status_code != 202:
            raise PushError(f"cannot start upload to {repository}", start)
        location = _with_query(urljoin(self.base_url + "/", start.headers["Location"]), blob.digest)
        put = self.session.put(
            location,
            data=data,
            headers={"Content-Type": "application/octet-stream"},
            timeout=TIMEOUT,
        )
        if put.status_code != 201:
            raise PushError(f"cannot upload {blob.digest} to {repository}", put)
        return blob

    def push_manifest(
        self,
        repository: str,
        body: dict[str, Any] | bytes,
        media_type: str,
        reference: str | None = None,
    ) -> str:
        data = _encode(body)
        digest = sha256(data)
        response = self.session.put(
            self._url(repository, "manifests", reference or digest),
            data=data,
            headers={"Content-Type": media_type},
            timeout=TIMEOUT,
        )
        if response.status_code != 201:
            raise PushError(f"cannot put manifest {reference or digest} in {repository}", response)
        answered = response.headers.get("Docker-Content-Digest")
        if answered and answered != digest:
            raise PushError(f"registry stored {answered}, expected {digest}")
        return digest

    def _put(
        self, repository: str, body: dict[str, Any], media_type: str, tag: str | None, **fields: Any
    ) -> PushedManifest:
        data = _encode(body)
        digest = self.push_manifest(repository, data, media_type, tag)
        return PushedManifest(
            digest=digest, size=len(data), media_type=media_type, body=data, tag=tag, **fields
        )

    # -- images ---------------------------------------------------------------------------

    def push_image(
        self,
        repository: str,
        *,
        tag: str | None = None,
        layers: list[bytes],
        os: str = "linux",
        architecture: str = "amd64",
        variant: str = "",
        created: datetime | str | None = None,
        labels: dict[str, str] | None = None,
        history: list[str] | None = None,
        annotations: dict[str, str] | None = None,
        media_type: Kind = "oci",
        subject: PushedManifest | tuple[str, str, int] | None = None,
        artifact_type: str | None = None,
        config_extra: dict[str, Any] | None = None,
    ) -> PushedManifest:
        """Push the layers, a config and the manifest (by tag, else by digest).

        ``created=None`` leaves ``created`` out of the config, so the same arguments
        always give the same digest.
        """
        if history is not None and len(history) != len(layers):
            raise ValueError("history needs one created_by line per layer")
        if media_type == "docker" and (annotations or subject or artifact_type):
            raise ValueError(
                "Docker schema 2 manifests have no annotations, subject or artifactType"
            )
        layer_blobs = [self.push_blob(repository, data) for data in layers]
        timestamp = _timestamp(created)
        config: dict[str, Any] = {"architecture": architecture, "os": os}
        if variant:
            config["variant"] = variant
        if timestamp:
            config["created"] = timestamp
        config["config"] = {"Labels": labels} if labels else {}
        config["rootfs"] = {"type": "layers", "diff_ids": [blob.digest for blob in layer_blobs]}
        created_by = history or [f"COPY layer-{i} / # buildkit" for i in range(len(layers))]
        config["history"] = [
            {"created": timestamp, "created_by": line} if timestamp else {"created_by": line}
            for line in created_by
        ]
        config.update(config_extra or {})
        config_data = json.dumps(config, separators=(",", ":")).encode()
        config_blob = self.push_blob(repository, config_data)

        oci = media_type == "oci"
        layer_type = media.OCI_LAYER if oci else media.DOCKER_LAYER
        manifest_type = media.OCI_MANIFEST if oci else media.DOCKER_MANIFEST_V2
        body: dict[str, Any] = {"schemaVersion": 2, "mediaType": manifest_type}
        if artifact_type:
            body["artifactType"] = artifact_type
        body["config"] = {
            "mediaType": media.OCI_IMAGE_CONFIG if oci else media.DOCKER_CONTAINER_CONFIG,
            "digest": config_blob.digest,
            "size": config_blob.size,
        }
        body["layers"] = [
            {"mediaType": layer_type, "digest": blob.digest, "size": blob.size}
            for blob in layer_blobs
        ]
        if subject is not None:
            body["subject"] = _subject_descriptor(subject)
        if annotations:
            body["annotations"] = annotations
        return self._put(
            repository,
            body,
            manifest_type,
            tag,
            config_digest=config_blob.digest,
            config_size=config_blob.size,
            layer_digests=[blob.digest for blob in layer_blobs],
            layer_sizes=[blob.size for blob in layer_blobs],
            platform=(os, architecture, variant),
            artifact_type=artifact_type,
        )

    def push_index(
        self,
        repository: str,
        *,
        tag: str | None = None,
        images: list[PushedManifest],
        platforms: list[Platform] | None = None,
        attestations: bool | list[PushedManifest] = False,
        annotations: dict[str, str] | None = None,
        media_type: Kind = "oci",
    ) -> PushedManifest:
        """An index of ``images``; with ``attestations`` (True, or the images to attest)
        each image gets a buildx-style attestation manifest listed after the images."""
        if platforms is not None and len(platforms) != len(images):
            raise ValueError("platforms needs one entry per image")
        entries: list[dict[str, Any]] = []
        children: list[PushedManifest] = []
        for i, image in enumerate(images):
            platform = platforms[i] if platforms else image.platform or ("linux", "amd64", "")
            entries.append({**image.descriptor(), "platform": _platform(*platform)})
            children.append(image)
        attested = images if attestations is True else (attestations or [])
        for image in attested:
            attestation = self.push_attestation(repository, image)
            entries.append(
                {
                    **attestation.descriptor(),
                    "annotations": {
                        "vnd.docker.reference.digest": image.digest,
                        "vnd.docker.reference.type": "attestation-manifest",
                    },
                    "platform": _platform("unknown", "unknown", ""),
                }
            )
            children.append(attestation)
        index_type = media.OCI_INDEX if media_type == "oci" else media.DOCKER_MANIFEST_LIST
        body: dict[str, Any] = {"schemaVersion": 2, "mediaType": index_type, "manifests": entries}
        if annotations:
            body["annotations"] = annotations
        return self._put(
            repository,
            body,
            index_type,
            tag,
            child_digests=[entry["digest"] for entry in entries],
            children=children,
        )

    def push_attestation(self, repository: str, image: PushedManifest) -> PushedManifest:
        """The manifest buildx writes for provenance: an in-toto statement as its layer."""
        statement = {
            "_type": "https://in-toto.io/Statement/v0.1",
            "predicateType": "https://slsa.dev/provenance/v0.2",
            "subject": [{"name": f"pkg:docker/{repository}", "digest": {"sha256": image.hex}}],
            "predicate": {"builder": {"id": "hubimages-test-pusher"}, "buildType": "test"},
        }
        layer = self.push_blob(repository, json.dumps(statement).encode())
        config = {
            "architecture": "unknown",
            "os": "unknown",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
        }
        config_blob = self.push_blob(repository, json.dumps(config).encode())
        body = {
            "schemaVersion": 2,
            "mediaType": media.OCI_MANIFEST,
            "config": {
                "mediaType": media.OCI_IMAGE_CONFIG,
                "digest": config_blob.digest,
                "size": config_blob.size,
            },
            "layers": [
                {
                    "mediaType": IN_TOTO,
                    "digest": layer.digest,
                    "size": layer.size,
                    "annotations": {
                        "in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"
                    },
                }
            ],
        }
        return self._put(
            repository,
            body,
            media.OCI_MANIFEST,
            None,
            config_digest=config_blob.digest,
            config_size=config_blob.size,
            layer_digests=[layer.digest],
            layer_sizes=[layer.size],
            platform=("unknown", "unknown", ""),
        )

    # -- artifacts ------------------------------------------------------------------------

    def push_referrer(
        self,
        repository: str,
        subject: PushedManifest,
        *,
        artifact_type: str = "application/vnd.example.sbom.v1+json",
        payload: bytes = b'{"sbom": "example"}',
        layer_media_type: str = "application/json",
        annotations: dict[str, str] | None = None,
        tag: str | None = None,
        fallback_tag: bool = True,
    ) -> PushedManifest:
        """An OCI 1.1 artifact whose ``subject`` is ``subject``.

        Distribution 2.8 has no referrers API, so like oras this also keeps the
        referrers tag schema: tag ``sha256-<hex of subject>`` on an index of referrers.
        """
        config = self.push_blob(repository, EMPTY_JSON)
        layer = self.push_blob(repository, payload)
        body: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": media.OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {"mediaType": media.OCI_EMPTY, "digest": config.digest, "size": config.size},
            "layers": [{"mediaType": layer_media_type, "digest": layer.digest, "size": layer.size}],
            "subject": subject.descriptor(),
        }
        if annotations:
            body["annotations"] = annotations
        referrer = self._put(
            repository,
            body,
            media.OCI_MANIFEST,
            tag,
            config_digest=config.digest,
            config_size=config.size,
            layer_digests=[layer.digest],
            layer_sizes=[layer.size],
            artifact_type=artifact_type,
        )
        if fallback_tag:
            entry = {**referrer.descriptor(), "artifactType": artifact_type}
            if annotations:
                entry["annotations"] = annotations
            self._add_to_referrers_index(repository, f"sha256-{subject.hex}", entry)
        return referrer

    def _add_to_referrers_index(self, repository: str, tag: str, entry: dict[str, Any]) -> None:
        existing = self.pull_manifest(repository, tag)
        entries: list[dict[str, Any]] = []
        if existing.status_code == 200:
            entries = existing.json().get("manifests", [])
        elif existing.status_code != 404:
            raise PushError(f"cannot read referrers tag {tag}", existing)
        if any(known["digest"] == entry["digest"] for known in entries):
            return
        body = {"schemaVersion": 2, "mediaType": media.OCI_INDEX, "manifests": [*entries, entry]}
        self.push_manifest(repository, body, media.OCI_INDEX, tag)

    def push_cosign_signature(self, repository: str, subject: PushedManifest) -> PushedManifest:
        """What ``cosign sign`` pushes: a simple-signing payload under tag
        ``sha256-<hex>.sig``, the signature itself in a layer annotation."""
        payload = json.dumps(
            {
                "critical": {
                    "identity": {
                        "docker-reference": f"{urlsplit(self.base_url).netloc}/{repository}"
                    },
                    "image": {"docker-manifest-digest": subject.digest},
                    "type": "cosign container image signature",
                },
                "optional": None,
            }
        ).encode()
        layer = self.push_blob(repository, payload)
        config = {
            "architecture": "",
            "created": "0001-01-01T00:00:00Z",
            "history": [{"created": "0001-01-01T00:00:00Z"}],
            "os": "",
            "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
            "config": {},
        }
        config_blob = self.push_blob(repository, json.dumps(config).encode())
        signature = base64.b64encode(hashlib.sha512(payload).digest()).decode()
        body = {
            "schemaVersion": 2,
            "mediaType": media.OCI_MANIFEST,
            "config": {
                "mediaType": media.OCI_IMAGE_CONFIG,
                "digest": config_blob.digest,
                "size": config_blob.size,
            },
            "layers": [
                {
                    "mediaType": COSIGN_SIMPLE_SIGNING,
                    "digest": layer.digest,
                    "size": layer.size,
                    "annotations": {"dev.cosignproject.cosign/signature": signature},
                }
            ],
        }
        return self._put(
            repository,
            body,
            media.OCI_MANIFEST,
            f"sha256-{subject.hex}.sig",
            config_digest=config_blob.digest,
            config_size=config_blob.size,
            layer_digests=[layer.digest],
            layer_sizes=[layer.size],
        )

    # -- tags, deletes, pulls -------------------------------------------------------------

    def tag(self, repository: str, tag: str, manifest: PushedManifest) -> None:
        self.push_manifest(repository, manifest.body, manifest.media_type, tag)

    def delete_manifest(
        self, repository: str, digest: str, *, missing_ok: bool = False
    ) -> requests.Response:
        response = self.session.delete(self._url(repository, "manifests", digest), timeout=TIMEOUT)
        if response.status_code == 202 or (missing_ok and response.status_code == 404):
            return response
        raise PushError(f"cannot delete {digest} from {repository}", response)

    def pull_manifest(
        self,
        repository: str,
        reference: str,
        method: str = "GET",
        user_agent: str | None = None,
    ) -> requests.Response:
        headers = {"Accept": media.MANIFEST_ACCEPT}
        if user_agent:
            headers["User-Agent"] = user_agent
        return self.session.request(
            method, self._url(repository, "manifests", reference), headers=headers, timeout=TIMEOUT
        )

    def list_tags(self, repository: str) -> list[str]:
        response = self.session.get(f"{self.base_url}/v2/{repository}/tags/list", timeout=TIMEOUT)
        if response.status_code != 200:
            raise PushError(f"cannot list tags of {repository}", response)
        return sorted(response.json().get("tags") or [])

    def _url(self, repository: str, kind: str, reference: str) -> str:
        return f"{self.base_url}/v2/{repository}/{kind}/{reference}"


def _platform(os: str, architecture: str, variant: str) -> dict[str, str]:
    platform = {"architecture": architecture, "os": os}
    if variant:
        platform["variant"] = variant
    return platform


def _with_query(url: str, digest: str) -> str:
    """Add ``digest=`` to an upload location, which already carries state parameters."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + [("digest", digest)]
    return urlunsplit(parts._replace(query=urlencode(query)))
