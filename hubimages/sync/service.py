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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from django.db import transaction
from django.utils import timezone

from hubimages.lib.formatting import plural
from hubimages.lib.leases import (
    LeaseBusy,
    acquire,
    acquire_new,
    holding,
    lease,
    release,
    repository_lock,
    run_lease_name,
)
from hubimages.models import Registry, SyncRun
from hubimages.registries import rows
from hubimages.sync import store
from hubimages.sync.store import Known, RepositoryResult
from registry import crawl, media
from registry.client import RegistryClient
from registry.crawl import NOTHING_KNOWN, Snapshot
from registry.errors import AuthenticationError, NotFound, RegistryError, UnsupportedOperation

log = logging.getLogger("hubimages.sync")
# Up to this many repositories, only removing all of them needs --prune; past it, more
# than half of them does.
FEW_REPOSITORIES = 4


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


def sync_registry(
    client: RegistryClient,
    *,
    repositories: Iterable[str] | None = None,
    catalog: Iterable[str] | None = None,
    workers: int = 8,
    progress: Progress | None = None,
    prune: bool = False,
    after_full_sync: Callable[[RegistryClient, Registry], None] | None = None,
    registry: Registry | None = None,
) -> SyncSummary:
    """Bring the database in line with the registry; see SPEC §5.

    `repositories` syncs just those. `catalog` stands in for the registry's catalog, for
    registries that do not offer one to us (Docker Hub, GHCR): the database then holds those
    repositories and no others, as it would with the catalog. `prune` lets a full sync
    remove more repositories than `too_many_to_remove` allows. `registry` is the one
    `client` reads (default: the default registry). A full sync holds the registry's
    `sync:<name>` lease, so two never overlap on any number of hosts, while other
    registries sync on their own (raises `LeaseBusy`);
    `after_full_sync` runs under that lease when a full sync succeeded (the app passes
    `storage.figures.after_full_sync`: a layer above this one)."""
    registry = registry or rows.get()
    if repositories:
        names = list(dict.fromkeys(repositories))
        return _sync(client, registry, names, None, workers, progress, prune)
    owner = f"a full sync ({socket.gethostname()}:{os.getpid()})"
    with lease(full_sync_lease(registry.name), owner=owner, what=f"registry {registry.name}"):
        summary = _sync(client, registry, None, catalog, workers, progress, prune)
        if summary.succeeded and after_full_sync is not None:
            after_full_sync(client, registry)
        return summary


def full_sync_lease(registry: str) -> str:
    return f"sync:{registry}"


def _sync(
    client: RegistryClient,
    registry: Registry,
    names: list[str] | None,
    catalog: Iterable[str] | None,
    workers: int,
    progress: Progress | None,
    prune: bool,
) -> SyncSummary:
    started = time.monotonic()
    with transaction.atomic():  # no worker ever sees the run without its lease
        run = SyncRun.objects.create(registry=registry, started_at=timezone.now())
        taken = acquire_new(run_lease_name("sync", run.pk), owner=f"sync run {run.pk}")
    summary = SyncSummary()
    report = progress or (lambda message: None)
    with holding(taken):
        try:
            if names is not None:
                valid = _valid_names(names, "named", summary)
                _sync_all(client, registry, valid, workers, report, summary, gone=None)
            else:
                _sync_everything(client, registry, catalog, workers, report, summary, prune)
            if summary.manifests_removed or summary.repositories_removed:
                store.remove_unused_blobs()
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


INTERRUPTED = "interrupted: the process running it stopped before it ended"


def settle_interrupted_syncs() -> list[int]:
    """Close the runs of syncs whose process stopped (SIGKILL, a lost host) before it could:
    a sync holds its run's lease (`leases.run_lease_name`) until it has closed its run, so
    an unfinished run whose lease is free was interrupted. What it wrote is in the
    database, one repository per transaction; the next sync reads everything again.
    Returns the ids of the runs closed."""
    settled = []
    for pk in SyncRun.objects.filter(finished_at__isnull=True).values_list("pk", flat=True):
        taken = acquire(run_lease_name("sync", pk), owner="recovery")
        if taken is None:
            continue  # its process is alive
        try:
            if SyncRun.objects.filter(pk=pk, finished_at__isnull=True).update(
                finished_at=timezone.now(),
                succeeded=False,
                summary=SyncSummary(errors=[INTERRUPTED]).as_dict(),
            ):
                settled.append(pk)
        finally:
            release(taken)
    return settled


def _sync_everything(
    client: RegistryClient,
    registry: Registry,
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
    holding = _repositories_holding_manifests(registry)
    known = registry.repositories.values_list("name", flat=True)
    unlisted = sorted(set(known) - set(listed))
    gone: dict[str, tuple[Snapshot | crawl.CrawlFailure, Known]] = {}
    if catalog:
        # The configured list is the operator's word, not the registry's: no need to look.
        for name in unlisted:
            gone[name] = (crawl.CrawlFailure(name, NotFound("not configured")), NOTHING_KNOWN)
        report(f"{plural(len(listed), 'repository')} configured")
        _sync_all(client, registry, listed, workers, report, summary, gone=gone)
    else:
        more = f"; {len(unlisted)} more in the database, looked up too" if unlisted else ""
        report(f"{plural(len(listed), 'repository')} in the catalog{more}")
        _sync_all(client, registry, listed + unlisted, workers, report, summary, gone=gone)
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
    _remove_gone(client, registry, gone, holding, prune, summary, confirm=not catalog)


def _sync_all(
    client: RegistryClient,
    registry: Registry,
    names: list[str],
    workers: int,
    report: Progress,
    summary: SyncSummary,
    *,
    gone: dict | None,
) -> None:
    for result in _sync_repositories(client, registry, names, workers, report, gone):
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
    client: RegistryClient,
    registry: Registry,
    gone: dict[str, tuple[Snapshot | crawl.CrawlFailure, Known]],
    holding: set[str],
    prune: bool,
    summary: SyncSummary,
    *,
    confirm: bool,
) -> None:
    """Remove what a full sync found gone, unless it is too much to take on its word.

    Repositories that hold no manifest cost nothing and always go. With `confirm`, the
    registry is asked again before a repository goes (`remove_missing`); without, the
    operator's configured list is the word (a repository it no longer names)."""
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
            result = _write_or_fail(registry, read, known)
            read.close()
            summary.manifests_removed += result.removed
            if result.error:
                summary.errors.append(f"{name}: {result.error}")
        else:
            result = (
                remove_missing(client, registry, name, unlisted=True)
                if confirm
                else _write_missing(registry, name)
            )
            summary.manifests_removed += result.removed
            summary.repositories_removed += int(result.gone)
            if not result.gone:
                summary.warnings += [f"{name}: {w}" for w in result.warnings]
            if result.error:
                summary.errors.append(f"{name}: {result.error}")


def _valid_names(names: list[str], source: str, summary: SyncSummary) -> list[str]:
    """The names the registry API can address; others are reported, never requested."""
    invalid = [name for name in names if not media.is_repository_name(name)]
    if invalid:
        summary.warnings.append(
            f"invalid repository names {source}, skipped: {crawl.named(invalid)}"
        )
    return [name for name in names if media.is_repository_name(name)]


def _repositories_holding_manifests(registry: Registry) -> set[str]:
    holding = registry.repositories.filter(manifests__isnull=False)
    return set(holding.values_list("name", flat=True).distinct())


def _read_catalog(client: RegistryClient) -> list[str]:
    try:
        return list(client.iter_repositories())
    except (UnsupportedOperation, AuthenticationError) as error:
        error.message += (
            "; name the repositories to sync in REGISTRY_REPOSITORIES (or with --repository)"
        )
        raise


def sync_repository(
    client: RegistryClient, name: str, *, workers: int = 8, registry: Registry | None = None
) -> RepositoryResult:
    """Sync one repository (used before a delete, to check the plan still holds)."""
    registry = registry or rows.get()
    [result] = _sync_repositories(client, registry, [name], workers, lambda message: None)
    return result


def _sync_repositories(
    client: RegistryClient,
    registry: Registry,
    names: list[str],
    workers: int,
    report: Progress,
    gone: dict | None = None,
) -> Iterable[RepositoryResult]:
    """Read and write each repository. With `gone`, a repository the registry holds none
    of (`_is_gone`) is put there, with what was read, for the caller to decide."""
    known_by_name: dict[str, Known] = {}
    configs = store.stored_configs()
    unchanged: list[str] = []

    def known(name: str) -> Known:
        known_by_name[name] = store.known_state(registry, name)
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
            result = _write_read(client, registry, read, known_before)
            if isinstance(read, Snapshot):
                if not result.error:
                    configs.update(read.config_digests)
                read.close()
        report(_progress_line(done, len(names), result))
        yield result
    store.mark_synced(registry, unchanged)


def _is_gone(read: Snapshot | crawl.CrawlFailure, known: Known) -> bool:
    """The registry has no such repository, or no tag and none of its known manifests."""
    if isinstance(read, crawl.CrawlFailure):
        return read.missing
    stored = set(known.manifests)
    return bool(stored) and not read.tags and not read.fetched and not (read.present & stored)


def _write_read(
    client: RegistryClient,
    registry: Registry,
    read: Snapshot | crawl.CrawlFailure,
    known: Known,
) -> RepositoryResult:
    if isinstance(read, crawl.CrawlFailure):
        if read.missing:
            return remove_missing(client, registry, read.name)
        return RepositoryResult(name=read.name, error=str(read.error))
    return _write_or_fail(registry, read, known)


def remove_missing(
    client: RegistryClient, registry: Registry, name: str, *, unlisted: bool = False
) -> RepositoryResult:
    """Remove a repository a crawl found missing, once the registry says so again.

    One round of answers is not enough (a proxy's blip, a storage backend's hiccup): under
    the repository's lease, its tag list must answer 404 NAME_UNKNOWN again (or, for a
    repository the catalog does not list either, `unlisted`, list no tag) and a HEAD find
    none of the manifests stored now; then its rows go in one transaction. `gone` on the
    result says whether it went."""
    try:
        with repository_lock(
            name, owner="sync", wait=store.LOCK_WAIT_SECONDS, registry=registry.name
        ):
            if not _confirmed_missing(client, registry, name, unlisted=unlisted):
                return RepositoryResult(
                    name=name,
                    warnings=[
                        "the registry answered once that it has no such repository; asked "
                        "again, it has: kept"
                    ],
                )
            result = store.write_missing(registry, name)
    except LeaseBusy as error:
        return RepositoryResult(name=name, error=str(error))
    except RegistryError as error:
        return RepositoryResult(name=name, error=f"could not confirm it is gone: {error}")
    result.gone = True
    return result


def _confirmed_missing(
    client: RegistryClient, registry: Registry, name: str, *, unlisted: bool
) -> bool:
    try:
        listed = client.list_tags(name)
    except NotFound as error:
        if not crawl.names_unknown_repository(error):
            raise
    else:
        if listed or not unlisted:
            return False
    stored = store.stored_digests(registry, name)
    return all(client.head_manifest(name, digest) is None for digest in stored)


def _write_missing(registry: Registry, name: str) -> RepositoryResult:
    try:
        result = store.write_missing(registry, name)
    except LeaseBusy as error:
        return RepositoryResult(name=name, error=str(error))
    result.gone = True
    return result


def _write_or_fail(registry: Registry, snapshot: Snapshot, known: Known) -> RepositoryResult:
    try:
        return store.write_snapshot(registry, snapshot, known)
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
