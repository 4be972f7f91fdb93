"""Whether the registry still holds what each kept manifest needs (SPEC §12), asked, never
guessed: a HEAD of each blob it references (its config and layers) in its repository,
and for an index, its children (each kept by the Trash and checked likewise, or a HEAD of
the manifest). Its own bytes the Trash has.

- Restorable: everything it needs answers.
- Partly lost: some of it is gone (the collector kept the blobs other manifests share).
- Lost: none of it answers: the garbage collector ran.

The workers check after a full sync that noticed a collection (`after_collection`); people
check with "Check now" (a job) or `manage.py trash list`. Never in a web request."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from django.db.models import Max, Q
from django.utils import timezone

from hubimages.models import Deletion, DeletionRecord, KeptManifest, Registry
from hubimages.trash.listing import kept_records
from registry import media
from registry.client import RegistryClient

State = KeptManifest.State
MISSING_SHOWN = 20


@dataclass(frozen=True)
class Needs:
    """What a kept manifest needs in its repository to be PUT back."""

    blobs: tuple[str, ...]
    children: tuple[str, ...]
    subject: str = ""


def needs(kept: KeptManifest) -> Needs:
    parsed = media.parse_manifest(bytes(kept.body), kept.media_type)
    if parsed.is_index:
        children = tuple(dict.fromkeys(d.digest for d in parsed.manifests))
        return Needs((), children, _subject(parsed))
    referenced = ([parsed.config] if parsed.config else []) + parsed.layers
    # A foreign (non-distributable) layer is fetched from its own URLs: no registry holds it.
    blobs = tuple(dict.fromkeys(d.digest for d in referenced if not _foreign(d)))
    return Needs(blobs, (), _subject(parsed))


def _subject(parsed: media.ParsedManifest) -> str:
    return parsed.subject.digest if parsed.subject else ""


def _foreign(descriptor: media.Descriptor) -> bool:
    return "foreign" in descriptor.media_type or "nondistributable" in descriptor.media_type


@dataclass
class _Checker:
    client: RegistryClient
    records: dict[tuple[str, str], DeletionRecord]
    found: dict[tuple[str, str], tuple[str, list[str]]] = field(default_factory=dict)
    blobs: dict[tuple[str, str], bool] = field(default_factory=dict)

    def state(self, key: tuple[str, str], visiting: frozenset = frozenset()) -> str:
        if key in self.found:
            return self.found[key][0]
        repository = key[0]
        wanted = needs(self.records[key].kept)
        total, lost, missing = 0, 0, []
        for blob in wanted.blobs:
            total += 1
            if not self._has_blob(repository, blob):
                lost += 1
                missing.append(blob)
        for child in wanted.children:
            total += 1
            state = self._child(repository, child, visiting | {key})
            if state != State.RESTORABLE:
                missing.append(child)
                lost += state == State.LOST
        if lost == total and total:
            state = State.LOST
        elif missing:
            state = State.PARTLY_LOST
        else:
            state = State.RESTORABLE
        self.found[key] = (state, missing)
        return state

    def _child(self, repository: str, digest: str, visiting: frozenset) -> str:
        """A child the Trash holds too goes by its own state; any other, by a HEAD."""
        key = (repository, digest)
        if key in self.records and key not in visiting:
            return self.state(key, visiting)
        present = self.client.head_manifest(repository, digest) is not None
        return State.RESTORABLE if present else State.LOST

    def _has_blob(self, repository: str, digest: str) -> bool:
        if (repository, digest) not in self.blobs:
            self.blobs[(repository, digest)] = self.client.has_blob(repository, digest)
        return self.blobs[(repository, digest)]


def check(records: Iterable[DeletionRecord], client: RegistryClient) -> dict[str, int]:
    """Ask the registry (which `client` reads) about each of `records`' kept manifests and
    store what it answered, with the time; returns how many are in each state. A registry
    error stops the check before anything is stored: a state is never half-known.

    An index's children among `records` go by their own state; any other child by a HEAD
    of the manifest. So `records` holds the children the Trash keeps with their index: the
    registry's whole Trash, or a restore's items (`restore._asked`)."""
    by_key: dict[tuple[str, str], DeletionRecord] = {}
    for record in sorted(records, key=lambda r: (r.deleted_at, r.pk)):
        by_key[(record.repository, record.digest)] = record  # the newest deletion wins
    checker = _Checker(client, by_key)
    for key in by_key:
        checker.state(key)
    now = timezone.now()
    counts: dict[str, int] = {}
    for key, (state, missing) in checker.found.items():
        record = by_key[key]
        KeptManifest.objects.filter(pk=record.pk).update(
            state=state, missing=missing[:MISSING_SHOWN], checked_at=now
        )
        record.kept.state, record.kept.missing, record.kept.checked_at = state, missing, now
        counts[state] = counts.get(state, 0) + 1
    return counts


def in_trash(registry: Registry) -> list[DeletionRecord]:
    """The registry's kept manifests that are not restored: what a check asks about."""
    return list(
        kept_records(registry.name)
        .filter(state=DeletionRecord.State.DONE)
        .select_related("kept")
        .order_by("deleted_at", "pk")
    )


def check_registry(registry: Registry, client: RegistryClient) -> dict[str, int]:
    """Check everything of `registry` the Trash holds and has not restored."""
    return check(in_trash(registry), client)


def after_collection(
    registry: Registry, client: RegistryClient, *, progress: Callable[[str], None] | None = None
) -> dict[str, int]:
    """After a full sync: if a garbage collection was noticed (`storage.note_collections`)
    since some kept manifest was last checked, check the registry's Trash (all of it: an
    index's state follows its children's). One query when no collection was noticed."""
    latest = Deletion.objects.filter(registry=registry.name).aggregate(at=Max("collected_at"))["at"]
    if latest is None:
        return {}
    stale = (
        kept_records(registry.name)
        .filter(state=DeletionRecord.State.DONE)
        .filter(Q(kept__checked_at__isnull=True) | Q(kept__checked_at__lt=latest))
    )
    if not stale.exists():
        return {}
    if progress is not None:
        progress("Checking the Trash after a garbage collection")
    return check_registry(registry, client)
