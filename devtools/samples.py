"""A realistic set of sample repositories for the demo.

``python -m devtools.samples URL`` pushes the base set; ``--rebuilds`` then pushes new
builds of some tags, which leaves the previous builds untagged in the registry. The demo
runs a sync between the two so hubimages has seen the builds that become untagged (the
registry API cannot list untagged manifests it never saw). Everything is deterministic:
running it again pushes the same digests.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from devtools.pusher import ImagePusher, PushedManifest, random_layer

KB = 1024
MB = 1024 * KB
PLATFORMS = [("linux", "amd64", ""), ("linux", "arm64", "v8"), ("linux", "arm", "v7")]


def when(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def multi_arch(
    pusher: ImagePusher,
    repository: str,
    tags: list[str],
    *,
    version: str,
    created: str,
    sizes: tuple[int, int],
    platforms: list[tuple[str, str, str]] = PLATFORMS,
    attestations: bool = True,
    media_type: str = "oci",
) -> PushedManifest:
    """One image per platform (its own base layer, an app layer), an index, and tags."""
    images = []
    for os, arch, variant in platforms:
        platform = f"{os}-{arch}{variant}"
        images.append(
            pusher.push_image(
                repository,
                layers=[
                    random_layer(sizes[0], f"{repository}:base:{platform}"),
                    random_layer(sizes[1], f"{repository}:{version}:{platform}"),
                ],
                os=os,
                architecture=arch,
                variant=variant,
                created=when(created),
                labels={"org.opencontainers.image.version": version},
                history=[f"ADD rootfs-{platform}.tar.gz / # buildkit", f"RUN install {version}"],
                media_type=media_type,  # type: ignore[arg-type]
            )
        )
    index = pusher.push_index(
        repository,
        images=images,
        attestations=attestations,
        annotations={"org.opencontainers.image.created": created} if media_type == "oci" else None,
        media_type=media_type,  # type: ignore[arg-type]
    )
    for tag in tags:
        pusher.tag(repository, tag, index)
    return index


def push_base(pusher: ImagePusher) -> None:
    """Eight repositories, about 25 MB of layers."""
    say = _reporter()

    multi_arch(
        pusher, "library/nginx", ["1.26", "1.26.2"], version="1.26.2",
        created="2024-08-14T10:00:00", sizes=(600 * KB, 300 * KB),
    )  # fmt: skip
    multi_arch(
        pusher, "library/nginx", ["1.27", "1.27.3", "mainline", "latest"], version="1.27.3",
        created="2025-11-20T09:30:00", sizes=(600 * KB, 350 * KB),
    )  # fmt: skip
    say("library/nginx: two multi-arch indexes with attestations, 6 tags")

    multi_arch(
        pusher, "library/alpine", ["3.20", "latest"], version="3.20.3",
        created="2025-09-06T12:00:00", sizes=(400 * KB, 100 * KB), attestations=False,
        media_type="docker",
    )  # fmt: skip
    multi_arch(
        pusher, "library/alpine", ["3.19"], version="3.19.4",
        created="2024-09-06T12:00:00", sizes=(380 * KB, 100 * KB),
        platforms=PLATFORMS[:2], attestations=False, media_type="docker",
    )  # fmt: skip
    say("library/alpine: two Docker manifest lists")

    pusher.push_image(
        "library/redis", tag="6.2", layers=[random_layer(900 * KB, "redis:6.2")],
        created=when("2023-02-10T08:00:00"), media_type="docker",
        labels={"org.opencontainers.image.version": "6.2.11"},
    )  # fmt: skip
    multi_arch(
        pusher, "library/redis", ["7.4", "latest"], version="7.4.1",
        created="2025-10-02T15:00:00", sizes=(500 * KB, 400 * KB), platforms=PLATFORMS[:2],
    )  # fmt: skip
    say("library/redis: a stale 2023 image and a current index")

    base = random_layer(2 * MB, "team:python-base")
    deps = random_layer(700 * KB, "team:deps")
    for repository, tag, seed, created in [
        ("team/api", "v1.0", "api:v1.0", "2025-06-01T10:00:00"),
        ("team/api", "v1.1", "api:v1.1", "2025-09-15T10:00:00"),
        ("team/api", "main", "api:main-1", "2025-11-01T10:00:00"),
        ("team/worker", "v1.1", "worker:v1.1", "2025-09-15T11:00:00"),
        ("team/worker", "main", "worker:main-1", "2025-11-01T11:00:00"),
    ]:
        pusher.push_image(
            repository, tag=tag, layers=[base, deps, random_layer(150 * KB, seed)],
            created=when(created),
            history=["FROM python:3.13-slim", "RUN pip install -r requirements.txt", "COPY . /app"],
        )  # fmt: skip
    say("team/api, team/worker: images sharing a 2 MB base layer across repositories")

    signed = pusher.push_image(
        "team/web", tag="v2.3.0", layers=[random_layer(1200 * KB, "web:v2.3.0")],
        created=when("2025-10-20T14:00:00"),
    )  # fmt: skip
    pusher.tag("team/web", "production", signed)
    pusher.push_cosign_signature("team/web", signed)
    pusher.push_referrer(
        "team/web", signed, artifact_type="application/spdx+json",
        payload=b'{"spdxVersion": "SPDX-2.3", "name": "team/web"}',
        layer_media_type="application/spdx+json",
        annotations={"org.opencontainers.image.created": "2025-10-20T14:05:00Z"},
    )  # fmt: skip
    say("team/web: an image with a cosign signature and an SBOM referrer")

    for tag, created in [("2023.03", "2023-03-01T00:00:00"), ("2023.07", "2023-07-12T00:00:00")]:
        pusher.push_image(
            "tools/ci-runner", tag=tag, created=when(created),
            layers=[random_layer(1500 * KB, "ci-runner:base"), random_layer(200 * KB, tag)],
        )  # fmt: skip
    say("tools/ci-runner: stale images from 2023")

    pusher.push_image(
        "archive/legacy-app", tag="final", media_type="docker",
        layers=[random_layer(800 * KB, "legacy:base"), random_layer(120 * KB, "legacy:app")],
        created="1970-01-01T00:00:00Z",
    )  # fmt: skip
    say("archive/legacy-app: a reproducible build (created 1970)")


def push_rebuilds(pusher: ImagePusher) -> None:
    """New builds of existing tags: the builds they replace stay as untagged images."""
    say = _reporter()
    base = random_layer(2 * MB, "team:python-base")
    deps = random_layer(700 * KB, "team:deps")
    for repository, seed, created in [
        ("team/api", "api:main-2", "2025-11-20T10:00:00"),
        ("team/api", "api:main-3", "2025-11-24T10:00:00"),
        ("team/worker", "worker:main-2", "2025-11-20T11:00:00"),
    ]:
        pusher.push_image(
            repository, tag="main", layers=[base, deps, random_layer(150 * KB, seed)],
            created=when(created),
            history=["FROM python:3.13-slim", "RUN pip install -r requirements.txt", "COPY . /app"],
        )  # fmt: skip
    say("team/api, team/worker: rebuilt 'main' (older builds are now untagged)")
    multi_arch(
        pusher, "library/nginx", ["latest", "mainline"], version="1.27.4",
        created="2025-11-25T09:30:00", sizes=(600 * KB, 350 * KB),
    )  # fmt: skip
    say("library/nginx: 'latest' and 'mainline' moved to 1.27.4")


def _reporter():
    def say(message: str) -> None:
        print(f"  pushed {message}", flush=True)

    return say


def pull_like_docker(pusher: ImagePusher, reference: str, user_agent: str) -> None:
    """GET a tag's manifest and, for an index, its linux/amd64 image, as `docker pull` does
    (layers are left out: only manifest pulls count)."""
    repository, tag = reference.rsplit(":", 1)
    response = pusher.pull_manifest(repository, tag, user_agent=user_agent)
    response.raise_for_status()
    for entry in response.json().get("manifests", []):
        platform = entry.get("platform", {})
        if (platform.get("os"), platform.get("architecture")) == ("linux", "amd64"):
            pusher.pull_manifest(repository, entry["digest"], user_agent=user_agent)
            break
    print(f"  pulled {reference}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Push the demo's sample images.")
    parser.add_argument("url", help="registry base URL, such as http://127.0.0.1:5050")
    parser.add_argument("--rebuilds", action="store_true", help="push the newer builds")
    parser.add_argument(
        "--pull", nargs="+", metavar="REPOSITORY:TAG", help="pull these as docker would instead"
    )
    parser.add_argument("--username")
    parser.add_argument("--password")
    args = parser.parse_args(argv)
    auth = (args.username, args.password) if args.username else None
    pusher = ImagePusher(args.url, auth=auth, user_agent="hubimages-samples/1")
    if args.pull:
        for reference in args.pull:
            pull_like_docker(pusher, reference, "docker/27.3.1 (linux; hubimages demo)")
    elif args.rebuilds:
        push_rebuilds(pusher)
    else:
        push_base(pusher)
    return 0


if __name__ == "__main__":
    sys.exit(main())
