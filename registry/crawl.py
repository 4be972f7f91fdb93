"""The network half of a sync: read repositories into plain snapshots, write nothing.

What the caller already holds is passed in as plain data (`KnownRepository`: its manifests
by digest and its tags, the config digests it has), so only what is new is fetched, with
the fewest requests the API allows:

- a tag the caller does not know: one GET by tag, which gives the body and the digest;
- a tag it knows: one HEAD; a GET (by digest) only when it now points elsewhere, at a
  manifest the caller does not hold;
- an index's children and an image's config: one GET each, sent as soon as their parent
  arrives, not once a whole level is read;
- a manifest the caller holds that no tag reaches any more: one HEAD by digest;
- on a registry with the OCI referrers API, one GET of the referrers of each new image or
  index (distribution 2.8 answers the first with 404, and is not asked again).

Every request of every repository goes through one work queue of `workers` threads, so a
repository's slow tail never leaves the others waiting. The caller's own lookups (`known`,
`known_configs`) run in the calling thread, which also consumes the snapshots.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import defaultdict, deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
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
from registry.spool import Budget, Spool

logger = logging.getLogger("registry")

CONFIG_MAX_BYTES = 4 * 1024 * 1024
MAX_NAMED_WARNINGS = 5  # invalid tags named one by one; past that, counted
# Repositories read at once: enough to keep every worker busy while the caller writes one.
REPOSITORIES_IN_FLIGHT = 8
NAME_UNKNOWN = "NAME_UNKNOWN"


@dataclass
class KnownManifest:
    """What the caller already holds of a manifest: enough to walk it without a GET."""

    children: list[str]
    config_digest: str


@dataclass
class KnownRepository:
    """What the caller held of a repository when its crawl began: the manifests (to fetch
    only what is new) and where each tag pointed (to HEAD only the tags it knows)."""

    manifests: dict[str, KnownManifest] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    # Manifests an earlier read found missing once: the next read settles them.
    unconfirmed: set[str] = field(default_factory=set)


NOTHING_KNOWN = KnownRepository()


def _decode_manifest(digest: str, media_type: str, body: bytes) -> FetchedManifest:
    parsed = media.parse_manifest(body, media_type)
    return FetchedManifest(digest, parsed.media_type, body, parsed)


def _decode_config(digest: str, meta: str, body: bytes) -> media.ImageConfig:
    return media.parse_config(body)


def manifest_spool(budget: Budget | None = None) -> Spool[FetchedManifest]:
    return Spool(_decode_manifest, budget)


def config_spool(budget: Budget | None = None) -> Spool[media.ImageConfig]:
    return Spool(_decode_config, budget)


@dataclass
class Snapshot:
    """One repository as read from the registry.

    `tags` maps each tag to the digest it points at; `present` holds every digest the
    registry has (fetched now or known before); `fetched` the manifests read now and
    `configs` the image configs read now, both spooled (`registry.spool`): reading an
    entry decodes it again, so iterate rather than hold them all. Close the snapshot when
    done with it."""

    name: str
    tags: dict[str, str] = field(default_factory=dict)
    fetched: Spool[FetchedManifest] = field(default_factory=manifest_spool)
    configs: Spool[media.ImageConfig] = field(default_factory=config_spool)
    present: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)
    # The image configs the fetched manifests name (read now or held by the caller).
    config_digests: set[str] = field(default_factory=set)
    # Fetched manifests not to store now (`withhold_incomplete`): absent from `present`.
    withheld: set[str] = field(default_factory=set)
    _config_of: dict[str, str] = field(default_factory=dict)

    def add_manifest(self, manifest: FetchedManifest) -> None:
        self.fetched.add(manifest.digest, manifest.media_type, manifest.body)
        self._config_of[manifest.digest] = config_digest(manifest)
        self.config_digests.add(config_digest(manifest))
        self.config_digests.discard("")

    def withhold(self, digests: set[str], warnings: list[str]) -> None:
        """Leave `digests` (fetched) out of what is stored, saying why in `warnings`."""
        self.withheld |= digests
        self.present -= digests
        self.warnings += warnings
        self.config_digests = {
            self._config_of[digest] for digest in self.fetched if digest in self.present
        } - {""}

    def close(self) -> None:
        self.fetched.close()
        self.configs.close()


# Answers "which of these digests do you hold already?"; may return more than asked.
KnownLookup = Callable[[Collection[str]], Mapping[str, KnownManifest]]


@dataclass(frozen=True)
class CrawlFailure:
    """A repository that could not be read; `missing` when the registry has no such name
    (its tag list answered 404 NAME_UNKNOWN, and a HEAD finds none of the manifests the
    caller held): one round of answers, for the caller to confirm before removing."""

    name: str
    error: RegistryError
    missing: bool = False


def config_digest(fetched: FetchedManifest) -> str:
    """The image config a manifest names; artifacts' configs are not image configs."""
    config = fetched.parsed.config
    return config.digest if config and not fetched.parsed.artifact_type else ""


def is_unchanged(snapshot: Snapshot, known: KnownRepository) -> bool:
    """The registry holds exactly what the caller knew: nothing to write."""
    return (
        not snapshot.fetched
        and snapshot.tags == known.tags
        and snapshot.present.issuperset(known.manifests)
        and not known.unconfirmed
    )


def crawl_repositories(
    client: RegistryClient,
    names: list[str],
    *,
    known: Callable[[str], KnownRepository],
    known_configs: Callable[[], Collection[str]],
    workers: int = 8,
    budget: Budget | None = None,
) -> Iterator[Snapshot | CrawlFailure]:
    """Read `names` through one work queue of `workers` requests at a time, yielding each
    repository's snapshot as it completes (not in `names` order).

    `known(name)` and `known_configs()` are called in the consumer's thread just before a
    repository is read, so what the consumer wrote for earlier repositories counts. At most
    REPOSITORIES_IN_FLIGHT are read at once; their content beyond `budget` waits on disk."""
    budget = budget or Budget()
    done: queue.Queue[Snapshot | CrawlFailure] = queue.Queue()
    waiting = list(reversed(names))
    in_flight = 0
    pool = WorkQueue(workers)
    try:
        while waiting or in_flight:
            while waiting and in_flight < REPOSITORIES_IN_FLIGHT:
                name = waiting.pop()
                _RepositoryRead(
                    client, pool, name, known(name), frozenset(known_configs()), budget, done.put
                ).start()
                in_flight += 1
            read = done.get()
            in_flight -= 1
            yield read
    finally:
        # A consumer that stops early (an error, a lost database) leaves nothing running.
        pool.close()


class WorkQueue:
    """`workers` threads running queued calls, first the urgent ones: the follow-ups of an
    answer (children, configs) run before more tags start, so what was started finishes
    first. Lighter than an executor's futures: a repository of 20,000 tags queues 20,000
    calls at once."""

    def __init__(self, workers: int) -> None:
        self._calls: deque[tuple[Callable, tuple]] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"crawl-{n}", daemon=True)
            for n in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def put(self, call: Callable, *args: object, urgent: bool = False) -> None:
        with self._ready:
            if urgent:
                self._calls.appendleft((call, args))
            else:
                self._calls.append((call, args))
            self._ready.notify()

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._calls and not self._closed:
                    self._ready.wait()
                if self._closed:
                    return
                call, args = self._calls.popleft()
            call(*args)

    def close(self) -> None:
        """Drop what is still queued and wait for the calls running now."""
        with self._ready:
            self._closed = True
            self._calls.clear()
            self._ready.notify_all()
        for thread in self._threads:
            thread.join()


class _RepositoryRead:
    """The requests of one repository, as a little state machine driven by their answers.

    Each answer is handled in the worker thread that got it, under the read's lock, and
    sends its follow-ups at once. `outstanding` counts requests sent and not yet handled:
    when it falls to zero the tags are all resolved (then the known manifests no tag
    reaches are HEADed), or the read is over."""

    def __init__(
        self,
        client: RegistryClient,
        pool: WorkQueue,
        name: str,
        known: KnownRepository,
        known_configs: Collection[str],
        budget: Budget,
        finish: Callable[[Snapshot | CrawlFailure], None],
    ) -> None:
        self.client = client
        self.pool = pool
        self.name = name
        self.known = known
        self.known_configs = known_configs
        self.finish = finish
        self.snapshot = Snapshot(
            name=name, fetched=manifest_spool(budget), configs=config_spool(budget)
        )
        self.lock = threading.Lock()
        self.outstanding = 0
        self.reached: set[str] = set()  # manifests walked or asked for
        self.configs_asked: set[str] = set()
        self.heads_sent = False
        self.unknown_name = False
        # The fetched indexes' children, and what led to each manifest fetched now (the
        # indexes listing it, the subject whose referrers named it): `withhold_incomplete`.
        self.children: dict[str, list[str]] = {}
        self.parents: dict[str, set[str]] = defaultdict(set)
        self.failure: CrawlFailure | None = None

    def start(self) -> None:
        with self.lock:
            self._send(self._list_tags, urgent=False)

    # -- sending and finishing ---------------------------------------------------------

    def _send(self, request: Callable, *args: object, urgent: bool = True) -> None:
        """Queue `request(*args)`; the caller holds the lock."""
        self.outstanding += 1
        self.pool.put(self._run, request, *args, urgent=urgent)

    def _run(self, request: Callable, *args: object) -> None:
        try:
            if self.failure is None:
                request(*args)
        except RegistryError as error:
            self._fail(CrawlFailure(self.name, error))
        except Exception as error:  # a bug must not stop the other repositories
            logger.exception("reading %s failed", self.name)
            self._fail(CrawlFailure(self.name, RegistryError(f"internal error: {error!r}")))
        with self.lock:
            self.outstanding -= 1
            if self.outstanding:
                return
            if self.failure is None and not self.heads_sent:
                self.heads_sent = True
                self._head_unreached()
                if self.outstanding:
                    return
        self._finish()

    def _fail(self, failure: CrawlFailure) -> None:
        with self.lock:
            self.failure = self.failure or failure

    def _finish(self) -> None:
        if self.failure is not None:
            self.snapshot.close()
            self.finish(self.failure)
            return
        snapshot = self.snapshot
        withhold_incomplete(snapshot, self.children, self.parents, set(snapshot.tags.values()))
        for tag, digest in list(snapshot.tags.items()):
            if digest in snapshot.present:
                continue
            previous = self.known.tags.get(tag)
            if digest in snapshot.withheld and previous in snapshot.present:
                snapshot.tags[tag] = previous  # until its new target can be stored whole
            else:
                del snapshot.tags[tag]
        if self.unknown_name and not snapshot.present:
            snapshot.close()
            error = NotFound(
                f"unknown to the registry, and none of its {len(self.known.manifests)} "
                "manifests is left"
            )
            self.finish(CrawlFailure(self.name, error, missing=True))
            return
        self.finish(snapshot)

    # -- the requests and what each answer sends next ----------------------------------

    def _list_tags(self) -> None:
        """Only this answer can say the repository is missing: its tag list answering 404
        NAME_UNKNOWN (any other 404 is a failure of the read, not a verdict). Even that
        does not say so when the caller holds manifests of it: distribution answers it for a
        repository holding only untagged manifests (pushed by digest), which stay while a
        HEAD by digest finds them (SPEC §5)."""
        try:
            listed = self.client.list_tags(self.name)
        except NotFound as error:
            if not names_unknown_repository(error):
                raise
            if not self.known.manifests:
                self._fail(CrawlFailure(self.name, error, missing=True))
                return
            listed = []
            with self.lock:
                self.unknown_name = True
                self.snapshot.warnings.append(
                    "the registry lists no tags for it (404): kept the manifests a HEAD still finds"
                )
        with self.lock:
            for tag in _valid_tags(listed, self.snapshot):
                if tag in self.known.tags:
                    self._send(self._head_tag, tag, urgent=False)
                else:
                    self._send(self._get_by_tag, tag, urgent=False)

    def _head_tag(self, tag: str) -> None:
        head = self.client.head_manifest(self.name, tag)
        with self.lock:
            if head is None:
                self.snapshot.warnings.append(f"tag {tag} disappeared during the sync")
                return
            self.snapshot.tags[tag] = head.digest
            self._reach(head.digest)

    def _get_by_tag(self, tag: str) -> None:
        try:
            fetched = self.client.get_manifest(self.name, tag)
        except NotFound:
            with self.lock:
                self.snapshot.warnings.append(f"tag {tag} disappeared during the sync")
            return
        except (UnsupportedManifest, ContentTooLarge, ContentTooComplex):
            # Content to skip: a HEAD learns its digest, and the GET by digest says why.
            self._head_tag(tag)
            return
        with self.lock:
            self.snapshot.tags[tag] = fetched.digest
            if fetched.digest in self.reached or fetched.digest in self.known.manifests:
                self._reach(fetched.digest)
                return
            self.reached.add(fetched.digest)
            self._arrived(fetched)

    def _get_by_digest(self, digest: str) -> None:
        result = _get_or_skip(self.client, self.name, digest)
        with self.lock:
            if isinstance(result, str):
                self.snapshot.warnings.append(f"manifest {digest} skipped: {result}")
                return
            self._arrived(result)

    def _reach(self, digest: str) -> None:
        """A digest some tag or index points at: walk it if known, else GET it."""
        if digest in self.reached:
            return
        self.reached.add(digest)
        held = self.known.manifests.get(digest)
        if held is None:
            self._send(self._get_by_digest, digest)
            return
        self.snapshot.present.add(digest)
        for child in held.children:
            self._reach(child)

    def _arrived(self, fetched: FetchedManifest) -> None:
        snapshot = self.snapshot
        snapshot.present.add(fetched.digest)
        snapshot.add_manifest(fetched)
        if fetched.parsed.manifests:
            self.children[fetched.digest] = [child.digest for child in fetched.parsed.manifests]
        for child in fetched.parsed.manifests:
            self.parents[child.digest].add(fetched.digest)
            self._reach(child.digest)
        if self.client.may_have_referrers_api and not fetched.parsed.is_artifact:
            self._send(self._referrers, fetched.digest)
        config = config_digest(fetched)
        if config and config not in self.known_configs and config not in self.configs_asked:
            self.configs_asked.add(config)
            self._send(self._get_config, config)

    def _referrers(self, digest: str) -> None:
        """Referrers pushed by digest alone (no fallback tag) are found only this way."""
        referrers = self.client.list_referrers(self.name, digest)
        with self.lock:
            for referrer in referrers or []:
                self.parents[referrer.digest].add(digest)
                self._reach(referrer.digest)

    def _get_config(self, digest: str) -> None:
        body = _config_body_or_none(self.client, self.snapshot, digest, self.lock)
        if body is not None:
            self.snapshot.configs.add(digest, "", body)

    def _head_unreached(self) -> None:
        """Manifests we know but no tag reaches any more: the registry keeps them as
        untagged images until someone deletes them, so keep them while a HEAD finds them."""
        for digest in sorted(set(self.known.manifests) - self.snapshot.present):
            self._send(self._head_digest, digest)

    def _head_digest(self, digest: str) -> None:
        if self.client.head_manifest(self.name, digest) is not None:
            with self.lock:
                self.snapshot.present.add(digest)


def withhold_incomplete(
    snapshot: Snapshot,
    children: Mapping[str, list[str]],
    parents: Mapping[str, set[str]],
    roots: set[str],
) -> None:
    """An index is stored whole or not at all: stored without a child (one 404, a blip),
    no later read would fetch that child again (they walk stored entries), and deleting
    the index would leave the child behind, untracked. So an index fetched now whose
    child the registry did not give is withheld, with every index above it and every
    manifest fetched now that only it led to (stored alone, a child would list as an
    untagged image, which a retention rule for untagged images deletes). Withheld
    manifests are not stored, so the next read fetches them again.

    `children`: the fetched indexes' children; `parents`: for each manifest, the fetched
    manifests that led to it; `roots`: those reached on their own (by a tag, by a push)."""
    withheld: set[str] = set()
    lacking: dict[str, str] = {}
    grew = any(any(c not in snapshot.present for c in kids) for kids in children.values())
    while grew:
        grew = False
        for index, kids in children.items():
            missing = [c for c in kids if c not in snapshot.present or c in withheld]
            if missing and index not in withheld and index in snapshot.fetched:
                withheld.add(index)
                lacking[index] = missing[0]
                grew = True
        for digest in snapshot.fetched:
            via = parents.get(digest)
            if digest not in withheld and digest not in roots and via and via <= withheld:
                withheld.add(digest)
                grew = True
    if withheld:
        snapshot.withhold(
            withheld,
            [
                f"index {index} not stored: its manifest {child} could not be read; the next "
                "sync reads the index again"
                for index, child in sorted(lacking.items())
            ],
        )


def names_unknown_repository(error: RegistryError) -> bool:
    """The registry's own word that it has no repository of that name: 404 NAME_UNKNOWN.
    A 404 on anything else (a manifest, a blob) concerns that one thing only."""
    return isinstance(error, NotFound) and error.code == NAME_UNKNOWN


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

    `known` is asked once per level, for that level's digests (a push touches a few
    manifests, so levels cost little here; a whole repository goes through
    `crawl_repositories`' work queue instead)."""
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
            snapshot.add_manifest(manifest)
            next_frontier.update(child.digest for child in manifest.parsed.manifests)
        frontier = next_frontier - snapshot.present


def read_configs(
    client: RegistryClient,
    pool: ThreadPoolExecutor,
    snapshot: Snapshot,
    known_configs: Collection[str],
) -> None:
    """The image configs of the fetched manifests, except those in `known_configs`."""
    configs = sorted(d for d in snapshot.config_digests if d not in known_configs)
    bodies = parallel(pool, lambda d: _config_body_or_none(client, snapshot, d), configs)
    for digest, body in zip(configs, bodies, strict=True):
        if body is not None:
            snapshot.configs.add(digest, "", body)


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
            snapshot.add_manifest(fetched)
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
    children = {
        digest: [child.digest for child in manifest.parsed.manifests]
        for digest, manifest in snapshot.fetched.items()
        if manifest.parsed.manifests
    }
    parents: dict[str, set[str]] = defaultdict(set)
    for digest, kids in children.items():
        for child in kids:
            parents[child].add(digest)
    withhold_incomplete(snapshot, children, parents, set(pushed) | set(snapshot.tags.values()))
    for tag, digest in list(snapshot.tags.items()):
        if digest in snapshot.withheld:
            del snapshot.tags[tag]
    read_configs(client, pool, snapshot, known_configs(snapshot.config_digests))
    return snapshot


def parallel(pool: ThreadPoolExecutor, function: Callable, items: Iterable) -> list:
    items = list(items)
    if len(items) <= 1:
        return [function(item) for item in items]
    return list(pool.map(function, items))


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


def _config_body_or_none(
    client: RegistryClient,
    snapshot: Snapshot,
    digest: str,
    lock: threading.Lock | None = None,
) -> bytes | None:
    """A config blob that parses, or None (with a warning): an image without its config
    still lists; only its platform and history are unknown."""
    try:
        body = client.get_blob(snapshot.name, digest, max_bytes=CONFIG_MAX_BYTES)
        media.parse_config(body)
        return body
    except RegistryError as error:
        if lock is None:
            snapshot.warnings.append(f"config {digest}: {error}")
        else:
            with lock:
                snapshot.warnings.append(f"config {digest}: {error}")
        return None
