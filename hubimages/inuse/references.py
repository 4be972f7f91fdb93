"""Image references as clusters and CI systems write them, read the way Docker reads them
(distribution's reference grammar): `[host[:port]/]repository[:tag][@digest]`.

The first part of a name is a registry host only if it holds a `.` or a `:`, is `localhost`,
or has an upper-case letter; otherwise the image is on Docker Hub, `docker.io`, where a
one-part name lives under `library/` (`nginx` is `docker.io/library/nginx:latest`). Docker
Hub answers to several names (`index.docker.io`, `registry-1.docker.io`): they read as
`docker.io`. A tag and a digest together (`host:5000/team/api:1.2@sha256:…`) name the
digest; the tag only says how people call it.

Kubernetes adds its own shapes to container statuses' `imageID`: a `docker-pullable://`
or `docker://` prefix, and a bare `sha256:…` (an image's config digest, which no registry
manifest has: `ConfigDigest` tells it apart so callers can count it and move on).

No Django here: the Kubernetes reporter (`python -m hubimages.inuse kubectl`) runs it in a
CronJob with nothing but this package and the `registry` library.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from registry.media import is_digest, is_repository_name, is_tag

DOCKER_HUB = "docker.io"
DOCKER_HUB_ALIASES = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)
RUNTIME_PREFIXES = ("docker-pullable://", "docker://")
MAX_REFERENCE_LENGTH = 1000
_HOST_RE = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9-]+)*(?::\d+)?$"
)
_IPV6_HOST_RE = re.compile(r"^\[[0-9A-Fa-f:.]+\](?::\d+)?$")


class BadReference(ValueError):
    """Not an image reference: the message says what is wrong."""


class ConfigDigest(BadReference):
    """A bare `sha256:…`: an image's ID (its config's digest), not a manifest a registry
    holds. Kubernetes reports it for images loaded without a registry."""


@dataclass(frozen=True)
class ImageReference:
    host: str  # lower case, Docker Hub as `docker.io`, a default port dropped
    repository: str
    tag: str = ""
    digest: str = ""

    def __str__(self) -> str:
        text = f"{self.host}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse(text: str) -> ImageReference:
    """The reference `text` names; raises BadReference (ConfigDigest for a bare digest).
    A reference without tag or digest means `latest`, as `docker pull` reads it."""
    if not isinstance(text, str):
        raise BadReference("a reference is a string")
    value = text.strip()
    for prefix in RUNTIME_PREFIXES:
        if value.startswith(prefix):
            value = value[len(prefix) :]
    if not value:
        raise BadReference("empty reference")
    if len(value) > MAX_REFERENCE_LENGTH:
        raise BadReference(f"longer than {MAX_REFERENCE_LENGTH} characters")
    if is_digest(value.lower()):
        raise ConfigDigest(f"{value[:80]} is an image ID (a config digest), not a reference")
    name, _, digest = value.partition("@")
    if digest and not is_digest(digest):
        raise BadReference(f"{digest[:80]!r} is not a digest: give sha256:<64 hex digits>")
    name, tag = _split_tag(name)
    if tag and not is_tag(tag):
        raise BadReference(f"{tag[:80]!r} is not a tag")
    host, repository = _split_host(name)
    if not is_repository_name(repository):
        raise BadReference(f"{repository[:80]!r} is not a repository name")
    if not tag and not digest:
        tag = "latest"
    return ImageReference(host=host, repository=repository, tag=tag, digest=digest)


def _split_tag(name: str) -> tuple[str, str]:
    """`host:5000/team/api:1.2` -> (`host:5000/team/api`, `1.2`): the last `:` after the
    last `/` separates the tag (one before it belongs to the host's port)."""
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :]
    return name, ""


def _split_host(name: str) -> tuple[str, str]:
    first, slash, rest = name.partition("/")
    is_host = slash and (
        "." in first or ":" in first or first == "localhost" or first.lower() != first
    )
    if not is_host:
        host, repository = DOCKER_HUB, name
    else:
        if not (_HOST_RE.match(first) or _IPV6_HOST_RE.match(first)):
            raise BadReference(f"{first[:80]!r} is not a registry host")
        host, repository = host_key(first), rest
    if host == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    return host, repository


def host_key(host: str) -> str:
    """How a registry host compares: lower case, Docker Hub's names as `docker.io`, and a
    default port dropped (`registry.example.com:443` is `registry.example.com`)."""
    host = host.strip().lower()
    for default_port in (":443", ":80"):
        if host.endswith(default_port):
            host = host[: -len(default_port)]
    return DOCKER_HUB if host in DOCKER_HUB_ALIASES else host
