"""Writing what a crawl read into the database: one transaction per repository, under its
lease, trusting the database as it is now over what the crawl began with (SPEC §5)."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from hubimages.lib.formatting import plural
from hubimages.lib.leases import repository_lock
from hubimages.models import (
    Blob,
    DeletionRecord,
    IndexEntry,
    Manifest,
    ManifestBlob,
    PushedFrom,
    Registry,
    RegistryEvent,
    Repository,
    Tag,
)
from hubimages.sync import activity, rollups
from registry import crawl, media
from registry.client import FetchedManifest, RegistryClient
from registry.crawl import KnownManifest, KnownRepository, Snapshot

log = logging.getLogger("hubimages.sync")

EARLIEST_PLAUSIBLE_BUILD = datetime(2013, 1, 1, tzinfo=UTC)
CREATED_ANNOTATION = "org.opencontainers.image.created"
LOCK_WAIT_SECONDS = 30.0  # a deletion holds the repository meanwhile; then report it busy
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


def remove_unused_blobs() -> None:
    """Blobs no manifest references any more: the registry frees them at its next GC."""
    Blob.objects.filter(manifest_links__isnull=True).delete()


# What the database held of a repository when its crawl started: the crawl fetches only
# what is new and HEADs only the tags it knows, and the write moves only tags nobody else
# moved meanwhile.
Known = KnownRepository


def known_state(registry: Registry, name: str) -> Known:
    tags = dict(
        Tag.objects.filter(repository__registry=registry, repository__name=name).values_list(
            "name", "manifest__digest"
        )
    )
    unconfirmed = set(
        Manifest.objects.filter(
            repository__registry=registry, repository__name=name, unconfirmed_since__isnull=False
        ).values_list("digest", flat=True)
    )
    return Known(known_manifests(registry, name), tags, unconfirmed)


def mark_synced(registry: Registry, names: list[str]) -> None:
    """One statement per thousand unchanged repositories, rather than a write each."""
    now = timezone.now()
    for start in range(0, len(names), CHUNK):
        Repository.objects.filter(registry=registry, name__in=names[start : start + CHUNK]).update(
            synced_at=now
        )


def known_manifests(
    registry: Registry, name: str, digests: Collection[str] | None = None
) -> dict[str, KnownManifest]:
    """The repository's stored manifests (or just `digests` of them) with their children."""
    manifests = Manifest.objects.filter(repository__registry=registry, repository__name=name)
    entries = IndexEntry.objects.filter(
        index__repository__registry=registry, index__repository__name=name
    )
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


def write_missing(registry: Registry, name: str) -> RepositoryResult:
    """Remove a repository the registry no longer has, with every row of it: under its
    lease (a deletion or an event may be writing it) and in one transaction. The caller
    has confirmed it is gone (`hubimages.sync.service`): this cannot be undone, the
    untagged manifests it held cannot be listed again."""
    with (
        repository_lock(name, owner="sync", wait=LOCK_WAIT_SECONDS, registry=registry.name),
        transaction.atomic(),
    ):
        removed = Manifest.objects.filter(
            repository__registry=registry, repository__name=name
        ).count()
        Repository.objects.filter(registry=registry, name=name).delete()
    return RepositoryResult(name=name, removed=removed, warnings=["not in the registry"])


def stored_digests(registry: Registry, name: str) -> list[str]:
    return list(
        Manifest.objects.filter(repository__registry=registry, repository__name=name)
        .order_by("digest")
        .values_list("digest", flat=True)
    )


def write_snapshot(registry: Registry, snapshot: Snapshot, known: Known) -> RepositoryResult:
    """Write a crawl's snapshot under the repository's lease, trusting the database as it
    is now rather than as it was when the crawl started: a push event may have stored some
    manifests or moved some tags meanwhile, and its word is newer than the crawl's.

    One transaction, written in chunks of CHUNK manifests read back from the snapshot's
    spool: memory stays flat however large the repository, and a failure leaves the
    repository's previous data."""
    result = RepositoryResult(name=snapshot.name, warnings=snapshot.warnings)
    now = timezone.now()
    repository, _ = Repository.objects.get_or_create(registry=registry, name=snapshot.name)
    with (
        repository_lock(repository, owner="sync", wait=LOCK_WAIT_SECONDS),
        transaction.atomic(),
    ):
        stored = set(
            Manifest.objects.filter(repository=repository).values_list("digest", flat=True)
        )
        tags = _tags_to_write(repository, snapshot.tags, known.tags)
        gone = _settle_unconfirmed(
            repository,
            (set(known.manifests) - snapshot.present) & stored,
            snapshot.present,
            now,
            result,
        )
        for chunk in _chunks(sorted(gone)):
            Manifest.objects.filter(repository=repository, digest__in=chunk).delete()
        new = [d for d in snapshot.fetched if d not in stored and d in snapshot.present]
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


def _settle_unconfirmed(
    repository: Repository,
    absent: set[str],
    present: set[str],
    now: datetime,
    result: RepositoryResult,
) -> set[str]:
    """Of the stored manifests this read did not find (a HEAD by digest answered 404),
    return those whose absence is confirmed: an earlier sync found them missing too, or a
    deletion recorded deleting them, or the registry sent a delete event for them. They
    go. The others are marked unconfirmed and kept: one answer (a blip, a proxy) must not
    drop an untagged image the registry API can never list again, nor its pull history.
    Marks on manifests found again are cleared."""
    marked = set(
        Manifest.objects.filter(repository=repository, unconfirmed_since__isnull=False).values_list(
            "digest", flat=True
        )
    )
    for chunk in _chunks(sorted(absent - marked)):
        marked.update(
            DeletionRecord.objects.filter(
                registry=repository.registry.name,
                repository=repository.name,
                digest__in=chunk,
                state=DeletionRecord.State.DONE,
            ).values_list("digest", flat=True)
        )
        marked.update(
            RegistryEvent.objects.filter(
                registry_id=repository.registry_id,
                repository=repository.name,
                digest__in=chunk,
                action="delete",
            ).values_list("digest", flat=True)
        )
    found_again = sorted(marked & present)
    for chunk in _chunks(found_again):
        Manifest.objects.filter(repository=repository, digest__in=chunk).update(
            unconfirmed_since=None
        )
    first_time = sorted(absent - marked)
    for chunk in _chunks(first_time):
        Manifest.objects.filter(repository=repository, digest__in=chunk).update(
            unconfirmed_since=now
        )
    if first_time:
        named = ", ".join(first_time[: crawl.MAX_NAMED_WARNINGS])
        more = len(first_time) - crawl.MAX_NAMED_WARNINGS
        result.warnings.append(
            f"{plural(len(first_time), 'manifest')} answered 404 to a HEAD by digest, kept "
            f"as unconfirmed until the next sync asks again: {named}"
            + (f" and {more} more" if more > 0 else "")
        )
    return absent & marked


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
        _insert_blob_links(repository.registry_id, manifests, _manifest_ids(repository, chunk))
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
        pushed_at_source=PushedFrom.BUILD if created else PushedFrom.FIRST_SEEN,
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


def _insert_blob_links(
    registry_id: int, fetched: Iterable[FetchedManifest], ids: dict[str, int]
) -> None:
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
        [
            Blob(registry_id=registry_id, digest=d, size=s, media_type=t[:255])
            for d, (s, t) in blobs.items()
        ],
        ignore_conflicts=True,
        batch_size=500,
    )
    blob_ids = _blob_ids(registry_id, list(blobs))
    ManifestBlob.objects.bulk_create(
        [
            ManifestBlob(manifest_id=ids[m], blob_id=blob_ids[b], role=role, position=position)
            for m, b, role, position in links
        ],
        batch_size=500,
    )


def _blob_ids(registry_id: int, digests: list[str]) -> dict[str, int]:
    ids: dict[str, int] = {}
    for start in range(0, len(digests), 500):
        chunk = digests[start : start + 500]
        ids.update(
            Blob.objects.filter(registry_id=registry_id, digest__in=chunk).values_list(
                "digest", "pk"
            )
        )
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
    client: RegistryClient,
    pool: ThreadPoolExecutor,
    registry: Registry,
    name: str,
    pushed: dict[str, set[str]],
) -> Snapshot:
    """`registry.crawl.read_pushed`, answering from the database what it holds."""
    return crawl.read_pushed(
        client,
        pool,
        name,
        pushed,
        known=lambda digests: known_manifests(registry, name, digests),
        known_configs=stored_configs,
    )


def write_pushed(registry: Registry, snapshot: Snapshot) -> Repository:
    """Store what `read_pushed` read and point its tags, in one transaction under the
    repository's lease, leaving the repository's other manifests and tags alone
    (repairing them is sync's job). Raises `RepositoryBusy` like `write_snapshot`."""
    now = timezone.now()
    repository, _ = Repository.objects.get_or_create(registry=registry, name=snapshot.name)
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
        new = [d for d in snapshot.fetched if d not in stored and d in snapshot.present]
        Manifest.objects.filter(
            repository=repository,
            digest__in=list(snapshot.present),
            unconfirmed_since__isnull=False,
        ).update(unconfirmed_since=None)
        current = dict(
            Tag.objects.filter(repository=repository, name__in=list(snapshot.tags)).values_list(
                "name", "manifest__digest"
            )
        )
        moved = {tag: d for tag, d in snapshot.tags.items() if current.get(tag) != d}
        # The rollups of what this push touches only, not of the whole repository.
        with rollups.changing(repository.pk, digests=_touched(snapshot, current)) as change:
            if new:
                _insert_manifests(repository, snapshot.fetched, new, snapshot.configs, now)
                change.inserted(_manifest_ids(repository, new).values())
            tags_changed = _write_tags(repository, moved)
            changed = bool(new or tags_changed)
            if changed:
                _classify(repository, snapshot.fetched, new, snapshot.tags)
        if changed:
            Repository.objects.filter(pk=repository.pk).update(revision=F("revision") + 1)
    return repository


def _touched(snapshot: Snapshot, current_tags: dict[str, str]) -> set[str]:
    """The digests a push may change the derived columns of: what it read, the children
    its indexes name, and where its tags pointed and will point."""
    digests = set(snapshot.fetched)
    digests |= {c.digest for m in snapshot.fetched.values() for c in m.parsed.manifests}
    digests |= {d for d in (*snapshot.tags.values(), *current_tags.values()) if d}
    return digests
