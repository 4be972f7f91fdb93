"""The database half of a sync (SPEC §5): write what `registry.crawl` read.

The crawl runs in threads and touches no database; the writes run in the calling thread,
one transaction per repository, so a repository whose sync fails keeps its previous data
and the others go on.

Removing is where a lying registry costs data (untagged manifests the API cannot list
again, every Last pulled), so a full sync removes a repository only on evidence: it is
missing from the catalog *and* a HEAD finds none of its known manifests (a repository
the catalog leaves out is read like the others). Even then, removing more than a safe
share of the repositories in one sync (`too_many_to_remove`) waits for `prune=True`.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from hubimages import activity, rollups
from hubimages.formatting import plural
from hubimages.locks import LeaseBusy, lease, repository_lock
from hubimages.models import Blob, IndexEntry, Manifest, ManifestBlob, Repository, SyncRun, Tag
from registry import crawl, media
from registry.client import FetchedManifest, RegistryClient
from registry.crawl import NOTHING_KNOWN, KnownManifest, KnownRepository, Snapshot
from registry.errors import AuthenticationError, NotFound, RegistryError, UnsupportedOperation

log = logging.getLogger("hubimages.sync")

EARLIEST_PLAUSIBLE_BUILD = datetime(2013, 1, 1, tzinfo=UTC)
CREATED_ANNOTATION = "org.opencontainers.image.created"
LOCK_WAIT_SECONDS = 30.0  # a deletion holds the repository meanwhile; then report it busy
# Up to this many repositories, only removing all of them needs --prune; past it, more
# than half of them does.
FEW_REPOSITORIES = 4
# Manifests written per statement batch: a repository of 20,000 images is written in
# chunks, read back from the crawl's spool, never held in memory all at once.
CHUNK = 1000


@dataclass
class RepositoryResult:
    name: str
    added: int = 0
    tags_changed: int = 0
    removed: int = 0
    error: str = ""
    warnings: list[str] = field(default_factory=list)
    # The registry holds none of its manifests: whether to remove it is decided at the end.
    gone: bool = False


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
    # The catalog could not be read (then `errors` holds that one error).
    catalog_failed: bool = False
    # Repositories that seem gone but were kept: too many to remove without `prune`.
    held_back: list[str] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return not self.errors and not self.held_back

    @property
    def repositories_failed(self) -> int:
        return len(self.errors) - int(self.catalog_failed)

    def as_dict(self) -> dict:
        return {
            "repositories": self.repositories,
            "repositories_removed": self.repositories_removed,
            "manifests_added": self.manifests_added,
            "tags_changed": self.tags_changed,
            "manifests_removed": self.manifests_removed,
            "errors": self.errors,
            "warnings": self.warnings,
            "catalog_failed": self.catalog_failed,
            "held_back": self.held_back,
            "duration": round(self.duration, 3),
        }


Progress = Callable[[str], None]


FULL_SYNC_LEASE = "sync:all"


def sync_registry(
    client: RegistryClient,
    *,
    repositories: Iterable[str] | None = None,
    catalog: Iterable[str] | None = None,
    workers: int = 8,
    progress: Progress | None = None,
    prune: bool = False,
) -> SyncSummary:
    """Bring the database in line with the registry; see SPEC §5.

    `repositories` syncs just those. `catalog` stands in for the registry's catalog, for
    registries that do not offer one to us (Docker Hub, GHCR): the database then holds those
    repositories and no others, as it would with the catalog. `prune` lets a full sync
    remove more repositories than `too_many_to_remove` allows. A full sync holds the
    `sync:all` lease, so two never overlap on any number of hosts (raises `LeaseBusy`)."""
    if repositories:
        return _sync(client, list(dict.fromkeys(repositories)), None, workers, progress, prune)
    owner = f"a full sync ({socket.gethostname()}:{os.getpid()})"
    with lease(FULL_SYNC_LEASE, owner=owner, what="the registry"):
        summary = _sync(client, None, catalog, workers, progress, prune)
        if summary.succeeded:
            # Imported here: storage plans with `deletion`, which imports this module.
            from hubimages import storage

            storage.after_full_sync(client)
        return summary


def _sync(
    client: RegistryClient,
    names: list[str] | None,
    catalog: Iterable[str] | None,
    workers: int,
    progress: Progress | None,
    prune: bool,
) -> SyncSummary:
    started = time.monotonic()
    run = SyncRun.objects.create(started_at=timezone.now())
    summary = SyncSummary()
    report = progress or (lambda message: None)
    try:
        if names is not None:
            _sync_all(
                client, _valid_names(names, "named", summary), workers, report, summary, gone=None
            )
        else:
            _sync_everything(client, catalog, workers, report, summary, prune)
        if summary.manifests_removed or summary.repositories_removed:
            remove_unused_blobs()
    except RegistryError as error:
        summary.errors.append(str(error))
    except BaseException as error:
        summary.errors.append(f"interrupted: {error!r}")
        raise
    finally:
        # Whatever happened (a bug, a lost database), the run is closed with what it did.
        summary.duration = time.monotonic() - started
        run.finished_at = timezone.now()
        run.succeeded = summary.succeeded
        run.summary = summary.as_dict()
        run.save()
    return summary


def _sync_everything(
    client: RegistryClient,
    catalog: Iterable[str] | None,
    workers: int,
    report: Progress,
    summary: SyncSummary,
    prune: bool,
) -> None:
    """Every repository of the catalog, plus those the database holds and the catalog does
    not list: the catalog's word alone removes nothing."""
    if catalog:
        listed = _valid_names(list(dict.fromkeys(catalog)), "configured", summary)
    else:
        try:
            listed = _valid_names(_read_catalog(client), "listed in the catalog", summary)
        except RegistryError:
            summary.catalog_failed = True
            raise
    holding = _repositories_holding_manifests()
    unlisted = sorted(set(Repository.objects.values_list("name", flat=True)) - set(listed))
    gone: dict[str, tuple[Snapshot | crawl.CrawlFailure, Known]] = {}
    if catalog:
        # The configured list is the operator's word, not the registry's: no need to look.
        for name in unlisted:
            gone[name] = (crawl.CrawlFailure(name, NotFound("not configured")), NOTHING_KNOWN)
        report(f"{plural(len(listed), 'repository')} configured")
        _sync_all(client, listed, workers, report, summary, gone=gone)
    else:
        more = f"; {len(unlisted)} more in the database, looked up too" if unlisted else ""
        report(f"{plural(len(listed), 'repository')} in the catalog{more}")
        _sync_all(client, listed + unlisted, workers, report, summary, gone=gone)
        found = [name for name in unlisted if name not in gone]
        for name in unlisted:
            if name in gone:  # not even in the catalog: the whole repository goes
                gone[name] = (
                    crawl.CrawlFailure(name, NotFound("not in the catalog")),
                    NOTHING_KNOWN,
                )
        if found:
            summary.warnings.append(
                f"the catalog does not list {plural(len(found), 'repository')} the registry "
                f"still has, kept: {crawl.named(found)}"
            )
    _remove_gone(gone, holding, prune, summary)


def _sync_all(
    client: RegistryClient,
    names: list[str],
    workers: int,
    report: Progress,
    summary: SyncSummary,
    *,
    gone: dict | None,
) -> None:
    for result in _sync_repositories(client, names, workers, report, gone):
        summary.repositories += 1
        summary.manifests_added += result.added
        summary.tags_changed += result.tags_changed
        summary.manifests_removed += result.removed
        summary.warnings += [f"{result.name}: {w}" for w in result.warnings]
        if result.error:
            summary.errors.append(f"{result.name}: {result.error}")


def too_many_to_remove(count: int, holding: int) -> bool:
    """Whether removing `count` of the `holding` repositories that hold manifests needs
    `prune`: all of them, or more than half when there are more than a few. An empty
    catalog, a proxy answering 404 for everything or REGISTRY_URL pointed at another
    registry all look like that; a real clean-up can say so."""
    if count == 0:
        return False
    return count >= holding or (holding > FEW_REPOSITORIES and count * 2 > holding)


def _remove_gone(
    gone: dict[str, tuple[Snapshot | crawl.CrawlFailure, Known]],
    holding: set[str],
    prune: bool,
    summary: SyncSummary,
) -> None:
    """Remove what a full sync found gone, unless it is too much to take on its word.

    Repositories that hold no manifest cost nothing and always go."""
    costly = sorted(name for name in gone if name in holding)
    if not prune and too_many_to_remove(len(costly), len(holding)):
        summary.held_back = costly
        summary.warnings.append(
            f"{plural(len(costly), 'repository')} of {len(holding)} seem gone from the "
            f"registry ({crawl.named(costly)}) and were kept: removing "
            f"{'all' if len(costly) >= len(holding) else 'more than half'} of them in one "
            "sync needs --prune (check the registry first)"
        )
        gone = {name: read for name, read in gone.items() if name not in holding}
    for name, (read, known) in sorted(gone.items()):
        if isinstance(read, Snapshot):
            result = _write_or_fail(read, known)
            read.close()
            summary.manifests_removed += result.removed
            if result.error:
                summary.errors.append(f"{name}: {result.error}")
        else:
            summary.manifests_removed += _write_missing(name).removed
            summary.repositories_removed += 1


def _valid_names(names: list[str], source: str, summary: SyncSummary) -> list[str]:
    """The names the registry API can address; others are reported, never requested."""
    invalid = [name for name in names if not media.is_repository_name(name)]
    if invalid:
        summary.warnings.append(
            f"invalid repository names {source}, skipped: {crawl.named(invalid)}"
        )
    return [name for name in names if media.is_repository_name(name)]


def _repositories_holding_manifests() -> set[str]:
    return set(
        Repository.objects.filter(manifests__isnull=False).values_list("name", flat=True).distinct()
    )


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


# What the database held of a repository when its crawl started: the crawl fetches only
# what is new and HEADs only the tags it knows, and the write moves only tags nobody else
# moved meanwhile.
Known = KnownRepository


def known_state(name: str) -> Known:
    tags = dict(Tag.objects.filter(repository__name=name).values_list("name", "manifest__digest"))
    return Known(known_manifests(name), tags)


def sync_repository(client: RegistryClient, name: str, *, workers: int = 8) -> RepositoryResult:
    """Sync one repository (used before a delete, to check the plan still holds)."""
    [result] = _sync_repositories(client, [name], workers, lambda message: None)
    return result


def _sync_repositories(
    client: RegistryClient,
    names: list[str],
    workers: int,
    report: Progress,
    gone: dict | None = None,
) -> Iterable[RepositoryResult]:
    """Read and write each repository. With `gone`, a repository the registry holds none
    of (`_is_gone`) is put there, with what was read, for the caller to decide."""
    known_by_name: dict[str, Known] = {}
    configs = stored_configs()
    unchanged: list[str] = []

    def known(name: str) -> Known:
        known_by_name[name] = known_state(name)
        return known_by_name[name]

    snapshots = crawl.crawl_repositories(
        client, names, known=known, known_configs=lambda: configs, workers=workers
    )
    for done, read in enumerate(snapshots, start=1):
        known_before = known_by_name.pop(read.name)
        if gone is not None and _is_gone(read, known_before):
            gone[read.name] = (read, known_before)
            result = RepositoryResult(name=read.name, gone=True)
        elif (
            isinstance(read, Snapshot)
            and (known_before.manifests or known_before.tags)  # else maybe a new, empty one
            and crawl.is_unchanged(read, known_before)
        ):
            # Every tag HEADed to where it was: nothing to write, not even a lock.
            result = RepositoryResult(name=read.name, warnings=read.warnings)
            unchanged.append(read.name)
            read.close()
        else:
            result = _write_read(read, known_before)
            if isinstance(read, Snapshot):
                if not result.error:
                    configs.update(read.config_digests)
                read.close()
        report(_progress_line(done, len(names), result))
        yield result
    _mark_synced(unchanged)


def _mark_synced(names: list[str]) -> None:
    """One statement per thousand unchanged repositories, rather than a write each."""
    now = timezone.now()
    for start in range(0, len(names), CHUNK):
        Repository.objects.filter(name__in=names[start : start + CHUNK]).update(synced_at=now)


def _is_gone(read: Snapshot | crawl.CrawlFailure, known: Known) -> bool:
    """The registry has no such repository, or no tag and none of its known manifests."""
    if isinstance(read, crawl.CrawlFailure):
        return read.missing
    stored = set(known.manifests)
    return bool(stored) and not read.tags and not read.fetched and not (read.present & stored)


def _write_read(read: Snapshot | crawl.CrawlFailure, known: Known) -> RepositoryResult:
    if isinstance(read, crawl.CrawlFailure):
        if read.missing:
            return _write_missing(read.name)
        return RepositoryResult(name=read.name, error=str(read.error))
    return _write_or_fail(read, known)


def _write_or_fail(snapshot: Snapshot, known: Known) -> RepositoryResult:
    try:
        return _write(snapshot, known)
    except LeaseBusy as error:
        return RepositoryResult(name=snapshot.name, error=str(error))
    except Exception as error:  # a bug must not stop the other repositories
        log.exception("sync of %s failed", snapshot.name)
        return RepositoryResult(name=snapshot.name, error=f"internal error: {error!r}")


def _progress_line(done: int, total: int, result: RepositoryResult) -> str:
    if result.error:
        return f"[{done}/{total}] {result.name}: failed: {result.error}"
    if result.gone:
        return f"[{done}/{total}] {result.name}: none of it is left in the registry"
    return (
        f"[{done}/{total}] {result.name}: {plural(result.added, 'manifest')} added, "
        f"{result.removed} removed, {plural(result.tags_changed, 'tag')} changed"
    )


def known_manifests(name: str, digests: Collection[str] | None = None) -> dict[str, KnownManifest]:
    """The repository's stored manifests (or just `digests` of them) with their children."""
    manifests = Manifest.objects.filter(repository__name=name)
    entries = IndexEntry.objects.filter(index__repository__name=name)
    if digests is not None:
        manifests = manifests.filter(digest__in=list(digests))
        entries = entries.filter(index__digest__in=list(digests))
    known = {
        digest: KnownManifest(children=[], config_digest=config_digest)
        for digest, config_digest in manifests.values_list("digest", "config_digest")
    }
    for index_digest, child_digest in entries.order_by("index", "position").values_list(
        "index__digest", "child__digest"
    ):
        known[index_digest].children.append(child_digest)
    return known


def stored_configs(digests: Collection[str] | None = None) -> set[str]:
    """Config digests some stored manifest already brought in (or those of `digests`)."""
    configs = Manifest.objects.exclude(config_digest="")
    if digests is not None:
        configs = configs.filter(config_digest__in=list(digests))
    return set(configs.values_list("config_digest", flat=True).distinct())


# -- writing (the calling thread, one transaction per repository) ------------------------


def _write_missing(name: str) -> RepositoryResult:
    removed = Manifest.objects.filter(repository__name=name).count()
    Repository.objects.filter(name=name).delete()
    return RepositoryResult(name=name, removed=removed, warnings=["not in the registry"])


def _write(snapshot: Snapshot, known: Known) -> RepositoryResult:
    """Write a crawl's snapshot under the repository's lease, trusting the database as it
    is now rather than as it was when the crawl started: a push event may have stored some
    manifests or moved some tags meanwhile, and its word is newer than the crawl's.

    One transaction, written in chunks of CHUNK manifests read back from the snapshot's
    spool: memory stays flat however large the repository, and a failure leaves the
    repository's previous data."""
    result = RepositoryResult(name=snapshot.name, warnings=snapshot.warnings)
    now = timezone.now()
    repository, _ = Repository.objects.get_or_create(name=snapshot.name)
    with (
        repository_lock(repository, owner="sync", wait=LOCK_WAIT_SECONDS),
        transaction.atomic(),
    ):
        stored = set(
            Manifest.objects.filter(repository=repository).values_list("digest", flat=True)
        )
        tags = _tags_to_write(repository, snapshot.tags, known.tags)
        gone = (set(known.manifests) - snapshot.present) & stored
        for chunk in _chunks(sorted(gone)):
            Manifest.objects.filter(repository=repository, digest__in=chunk).delete()
        new = [digest for digest in snapshot.fetched if digest not in stored]
        del stored
        result.removed = len(gone)
        result.added = len(new)
        if new:
            _insert_manifests(repository, snapshot.fetched, new, snapshot.configs, now)
        result.tags_changed = _write_tags(repository, tags)
        changed = bool(result.added or result.removed or result.tags_changed)
        if changed:
            _classify(repository, snapshot.fetched, new, snapshot.tags)
            rollups.refresh(repository)
        Repository.objects.filter(pk=repository.pk).update(
            synced_at=now, revision=F("revision") + int(changed)
        )
    return result


def _chunks(items: list) -> Iterable[list]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def _insert_manifests(
    repository: Repository,
    fetched: Mapping[str, FetchedManifest],
    digests: list[str],
    configs_read: Mapping[str, media.ImageConfig],
    now: datetime,
) -> None:
    """Insert `digests` of `fetched` with their blobs, then their index entries (a child
    may come in a later chunk than its index), a chunk at a time; apply what registry
    events recorded about them before they were stored."""
    for chunk in _chunks(digests):
        manifests = [fetched[digest] for digest in chunk]
        configs = _configs_for(manifests, configs_read)
        rows = [
            _manifest_row(repository, m, configs.get(crawl.config_digest(m)), now)
            for m in manifests
        ]
        Manifest.objects.bulk_create(rows)
        _insert_blob_links(manifests, _manifest_ids(repository, chunk))
        activity.apply_recorded_pushes(repository, chunk)
        activity.apply_earlier_pulls(repository, chunk)
    for chunk in _chunks(digests):
        indexes = [m for m in (fetched[digest] for digest in chunk) if m.parsed.manifests]
        if indexes:
            children = {child.digest for m in indexes for child in m.parsed.manifests}
            ids = _manifest_ids(repository, [m.digest for m in indexes] + sorted(children))
            _insert_index_entries(indexes, ids)


def _manifest_ids(repository: Repository, digests: list[str]) -> dict[str, int]:
    ids: dict[str, int] = {}
    for chunk in _chunks(digests):
        ids.update(
            Manifest.objects.filter(repository=repository, digest__in=chunk).values_list(
                "digest", "pk"
            )
        )
    return ids


def _configs_for(
    fetched: list[FetchedManifest], configs_read: Mapping[str, media.ImageConfig]
) -> dict[str, media.ImageConfig | dict]:
    """Configs read now, plus those another manifest already brought into the database."""
    wanted = {crawl.config_digest(m) for m in fetched} - {""}
    configs: dict[str, media.ImageConfig | dict] = {
        digest: configs_read[digest] for digest in wanted if digest in configs_read
    }
    for row in (
        Manifest.objects.filter(config_digest__in=wanted - set(configs))
        .values("config_digest", "os", "architecture", "variant", "labels", "history")
        .order_by()
    ):
        configs.setdefault(row["config_digest"], row)
    return configs


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
        config_digest=crawl.config_digest(fetched),
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


def _tags_to_write(
    repository: Repository, read: dict[str, str], before: dict[str, str]
) -> dict[str, str | None]:
    """Tag -> digest (None: remove) for the tags the crawl may decide: those that still
    point where they did when it started. Read before anything changes in the transaction."""
    current = dict(
        Tag.objects.filter(repository=repository).values_list("name", "manifest__digest")
    )
    return {
        name: read.get(name)
        for name in current.keys() | before.keys() | read.keys()
        if current.get(name) == before.get(name) and current.get(name) != read.get(name)
    }


def _write_tags(repository: Repository, tags: dict[str, str | None]) -> int:
    """Point (or remove, for None) each tag; returns how many changed."""
    if not tags:
        return 0
    ids = _manifest_ids(repository, sorted({d for d in tags.values() if d is not None}))
    names = sorted(tags)
    for chunk in _chunks(names):
        Tag.objects.filter(repository=repository, name__in=chunk).delete()
    created = Tag.objects.bulk_create(
        (
            Tag(repository=repository, name=name, manifest_id=ids[digest])
            for name, digest in tags.items()
            if digest in ids
        ),
        batch_size=CHUNK,
    )
    return len(created) + sum(1 for digest in tags.values() if digest is None)


def _classify(
    repository: Repository,
    fetched: Mapping[str, FetchedManifest],
    new: list[str],
    tags: dict[str, str],
) -> None:
    """Kinds that depend on context: attestations (by their index entry) and referrers
    reached through the tag schema of registries without a referrers API."""
    for chunk in _chunks(new):
        attestations = [
            child.digest
            for manifest in (fetched[digest] for digest in chunk)
            for child in manifest.parsed.manifests
            if media.is_attestation(child)
        ]
        if attestations:
            Manifest.objects.filter(repository=repository, digest__in=attestations).update(
                kind=Manifest.Kind.ATTESTATION
            )
    for tag, digest in tags.items():
        subject = media.referrer_tag_subject(tag)
        if subject and digest in fetched:
            Manifest.objects.filter(repository=repository, digest=digest, subject_digest="").update(
                subject_digest=subject, kind=Manifest.Kind.ARTIFACT
            )


# -- pushed manifests (registry events) ------------------------------------------------


def read_pushed(
    client: RegistryClient, pool: ThreadPoolExecutor, name: str, pushed: dict[str, set[str]]
) -> Snapshot:
    """`registry.crawl.read_pushed`, answering from the database what it holds."""
    return crawl.read_pushed(
        client,
        pool,
        name,
        pushed,
        known=lambda digests: known_manifests(name, digests),
        known_configs=stored_configs,
    )


def write_pushed(snapshot: Snapshot) -> Repository:
    """Store what `read_pushed` read and point its tags, in one transaction under the
    repository's lease, leaving the repository's other manifests and tags alone
    (repairing them is sync's job). Raises `RepositoryBusy` like `_write`."""
    now = timezone.now()
    repository, _ = Repository.objects.get_or_create(name=snapshot.name)
    with (
        repository_lock(repository, owner="events", wait=LOCK_WAIT_SECONDS),
        transaction.atomic(),
    ):
        # A sync or another event may have stored some of them since the read.
        stored = set(
            Manifest.objects.filter(
                repository=repository, digest__in=list(snapshot.fetched)
            ).values_list("digest", flat=True)
        )
        new = [digest for digest in snapshot.fetched if digest not in stored]
        if new:
            _insert_manifests(repository, snapshot.fetched, new, snapshot.configs, now)
        current = dict(
            Tag.objects.filter(repository=repository, name__in=list(snapshot.tags)).values_list(
                "name", "manifest__digest"
            )
        )
        moved = {tag: d for tag, d in snapshot.tags.items() if current.get(tag) != d}
        tags_changed = _write_tags(repository, moved)
        changed = bool(new or tags_changed)
        if changed:
            _classify(repository, snapshot.fetched, new, snapshot.tags)
            rollups.refresh(repository)
            Repository.objects.filter(pk=repository.pk).update(revision=F("revision") + 1)
    return repository
