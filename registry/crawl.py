"""The network half of a sync: read repositories into plain snapshots, write nothing.

What the caller already holds is passed in as plain data (`KnownManifest` by digest, the
config digests it has), so only what is new is fetched. Requests run in a shared thread
pool; the caller's own lookups (`known`, `known_configs`) run in the calling thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from registry import media
from registry.client import FetchedManifest, RegistryClient
from registry.errors import (
    ContentTooComplex,
    ContentTooLarge,
    NotFound,
    RegistryError,
    UnsupportedManifest,
    shorten,
)

logger = logging.getLogger("registry")

CONFIG_MAX_BYTES = 4 * 1024 * 1024
REPOSITORY_COORDINATORS = 4
MAX_NAMED_WARNINGS = 5  # invalid tags named one by one; past that, counted


@dataclass
class KnownManifest:
    """What the caller already holds of a manifest: enough to walk it without a GET."""

    children: list[str]
    config_digest: str


@dataclass
class Snapshot:
    """One repository as read from the registry.

    `tags` maps each tag to the digest it points at; `present` holds every digest the
    registry has (fetched now or known before); `fetched` the manifests read now and
    `configs` the image configs read now."""

    name: str
    tags: dict[str, str] = field(default_factory=dict)
    fetched: dict[str, FetchedManifest] = field(default_factory=dict)
    configs: dict[str, media.ImageConfig] = field(default_factory=dict)
    present: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)


# Answers "which of these digests do you hold already?"; may return more than asked.
KnownLookup = Callable[[Collection[str]], Mapping[str, KnownManifest]]


@dataclass(frozen=True)
class CrawlFailure:
    """A repository that could not be read; `missing` when the registry has no such name."""

    name: str
    error: RegistryError
    missing: bool = False


def config_digest(fetched: FetchedManifest) -> str:
    """The image config a manifest names; artifacts' configs are not image configs."""
    config = fetched.parsed.config
    return config.digest if config and not fetched.parsed.artifact_type else ""


def crawl_repositories(
    client: RegistryClient,
    names: list[str],
    *,
    known: Callable[[str], Mapping[str, KnownManifest]],
    known_configs: Callable[[], Collection[str]],
    workers: int = 8,
) -> Iterator[Snapshot | CrawlFailure]:
    """Read `names` concurrently, yielding each repository's snapshot as it completes.

    `known(name)` and `known_configs()` are called in the consumer's thread just before a
    repository is read, so what the consumer wrote for earlier repositories counts."""
    with (
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="crawl") as requests_pool,
        ThreadPoolExecutor(
            max_workers=min(REPOSITORY_COORDINATORS, workers), thread_name_prefix="repo"
        ) as coordinators,
    ):
        pending: dict[Future, str] = {}
        queue = list(reversed(names))
        while queue or pending:
            while queue and len(pending) < REPOSITORY_COORDINATORS * 2:
                name = queue.pop()
                future = coordinators.submit(
                    read_repository,
                    client,
                    requests_pool,
                    name,
                    known(name),
                    frozenset(known_configs()),
                )
                pending[future] = name
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                name = pending.pop(future)
                try:
                    yield future.result()
                except NotFound as error:
                    yield CrawlFailure(name, error, missing=True)
                except RegistryError as error:
                    yield CrawlFailure(name, error)
                except Exception as error:  # a bug must not stop the other repositories
                    logger.exception("reading %s failed", name)
                    yield CrawlFailure(name, RegistryError(f"internal error: {error!r}"))


def read_repository(
    client: RegistryClient,
    pool: ThreadPoolExecutor,
    name: str,
    known: Mapping[str, KnownManifest],
    known_configs: Collection[str],
) -> Snapshot:
    """Tags (a HEAD each), the manifests and configs not in `known`, and which known
    manifests the registry still has.

    Raises NotFound for a repository the registry lacks: its tag list answers 404 and a
    HEAD finds none of the `known` manifests. A 404 tag list alone does not say so:
    distribution answers it for a repository that holds only untagged manifests (pushed
    by digest), which stay while a HEAD by digest finds them (SPEC §5)."""
    snapshot = Snapshot(name=name)
    unknown_name = False
    try:
        listed = client.list_tags(name)
    except NotFound:
        if not known:
            raise
        listed, unknown_name = [], True
        snapshot.warnings.append(
            "the registry lists no tags for it (404): kept the manifests a HEAD still finds"
        )
    tag_names = _valid_tags(listed, snapshot)
    heads = parallel(pool, lambda tag: client.head_manifest(name, tag), tag_names)
    for tag, head in zip(tag_names, heads, strict=True):
        if head is None:
            snapshot.warnings.append(f"tag {tag} disappeared during the sync")
        else:
            snapshot.tags[tag] = head.digest

    read_graph(client, pool, snapshot, set(snapshot.tags.values()), lambda digests: known)
    _drop_dangling_tags(snapshot)
    # Manifests we know but no tag reaches any more: the registry keeps them as untagged
    # images until someone deletes them, so keep them while a HEAD by digest finds them.
    unreached = sorted(set(known) - snapshot.present)
    heads = parallel(pool, lambda digest: client.head_manifest(name, digest), unreached)
    snapshot.present.update(d for d, head in zip(unreached, heads, strict=True) if head)
    if unknown_name and not snapshot.present:
        raise NotFound(f"unknown to the registry, and none of its {len(known)} manifests is left")

    read_configs(client, pool, snapshot, known_configs)
    return snapshot


def _valid_tags(tags: list[str], snapshot: Snapshot) -> list[str]:
    """The tags a manifest URL can name; a registry listing others is lying or broken."""
    valid = [tag for tag in tags if media.is_tag(tag)]
    invalid = [tag for tag in tags if not media.is_tag(tag)]
    if invalid:
        snapshot.warnings.append(f"the tag list names invalid tags, skipped: {named(invalid)}")
    return valid


def read_graph(
    client: RegistryClient,
    pool: ThreadPoolExecutor,
    snapshot: Snapshot,
    frontier: set[str],
    known: KnownLookup,
) -> None:
    """Walk from `frontier` down through index children, fetching what is not known.

    `known` is asked once per level, for that level's digests."""
    name = snapshot.name
    while frontier:
        snapshot.present |= frontier
        asked = frontier - set(snapshot.fetched)
        found = known(asked)
        held = {digest: found.get(digest) for digest in asked}
        unknown = sorted(digest for digest, entry in held.items() if entry is None)
        fetched = parallel(pool, lambda digest: _get_or_skip(client, name, digest), unknown)
        next_frontier: set[str] = {
            child.digest
            for digest in frontier - asked  # read before the walk (a GET by tag)
            for child in snapshot.fetched[digest].parsed.manifests
        }
        for entry in held.values():
            if entry is not None:
                next_frontier.update(entry.children)
        for digest, manifest in zip(unknown, fetched, strict=True):
            if isinstance(manifest, str):
                snapshot.present.discard(digest)
                snapshot.warnings.append(f"manifest {digest} skipped: {manifest}")
                continue
            snapshot.fetched[digest] = manifest
            next_frontier.update(child.digest for child in manifest.parsed.manifests)
        frontier = next_frontier - snapshot.present


def read_configs(
    client: RegistryClient,
    pool: ThreadPoolExecutor,
    snapshot: Snapshot,
    known_configs: Collection[str],
) -> None:
    """The image configs of the fetched manifests, except those in `known_configs`."""
    wanted = {config_digest(m) for m in snapshot.fetched.values()} - {""}
    configs = sorted(d for d in wanted if d not in known_configs)
    bodies = parallel(pool, lambda digest: _config_or_none(client, snapshot, digest), configs)
    snapshot.configs = {d: c for d, c in zip(configs, bodies, strict=True) if c is not None}


def read_pushed(
    client: RegistryClient,
    pool: ThreadPoolExecutor,
    name: str,
    pushed: Mapping[str, Collection[str]],
    *,
    known: KnownLookup,
    known_configs: Callable[[Collection[str]], Collection[str]],
) -> Snapshot:
    """Pushed manifests (digest -> the tags pushed with it) with the children and configs
    the caller lacks. A digest the registry no longer has (deleted since the push) is
    missing from `present`.

    `known(digests)` and `known_configs(digests)` answer for just the digests asked, in the
    calling thread: a repository may hold thousands of manifests and a push touches a few.
    A tag lands in the snapshot only while the registry still points it at its digest:
    events arrive in any order, and a later push may have moved it.
    """
    snapshot = Snapshot(name=name)
    held = known(set(pushed))
    # A tag the caller has not stored is read with a GET by tag: one request gives the
    # body and where the tag points now. Only a tag that moved needs a GET by digest too.
    first_tags = {d: min(tags) for d, tags in pushed.items() if tags and d not in held}
    by_tag = parallel(pool, lambda d: _get_or_none(client, name, first_tags[d]), first_tags)
    for digest, fetched in zip(first_tags, by_tag, strict=True):
        if fetched is not None and fetched.digest == digest:
            snapshot.fetched[digest] = fetched
            snapshot.tags[first_tags[digest]] = digest
    read_graph(client, pool, snapshot, set(pushed), known)
    unconfirmed = sorted(
        (tag, digest)
        for digest, tags in pushed.items()
        if digest in snapshot.present
        for tag in tags
        if tag not in snapshot.tags
    )
    heads = parallel(pool, lambda pair: client.head_manifest(name, pair[0]), unconfirmed)
    for (tag, digest), head in zip(unconfirmed, heads, strict=True):
        if head is not None and head.digest == digest:
            snapshot.tags[tag] = digest
    wanted = {config_digest(m) for m in snapshot.fetched.values()} - {""}
    read_configs(client, pool, snapshot, known_configs(wanted))
    return snapshot


def parallel(pool: ThreadPoolExecutor, function: Callable, items: Iterable) -> list:
    items = list(items)
    if len(items) <= 1:
        return [function(item) for item in items]
    return list(pool.map(function, items))


def _drop_dangling_tags(snapshot: Snapshot) -> None:
    for tag, digest in list(snapshot.tags.items()):
        if digest not in snapshot.present:
            del snapshot.tags[tag]


def named(values: list[str]) -> str:
    """A few values for a message, each shortened, then how many more there are."""
    shown = ", ".join(repr(shorten(value, 60)) for value in values[:MAX_NAMED_WARNINGS])
    rest = len(values) - MAX_NAMED_WARNINGS
    return f"{shown} and {rest} more" if rest > 0 else shown


def _get_or_skip(client: RegistryClient, name: str, digest: str) -> FetchedManifest | str:
    """The manifest, or why it is skipped while the rest of the repository syncs.

    Legacy (schema 1), oversized and over-nested manifests are content we cannot list, not
    a broken registry; a malformed body or a digest mismatch is, and fails the repository."""
    try:
        return client.get_manifest(name, digest)
    except NotFound:
        return "it disappeared during the sync"
    except (UnsupportedManifest, ContentTooLarge, ContentTooComplex) as error:
        return error.message


def _get_or_none(client: RegistryClient, name: str, tag: str) -> FetchedManifest | None:
    """The manifest a tag points at, or None when the tag is gone or its manifest is one
    to skip (the GET by digest that follows says why)."""
    try:
        return client.get_manifest(name, tag)
    except (NotFound, UnsupportedManifest, ContentTooLarge):
        return None


def _config_or_none(
    client: RegistryClient, snapshot: Snapshot, digest: str
) -> media.ImageConfig | None:
    try:
        return media.parse_config(
            client.get_blob(snapshot.name, digest, max_bytes=CONFIG_MAX_BYTES)
        )
    except RegistryError as error:
        # An image without its config still lists; only its platform and history are unknown.
        snapshot.warnings.append(f"config {digest}: {error}")
        return None
