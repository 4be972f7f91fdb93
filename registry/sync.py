"""Maps what the registry client reads onto hubimages's models.

The network work runs in threads (catalog → tags → manifests → children → configs); the
database work runs in the calling thread, one transaction per repository, so a repository
whose sync fails keeps its previous data and the others go on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from hubimages import activity, rollups
from hubimages.locks import RepositoryBusy, repository_lock
from hubimages.models import Blob, IndexEntry, Manifest, ManifestBlob, Repository, SyncRun, Tag
from registry import media
from registry.client import FetchedManifest, RegistryClient
from registry.errors import (
    AuthenticationError,
    ContentTooLarge,
    NotFound,
    RegistryError,
    UnsupportedManifest,
    UnsupportedOperation,
)

log = logging.getLogger("hubimages.sync")

CONFIG_MAX_BYTES = 4 * 1024 * 1024
EARLIEST_PLAUSIBLE_BUILD = datetime(2013, 1, 1, tzinfo=UTC)
CREATED_ANNOTATION = "org.opencontainers.image.created"
REPOSITORY_COORDINATORS = 4
LOCK_WAIT_SECONDS = 30.0  # a deletion holds the repository meanwhile; then report it busy


@dataclass
class RepositoryResult:
    name: str
    added: int = 0
    tags_changed: int = 0
    removed: int = 0
    error: str = ""
    warnings: list[str] = field(default_factory=list)


@dataclass
class SyncSummary:
    repositories: int = 0
    repositories_removed: int = 0
    manifests_added: int = 0
    tags_changed: int = 0
    manifests_removed: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    duration: float = 0.0

    @property
    def succeeded(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict:
        return {
            "repositories": self.repositories,
            "repositories_removed": self.repositories_removed,
            "manifests_added": self.manifests_added,
            "tags_changed": self.tags_changed,
            "manifests_removed": self.manifests_removed,
            "errors": self.errors,
            "warnings": self.warnings,
            "duration": round(self.duration, 3),
        }


@dataclass
class KnownManifest:
    """What the database already holds of a manifest: enough to walk it without a GET."""

    children: list[str]
    config_digest: str


@dataclass
class Snapshot:
    """One repository as read from the registry, before anything is written."""

    name: str
    tags: dict[str, str] = field(default_factory=dict)
    fetched: dict[str, FetchedManifest] = field(default_factory=dict)
    configs: dict[str, media.ImageConfig] = field(default_factory=dict)
    present: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)


Progress = Callable[[str], None]


def sync_registry(
    client: RegistryClient,
    *,
    repositories: Iterable[str] | None = None,
    catalog: Iterable[str] | None = None,
    workers: int = 8,
    progress: Progress | None = None,
) -> SyncSummary:
    """Bring the database in line with the registry; see SPEC §5.

    `repositories` syncs just those. `catalog` stands in for the registry's catalog, for
    registries that do not offer one to us (Docker Hub, GHCR): the database then holds those
    repositories and no others, as it would with the catalog."""
    started = time.monotonic()
    run = SyncRun.objects.create(started_at=timezone.now())
    summary = SyncSummary()
    report = progress or (lambda message: None)
    try:
        if repositories:
            names = list(dict.fromkeys(repositories))
        else:
            names = list(dict.fromkeys(catalog)) if catalog else _read_catalog(client)
            summary.repositories_removed = _remove_vanished_repositories(names)
        report(f"{len(names)} repositories in the catalog")
        for result in _sync_repositories(client, names, workers, report):
            summary.repositories += 1
            summary.manifests_added += result.added
            summary.tags_changed += result.tags_changed
            summary.manifests_removed += result.removed
            summary.warnings += [f"{result.name}: {w}" for w in result.warnings]
            if result.error:
                summary.errors.append(f"{result.name}: {result.error}")
    except RegistryError as error:
        summary.errors.append(str(error))
    if summary.manifests_removed or summary.repositories_removed:
        remove_unused_blobs()
    summary.duration = time.monotonic() - started
    run.finished_at = timezone.now()
    run.succeeded = summary.succeeded
    run.summary = summary.as_dict()
    run.save()
    return summary


def _read_catalog(client: RegistryClient) -> list[str]:
    try:
        return list(client.iter_repositories())
    except (UnsupportedOperation, AuthenticationError) as error:
        error.message += (
            "; name the repositories to sync in REGISTRY_REPOSITORIES (or with --repository)"
        )
        raise


def remove_unused_blobs() -> None:
    """Blobs no manifest references any more: the registry frees them at its next GC."""
    Blob.objects.filter(manifest_links__isnull=True).delete()


def sync_repository(client: RegistryClient, name: str, *, workers: int = 8) -> RepositoryResult:
    """Sync one repository (used before a delete, to check the plan still holds)."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sync") as requests_pool:
        known = _known_manifests(name)
        try:
            snapshot = _read_repository(client, requests_pool, name, known, _known_configs())
        except NotFound:
            return _write_missing(name)
        except RegistryError as error:
            return RepositoryResult(name=name, error=str(error))
    try:
        return _write(snapshot, known)
    except RepositoryBusy as error:
        return RepositoryResult(name=name, error=str(error))


def _sync_repositories(
    client: RegistryClient, names: list[str], workers: int, report: Progress
) -> Iterable[RepositoryResult]:
    known_configs = _known_configs()
    with (
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sync") as requests_pool,
        ThreadPoolExecutor(
            max_workers=min(REPOSITORY_COORDINATORS, workers), thread_name_prefix="repo"
        ) as coordinators,
    ):
        pending: dict[Future, tuple[str, dict[str, KnownManifest]]] = {}
        queue = list(reversed(names))
        done = 0
        while queue or pending:
            while queue and len(pending) < REPOSITORY_COORDINATORS * 2:
                name = queue.pop()
                known = _known_manifests(name)
                future = coordinators.submit(
                    _read_repository, client, requests_pool, name, known, frozenset(known_configs)
                )
                pending[future] = (name, known)
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                name, known = pending.pop(future)
                try:
                    result = _write(future.result(), known)
                except NotFound:
                    result = _write_missing(name)
                except (RegistryError, RepositoryBusy) as error:
                    result = RepositoryResult(name=name, error=str(error))
                except Exception as error:  # a bug must not stop the other repositories
                    log.exception("sync of %s failed", name)
                    result = RepositoryResult(name=name, error=f"internal error: {error!r}")
                known_configs.update(
                    Manifest.objects.filter(repository__name=name)
                    .exclude(config_digest="")
                    .values_list("config_digest", flat=True)
                )
                done += 1
                report(_progress_line(done, len(names), result))
                yield result


def _progress_line(done: int, total: int, result: RepositoryResult) -> str:
    if result.error:
        return f"[{done}/{total}] {result.name}: failed: {result.error}"
    return (
        f"[{done}/{total}] {result.name}: {result.added} manifests added, "
        f"{result.removed} removed, {result.tags_changed} tags changed"
    )


def _remove_vanished_repositories(catalog: list[str]) -> int:
    vanished = sorted(set(Repository.objects.values_list("name", flat=True)) - set(catalog))
    for start in range(0, len(vanished), 500):
        Repository.objects.filter(name__in=vanished[start : start + 500]).delete()
    return len(vanished)


def _known_manifests(name: str) -> dict[str, KnownManifest]:
    known: dict[str, KnownManifest] = {}
    for digest, config_digest in Manifest.objects.filter(repository__name=name).values_list(
        "digest", "config_digest"
    ):
        known[digest] = KnownManifest(children=[], config_digest=config_digest)
    for index_digest, child_digest in IndexEntry.objects.filter(
        index__repository__name=name
    ).values_list("index__digest", "child__digest"):
        known[index_digest].children.append(child_digest)
    return known


def _known_configs() -> set[str]:
    return set(
        Manifest.objects.exclude(config_digest="")
        .values_list("config_digest", flat=True)
        .distinct()
    )


# -- reading (runs in threads: no database access here) ----------------------------------


def _read_repository(
    client: RegistryClient,
    pool: ThreadPoolExecutor,
    name: str,
    known: dict[str, KnownManifest],
    known_configs: frozenset[str] | set[str],
) -> Snapshot:
    snapshot = Snapshot(name=name)
    tag_names = client.list_tags(name)
    heads = _parallel(pool, lambda tag: client.head_manifest(name, tag), tag_names)
    for tag, head in zip(tag_names, heads, strict=True):
        if head is None:
            snapshot.warnings.append(f"tag {tag} disappeared during the sync")
        else:
            snapshot.tags[tag] = head.digest

    _read_graph(client, pool, snapshot, set(snapshot.tags.values()), known)
    _drop_dangling_tags(snapshot)
    # Manifests we know but no tag reaches any more: the registry keeps them as untagged
    # images until someone deletes them, so keep them while a HEAD by digest finds them.
    unreached = sorted(set(known) - snapshot.present)
    heads = _parallel(pool, lambda digest: client.head_manifest(name, digest), unreached)
    snapshot.present.update(d for d, head in zip(unreached, heads, strict=True) if head)

    _read_configs(client, pool, snapshot, known_configs)
    return snapshot


def _read_graph(
    client: RegistryClient,
    pool: ThreadPoolExecutor,
    snapshot: Snapshot,
    frontier: set[str],
    known: dict[str, KnownManifest],
) -> None:
    """Walk from `frontier` down through index children, fetching what is not `known`."""
    name = snapshot.name
    while frontier:
        snapshot.present |= frontier
        unknown = sorted(d for d in frontier if d not in known and d not in snapshot.fetched)
        fetched = _parallel(pool, lambda digest: _get_or_skip(client, name, digest), unknown)
        next_frontier: set[str] = set()
        for digest in frontier:
            if digest in known:
                next_frontier.update(known[digest].children)
        for digest, manifest in zip(unknown, fetched, strict=True):
            if isinstance(manifest, str):
                snapshot.present.discard(digest)
                snapshot.warnings.append(f"manifest {digest} skipped: {manifest}")
                continue
            snapshot.fetched[digest] = manifest
            next_frontier.update(child.digest for child in manifest.parsed.manifests)
        frontier = next_frontier - snapshot.present


def _read_configs(
    client: RegistryClient, pool: ThreadPoolExecutor, snapshot: Snapshot, known_configs: set[str]
) -> None:
    configs = sorted(
        {
            m.parsed.config.digest
            for m in snapshot.fetched.values()
            if m.parsed.config and not m.parsed.artifact_type
        }
        - known_configs
    )
    bodies = _parallel(
        pool, lambda digest: _config_or_none(client, snapshot.name, digest, snapshot), configs
    )
    snapshot.configs = {d: c for d, c in zip(configs, bodies, strict=True) if c is not None}


def _drop_dangling_tags(snapshot: Snapshot) -> None:
    for tag, digest in list(snapshot.tags.items()):
        if digest not in snapshot.present:
            del snapshot.tags[tag]


def _get_or_skip(client: RegistryClient, name: str, digest: str) -> FetchedManifest | str:
    """The manifest, or why it is skipped while the rest of the repository syncs.

    Legacy (schema 1) and oversized manifests are content we cannot list, not a broken
    registry; a malformed body or a digest mismatch is, and fails the repository."""
    try:
        return client.get_manifest(name, digest)
    except NotFound:
        return "it disappeared during the sync"
    except (UnsupportedManifest, ContentTooLarge) as error:
        return error.message


def _config_or_none(
    client: RegistryClient, name: str, digest: str, snapshot: Snapshot
) -> media.ImageConfig | None:
    try:
        return media.parse_config(client.get_blob(name, digest, max_bytes=CONFIG_MAX_BYTES))
    except RegistryError as error:
        # An image without its config still lists; only its platform and history are unknown.
        snapshot.warnings.append(f"config {digest}: {error}")
        return None


def _parallel(pool: ThreadPoolExecutor, function: Callable, items: list) -> list:
    if len(items) <= 1:
        return [function(item) for item in items]
    return list(pool.map(function, items))


# -- writing (the calling thread, one transaction per repository) ------------------------


def _write_missing(name: str) -> RepositoryResult:
    removed = Manifest.objects.filter(repository__name=name).count()
    Repository.objects.filter(name=name).delete()
    return RepositoryResult(name=name, removed=removed, warnings=["not in the registry"])


def _write(snapshot: Snapshot, known: dict[str, KnownManifest]) -> RepositoryResult:
    result = RepositoryResult(name=snapshot.name, warnings=snapshot.warnings)
    now = timezone.now()
    repository, _ = Repository.objects.get_or_create(name=snapshot.name)
    with (
        repository_lock(repository, owner="sync", wait=LOCK_WAIT_SECONDS),
        transaction.atomic(),
    ):
        gone = set(known) - snapshot.present
        if gone:
            Manifest.objects.filter(repository=repository, digest__in=gone).delete()
        result.removed = len(gone)
        result.added = len(snapshot.fetched)
        if snapshot.fetched:
            _insert_manifests(repository, snapshot, now)
            activity.apply_recorded_pushes(repository, list(snapshot.fetched))
            activity.apply_earlier_pulls(repository, list(snapshot.fetched))
        result.tags_changed = _write_tags(repository, snapshot.tags)
        changed = bool(result.added or result.removed or result.tags_changed)
        if changed:
            _classify(repository, snapshot)
            rollups.refresh(repository)
        Repository.objects.filter(pk=repository.pk).update(
            synced_at=now, revision=F("revision") + int(changed)
        )
    return result


def _insert_manifests(repository: Repository, snapshot: Snapshot, now: datetime) -> None:
    configs = _configs_for(snapshot)
    rows = [
        _manifest_row(repository, fetched, configs.get(_config_digest(fetched)), now)
        for fetched in snapshot.fetched.values()
    ]
    Manifest.objects.bulk_create(rows)
    ids = dict(
        Manifest.objects.filter(repository=repository).values_list("digest", "pk").iterator()
    )
    _insert_blob_links(snapshot.fetched.values(), ids)
    _insert_index_entries(snapshot.fetched.values(), ids)


def _configs_for(snapshot: Snapshot) -> dict[str, media.ImageConfig | dict]:
    """Configs read now, plus those another manifest already brought into the database."""
    wanted = {_config_digest(m) for m in snapshot.fetched.values()} - set(snapshot.configs)
    wanted.discard("")
    configs: dict[str, media.ImageConfig | dict] = dict(snapshot.configs)
    for row in (
        Manifest.objects.filter(config_digest__in=wanted)
        .values("config_digest", "os", "architecture", "variant", "labels", "history")
        .order_by()
    ):
        configs.setdefault(row["config_digest"], row)
    return configs


def _config_digest(fetched: FetchedManifest) -> str:
    config = fetched.parsed.config
    return config.digest if config and not fetched.parsed.artifact_type else ""


def _manifest_row(
    repository: Repository,
    fetched: FetchedManifest,
    config: media.ImageConfig | dict | None,
    now: datetime,
) -> Manifest:
    parsed = fetched.parsed
    platform = _platform_of(config)
    created = plausible_build_time(
        media.parse_time(parsed.annotations.get(CREATED_ANNOTATION)), now
    ) or plausible_build_time(_created_of(config), now)
    return Manifest(
        repository=repository,
        digest=fetched.digest,
        media_type=fetched.media_type,
        kind=_initial_kind(parsed),
        artifact_type=parsed.artifact_type[:255],
        size=len(fetched.body),
        total_size=_own_content_size(parsed),
        os=platform[0],
        architecture=platform[1],
        variant=platform[2],
        annotations=parsed.annotations,
        config_digest=_config_digest(fetched),
        labels=_labels_of(config),
        history=_history_of(config),
        created_at=created,
        subject_digest=parsed.subject.digest if parsed.subject else "",
        first_seen_at=now,
        pushed_at=created or now,
        pushed_at_estimated=True,
    )


def _initial_kind(parsed: media.ParsedManifest) -> str:
    if parsed.subject or parsed.artifact_type:
        return Manifest.Kind.ARTIFACT
    return Manifest.Kind.INDEX if parsed.is_index else Manifest.Kind.IMAGE


def _own_content_size(parsed: media.ParsedManifest) -> int:
    if parsed.is_index:
        return 0
    config = parsed.config.size if parsed.config else 0
    return config + sum(layer.size for layer in parsed.layers)


def plausible_build_time(value: datetime | None, now: datetime) -> datetime | None:
    """Reproducible builds write 1970 or the future: such times say nothing."""
    if value is None or value < EARLIEST_PLAUSIBLE_BUILD or value > now:
        return None
    return value


def _platform_of(config: media.ImageConfig | dict | None) -> tuple[str, str, str]:
    if config is None:
        return "", "", ""
    if isinstance(config, dict):
        return config["os"], config["architecture"], config["variant"]
    return config.os[:64], config.architecture[:64], config.variant[:64]


def _created_of(config: media.ImageConfig | dict | None) -> datetime | None:
    if isinstance(config, media.ImageConfig):
        return config.created
    return None


def _labels_of(config: media.ImageConfig | dict | None) -> dict:
    if config is None:
        return {}
    return config["labels"] if isinstance(config, dict) else dict(config.labels)


def _history_of(config: media.ImageConfig | dict | None) -> list:
    if config is None:
        return []
    if isinstance(config, dict):
        return config["history"]
    return [
        {
            "created_by": entry.created_by,
            "created": entry.created.isoformat() if entry.created else None,
            "empty_layer": entry.empty_layer,
            "comment": entry.comment,
        }
        for entry in config.history
    ]


def _insert_blob_links(fetched: Iterable[FetchedManifest], ids: dict[str, int]) -> None:
    blobs: dict[str, tuple[int, str]] = {}
    links: list[tuple[str, str, str, int]] = []
    for manifest in fetched:
        blobs[manifest.digest] = (len(manifest.body), manifest.media_type)
        links.append((manifest.digest, manifest.digest, ManifestBlob.Role.MANIFEST, 0))
        parsed = manifest.parsed
        if parsed.config:
            blobs[parsed.config.digest] = (parsed.config.size, parsed.config.media_type)
            links.append((manifest.digest, parsed.config.digest, ManifestBlob.Role.CONFIG, 0))
        for position, layer in enumerate(parsed.layers):
            blobs[layer.digest] = (layer.size, layer.media_type)
            links.append((manifest.digest, layer.digest, ManifestBlob.Role.LAYER, position))
    Blob.objects.bulk_create(
        [Blob(digest=d, size=s, media_type=t[:255]) for d, (s, t) in blobs.items()],
        ignore_conflicts=True,
        batch_size=500,
    )
    blob_ids = _blob_ids(list(blobs))
    ManifestBlob.objects.bulk_create(
        [
            ManifestBlob(manifest_id=ids[m], blob_id=blob_ids[b], role=role, position=position)
            for m, b, role, position in links
        ],
        batch_size=500,
    )


def _blob_ids(digests: list[str]) -> dict[str, int]:
    ids: dict[str, int] = {}
    for start in range(0, len(digests), 500):
        chunk = digests[start : start + 500]
        ids.update(Blob.objects.filter(digest__in=chunk).values_list("digest", "pk"))
    return ids


def _insert_index_entries(fetched: Iterable[FetchedManifest], ids: dict[str, int]) -> None:
    entries = []
    for manifest in fetched:
        for position, child in enumerate(manifest.parsed.manifests):
            if child.digest not in ids:
                continue  # a child the registry does not have: the index lists what exists
            platform = child.platform
            entries.append(
                IndexEntry(
                    index_id=ids[manifest.digest],
                    child_id=ids[child.digest],
                    position=position,
                    os=platform.os[:64] if platform else "",
                    architecture=platform.architecture[:64] if platform else "",
                    variant=platform.variant[:64] if platform else "",
                    annotations=child.annotations,
                )
            )
    IndexEntry.objects.bulk_create(entries, batch_size=500)


def _write_tags(repository: Repository, tags: dict[str, str]) -> int:
    """Make the repository's tags exactly `tags`; returns how many changed."""
    ids = dict(Manifest.objects.filter(repository=repository).values_list("digest", "pk"))
    current = dict(Tag.objects.filter(repository=repository).values_list("name", "manifest_id"))
    wanted = {name: ids[digest] for name, digest in tags.items() if digest in ids}
    removed = [name for name in current if name not in wanted]
    changed = {name: pk for name, pk in wanted.items() if current.get(name) != pk}
    Tag.objects.filter(repository=repository, name__in=removed + list(changed)).delete()
    Tag.objects.bulk_create(
        [Tag(repository=repository, name=name, manifest_id=pk) for name, pk in changed.items()],
        batch_size=500,
    )
    return len(removed) + len(changed)


def _classify(repository: Repository, snapshot: Snapshot) -> None:
    """Kinds that depend on context: attestations (by their index entry) and referrers
    reached through the tag schema of registries without a referrers API."""
    attestations = [
        child.digest
        for fetched in snapshot.fetched.values()
        for child in fetched.parsed.manifests
        if media.is_attestation(child)
    ]
    if attestations:
        Manifest.objects.filter(repository=repository, digest__in=attestations).update(
            kind=Manifest.Kind.ATTESTATION
        )
    for tag, digest in snapshot.tags.items():
        subject = media.referrer_tag_subject(tag)
        if subject and digest in snapshot.fetched:
            Manifest.objects.filter(repository=repository, digest=digest, subject_digest="").update(
                subject_digest=subject, kind=Manifest.Kind.ARTIFACT
            )


# -- one pushed manifest (registry events) -----------------------------------------------


class _KnownOnDemand(dict[str, KnownManifest]):
    """`_known_manifests` for the few digests one push touches, looked up as the walk asks
    (in the calling thread): a repository may hold thousands of manifests."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self._name = name
        self._asked: set[str] = set()

    def __contains__(self, digest: object) -> bool:
        if isinstance(digest, str) and digest not in self._asked:
            self._asked.add(digest)
            rows = Manifest.objects.filter(repository__name=self._name, digest=digest)
            for config_digest in rows.values_list("config_digest", flat=True):
                children = IndexEntry.objects.filter(
                    index__repository__name=self._name, index__digest=digest
                ).values_list("child__digest", flat=True)
                self[digest] = KnownManifest(children=list(children), config_digest=config_digest)
        return super().__contains__(digest)


def read_pushed_manifest(
    client: RegistryClient, name: str, digest: str, *, tag: str = "", workers: int = 4
) -> Snapshot | None:
    """One manifest with the children and configs the database lacks, read as sync reads
    them; None when the registry no longer has it (deleted since the push).

    `tag` lands in the snapshot only while the registry still points it at `digest`:
    events arrive in any order, and a later push may have moved it.
    """
    snapshot = Snapshot(name=name)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="push") as pool:
        _read_graph(client, pool, snapshot, {digest}, _KnownOnDemand(name))
        if digest not in snapshot.present:
            return None
        if tag:
            head = client.head_manifest(name, tag)
            if head is not None and head.digest == digest:
                snapshot.tags[tag] = digest
        wanted = {_config_digest(m) for m in snapshot.fetched.values()} - {""}
        known_configs = set(
            Manifest.objects.filter(config_digest__in=wanted).values_list(
                "config_digest", flat=True
            )
        )
        _read_configs(client, pool, snapshot, known_configs)
    return snapshot


def write_pushed_manifest(snapshot: Snapshot) -> Repository:
    """Store what `read_pushed_manifest` read and point its tag, in one transaction under
    the repository lock, leaving the repository's other manifests and tags alone
    (repairing them is sync's job). Raises `RepositoryBusy` like `_write`."""
    now = timezone.now()
    repository, _ = Repository.objects.get_or_create(name=snapshot.name)
    with (
        repository_lock(repository, owner="events", wait=LOCK_WAIT_SECONDS),
        transaction.atomic(),
    ):
        # A sync or another event may have stored some of them since the read.
        for digest in Manifest.objects.filter(
            repository=repository, digest__in=list(snapshot.fetched)
        ).values_list("digest", flat=True):
            del snapshot.fetched[digest]
        if snapshot.fetched:
            _insert_manifests(repository, snapshot, now)
            activity.apply_recorded_pushes(repository, list(snapshot.fetched))
            activity.apply_earlier_pulls(repository, list(snapshot.fetched))
        changed = bool(snapshot.fetched)
        for tag, digest in snapshot.tags.items():
            manifest = Manifest.objects.get(repository=repository, digest=digest)
            current = Tag.objects.filter(repository=repository, name=tag).first()
            if current is None:
                Tag.objects.create(repository=repository, name=tag, manifest=manifest)
                changed = True
            elif current.manifest_id != manifest.pk:
                current.manifest = manifest
                current.save()
                changed = True
        if changed:
            _classify(repository, snapshot)
            rollups.refresh(repository)
            Repository.objects.filter(pk=repository.pk).update(revision=F("revision") + 1)
    return repository
