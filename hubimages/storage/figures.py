"""Storage insights (SPEC §10): what the registry stores, what deleting its stale or its
untagged items would free, where the bytes lie, and how they changed.

Every "reclaimable" figure is a plan of Preview and delete (`deletion.plan_deletions`, all
repositories at once), so it is what the garbage collector would free: a repository's
figure is exactly what `delete_images REPO <its stale items> --dry-run` reports, and the
registry's counts once the blobs that only deleted items of several repositories share.

Each registry has its own figures (it stores and collects its own blobs, SPEC §11).
Planning every stale and untagged item of a big registry takes seconds, so no web request
ever does it (SPEC §7): the workers keep each registry's figures in `StorageFigures`,
under the key of the state they describe (`state_key`), and compute them again
(`refresh`, one computation a registry at a time on any number of hosts) when that state
changes: a sync or a deletion ends, the
stale setting changes, or a day passes. Pages and the API only read them (`kept`), with
their age and whether new ones are on the way. Pushes and pulls that registry events bring
between two syncs show after the next one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, Max, Prefetch, QuerySet
from django.utils import timezone

from hubimages.deletion import planning
from hubimages.inventory import repositories as inventory_repositories
from hubimages.inventory import status
from hubimages.lib.formatting import iso
from hubimages.lib.leases import LeaseBusy, holder, lease
from hubimages.models import (
    Deletion,
    Manifest,
    ManifestBlob,
    Registry,
    Repository,
    StorageFigures,
    StorageSample,
    SyncRun,
    Tag,
)
from hubimages.registries import rows as registry_rows
from hubimages.storage.collection import note_collections
from registry.client import RegistryClient

log = logging.getLogger("hubimages.storage")

# The keys of `figures()`, the shape of `GET /api/v1/storage`.
TOTAL_KEYS = ("stored_bytes", "stale_reclaimable_bytes", "untagged_bytes")
REPOSITORY_KEYS = ("name", *TOTAL_KEYS)
LARGEST_ITEMS = 10
SHARED_LAYERS = 10
NAMES_SHOWN = 3
HISTORY_DAYS = 90
HISTORY_POINTS = 120  # the chart's points at most: a full sync every 15 min makes 8,640
KEEP_SAMPLES = timedelta(days=366)


REFRESH_ROUNDS = 3  # computed again at most this often when the state moved meanwhile


def figures_lease(registry: Registry) -> str:
    """Held by the one process computing `registry`'s figures."""
    return f"storage-figures:{registry.name}"


def figures(registry: Registry | None = None) -> dict:
    """The registry's storage computed now, in the shape of `GET /api/v1/storage`: for
    scripts and the command line. Pages and the API read what the workers keep (`kept`)."""
    return figures_of(compute(registry=registry or registry_rows.get()))


def figures_of(document: dict) -> dict:
    """A kept document in the shape of `GET /api/v1/storage`: `registry`, `stored_bytes`,
    `stale_reclaimable_bytes`, `untagged_bytes`, `complete` (false: `seen_through` narrowed
    it), `repositories` (by name, each with the same three) and `history` (`at`,
    `stored_bytes`: the full syncs of the last 90 days and the deletions, retention runs and
    restores that changed the figures, at most 120 of them, evenly spread)."""
    return {
        "registry": document["registry"],
        **{key: document[key] for key in TOTAL_KEYS},
        "complete": document.get("complete", True),
        "repositories": [
            {key: row[key] for key in REPOSITORY_KEYS} for row in document["repositories"]
        ],
        "history": document["history"],
    }


# What pages show before the workers first computed the figures (no figure is 0: none is
# shown; the page says they are on the way).
NOT_COMPUTED: dict = {
    "repositories": [],
    "history": [],
    "largest": [],
    "shared_layers": [],
}


def seen_through(document: dict, sees: Callable[[str], bool] | None) -> dict:
    """A registry's figures (`document`, kept or `NOT_COMPUTED`) for someone who sees only
    the repositories `sees` (a repository name -> whether they may see it; None: every
    one). Who sees every repository the figures name gets them whole (`complete`: true);
    anyone else only their repositories' rows, and for totals the sum of those rows (a
    layer two of them share counted in each; a blob only their stale items share left
    out), the largest items that are theirs, and none of the registry-wide figures (its
    history, its most shared layers, which name other repositories). No query: decided on
    the document's own names, so the figures and the rows they sum always agree."""
    rows = document["repositories"]
    if sees is None or all(sees(row["name"]) for row in rows):
        return {**document, "complete": True}
    mine = [row for row in rows if sees(row["name"])]
    summed = (*TOTAL_KEYS, "stale_items", "untagged_items")
    return {
        **document,
        **{key: sum(row[key] for row in mine) for key in summed if key in document},
        "complete": False,
        "repositories": mine,
        "largest": [item for item in document["largest"] if sees(item["repository"])],
        "shared_layers": [],
        "history": [],
    }


@dataclass(frozen=True)
class Kept:
    """The figures as the workers last computed them, for a page to show with their age:
    `document` (None before the first computation), `computed_at`, whether they describe
    the state as it is now (`current`), and whether a worker is computing new ones."""

    document: dict | None
    computed_at: datetime | None
    current: bool
    computing: bool


def kept(registry: Registry | None = None) -> Kept:
    """What pages and the API show: a read of the registry's kept row, whatever its age.
    Never computes. Five queries once the registry is known."""
    registry = registry or registry_rows.get()
    row = StorageFigures.objects.filter(registry=registry).first()
    if row is None:
        return Kept(None, None, False, computing(registry))
    return Kept(row.figures, row.computed_at, row.key == state_key(registry), computing(registry))


@dataclass(frozen=True)
class KeptTogether:
    """Several registries' kept figures, for the Repositories page: each registry's
    document (those computed), the oldest age, whether all are current, whether any is
    being computed. `document` is a document when every registry has one."""

    documents: dict[str, dict]
    computed_at: datetime | None
    current: bool
    computing: bool
    document: dict | None

    @property
    def stale_reclaimable_bytes(self) -> int:
        return sum(d["stale_reclaimable_bytes"] for d in self.documents.values())


def kept_together(registries: list[Registry]) -> KeptTogether:
    """`kept` of each registry, read together (a few queries each)."""
    each = {registry.name: kept(registry) for registry in registries}
    documents = {name: k.document for name, k in each.items() if k.document is not None}
    ages = [k.computed_at for k in each.values() if k.computed_at is not None]
    complete = bool(each) and len(documents) == len(each)
    return KeptTogether(
        documents=documents,
        computed_at=min(ages) if ages else None,
        current=all(k.current for k in each.values()),
        computing=any(k.computing for k in each.values()),
        document=next(iter(documents.values())) if complete else None,
    )


def computing(registry: Registry) -> bool:
    """Whether a worker is computing the registry's figures now."""
    return holder(figures_lease(registry)) is not None


def outdated(registry: Registry | None = None) -> bool:
    """Whether the kept figures of `registry` (of any registry, with None) describe
    another state than the current one (or none). The workers ask after each job and every
    few seconds."""
    registries = [registry] if registry is not None else registry_rows.known()
    return any(_stored_key(each) != state_key(each) for each in registries)


def _stored_key(registry: Registry) -> str | None:
    return StorageFigures.objects.filter(registry=registry).values_list("key", flat=True).first()


def refresh(registry: Registry | None = None, *, owner: str = "worker") -> bool:
    """Compute and keep the figures of `registry` (of every registry, with None) unless
    they are current; what the workers run.

    Single-flight: a registry's computation holds its lease (`figures_lease`), so on any
    number of workers and hosts one computes a registry's figures at a time, and a worker
    that finds it held moves on (the holder computes again if the state moved while it
    worked). Returns whether it computed any."""
    registries = [registry] if registry is not None else registry_rows.known()
    computed = False
    for each in registries:
        try:
            with lease(figures_lease(each), owner=owner):
                for _ in range(REFRESH_ROUNDS):
                    key = state_key(each)
                    if _stored_key(each) == key:
                        break
                    _keep(each, key, compute(registry=each))
                    computed = True
        except LeaseBusy:
            continue
    return computed


def state_key(registry: Registry | None = None) -> str:
    """What the figures depend on, hashed: the last finished sync and deletion, the last
    point of the history (a restore adds one: `record_change`), the stale setting, and the
    day (an item turns stale with time alone). Three queries."""
    registry = registry or registry_rows.get()
    syncs = SyncRun.objects.filter(registry=registry).aggregate(
        last=Max("finished_at"), count=Count("pk")
    )
    deletions = Deletion.objects.filter(registry=registry.name).aggregate(
        last=Max("finished_at"), count=Count("pk")
    )
    samples = StorageSample.objects.filter(registry=registry).aggregate(
        last=Max("at"), count=Count("pk")
    )
    state = [
        iso(syncs["last"]) if syncs["last"] else None,
        syncs["count"],
        iso(deletions["last"]) if deletions["last"] else None,
        deletions["count"],
        iso(samples["last"]) if samples["last"] else None,
        samples["count"],
        settings.STALE_AFTER_MONTHS,
        timezone.now().date().isoformat(),
    ]
    return hashlib.sha256(json.dumps(state).encode()).hexdigest()


def _keep(registry: Registry, key: str, document: dict) -> None:
    """Store the figures for every process; another one storing at the same moment
    computed the same."""
    try:
        with transaction.atomic():
            StorageFigures.objects.update_or_create(
                registry=registry,
                defaults={"key": key, "figures": document, "computed_at": timezone.now()},
            )
    except IntegrityError:
        log.info("storage figures stored by another process meanwhile")


# -- computing ---------------------------------------------------------------------------


def compute(now: datetime | None = None, *, registry: Registry | None = None) -> dict:
    """The figures, from scratch: two plans of the whole registry (its stale items, its
    untagged items) and a few queries, whatever the number of repositories."""
    registry = registry or registry_rows.get()
    now = now or timezone.now()
    repositories = list(
        registry.repositories.annotate(stored=inventory_repositories.repository_stored_size())
    )
    top_level = Manifest.objects.filter(repository__registry=registry, is_top_level=True)
    stale = _plan(repositories, top_level.filter(status.stale_q(now)))
    untagged = _plan(repositories, top_level.filter(is_tagged=False))
    last_sync = SyncRun.objects.filter(registry=registry).aggregate(last=Max("finished_at"))
    return {
        "registry": registry.name,
        "stored_bytes": inventory_repositories.stored_bytes(registry),
        "stale_reclaimable_bytes": stale.plans.reclaimable_bytes,
        "untagged_bytes": untagged.plans.reclaimable_bytes,
        "repositories": [
            {
                "name": repository.name,
                "stored_bytes": repository.stored,
                "stale_reclaimable_bytes": stale.bytes_of(repository),
                "untagged_bytes": untagged.bytes_of(repository),
                "stale_items": stale.items_of(repository),
                "untagged_items": untagged.items_of(repository),
            }
            for repository in sorted(repositories, key=lambda r: r.name)
        ],
        "stale_items": stale.items,
        "untagged_items": untagged.items,
        "largest": largest_items(now, registry=registry),
        "shared_layers": shared_layers(registry),
        "history": history(now, registry=registry),
        "computed_at": iso(now),
        "as_of": iso(last_sync["last"]) if last_sync["last"] else None,
    }


@dataclass(frozen=True)
class _Planned:
    plans: planning.PlanSet
    selected: dict[int, int]  # repository id -> how many items were selected

    @property
    def items(self) -> int:
        return sum(self.selected.values())

    def items_of(self, repository: Repository) -> int:
        return self.selected.get(repository.pk, 0)

    def bytes_of(self, repository: Repository) -> int:
        plan = self.plans.plans.get(repository.pk)
        return plan.reclaimable_bytes if plan else 0


def _plan(repositories: list[Repository], rows: QuerySet[Manifest]) -> _Planned:
    """Plan the deletion of `rows` (top-level items), each repository's its own."""
    selected: dict[int, list[str]] = defaultdict(list)
    for repository_id, digest in rows.order_by("pushed_at", "digest").values_list(
        "repository_id", "digest"
    ):
        selected[repository_id].append(digest)
    if not selected:
        return _Planned(planning.PlanSet(plans={}, reclaimable_bytes=0), {})
    by_id = {repository.pk: repository for repository in repositories}
    plans = planning.plan_deletions(
        {by_id[pk]: digests for pk, digests in selected.items() if pk in by_id}
    )
    return _Planned(plans, {pk: len(digests) for pk, digests in selected.items()})


def largest_items(now: datetime | None = None, *, registry: Registry | None = None) -> list[dict]:
    """The biggest top-level items of the registry (indexes count their images' distinct
    blobs once), with the tags people pushed. Two queries."""
    registry = registry or registry_rows.get()
    rows = (
        Manifest.objects.filter(repository__registry=registry, is_top_level=True)
        .select_related("repository")
        .only(
            "digest",
            "kind",
            "total_size",
            "pushed_at",
            "pushed_at_source",
            "pushed_at_estimated",
            "last_pulled_at",
            "repository__name",
        )
        .prefetch_related(
            Prefetch(
                "tags", queryset=inventory_repositories.pushed_tags(Tag.objects.order_by("name"))
            )
        )
        .order_by("-total_size", "digest")[:LARGEST_ITEMS]
    )
    return [_largest_item(row, status.own_status(row, now)) for row in rows]


def _largest_item(row: Manifest, state: str) -> dict:
    return {
        "repository": row.repository.name,
        "digest": row.digest,
        "kind": row.kind,
        "tags": [tag.name for tag in row.tags.all()],
        "size": row.total_size,
        "last_pushed": iso(row.pushed_at),
        "stale": state == status.STALE,
        # Unknown: its Last pushed is when hubimages first saw it.
        "status": state,
    }


def shared_layers(registry: Registry | None = None) -> list[dict]:
    """The layers the most manifests use, with the repositories they are in and the bytes
    sharing saves (each further manifest would otherwise store its own copy). A shared
    layer is freed only when the last manifest using it goes. Two queries."""
    registry = registry or registry_rows.get()
    rows = list(
        ManifestBlob.objects.filter(blob__registry=registry, role=ManifestBlob.Role.LAYER)
        .values("blob_id", "blob__digest", "blob__size")
        .annotate(
            manifests=Count("manifest_id", distinct=True),
            repositories=Count("manifest__repository_id", distinct=True),
        )
        .filter(manifests__gt=1)
        .order_by("-manifests", "-blob__size", "blob__digest")[:SHARED_LAYERS]
    )
    names: dict[int, list[str]] = defaultdict(list)
    for blob_id, name in (
        ManifestBlob.objects.filter(
            blob_id__in=[row["blob_id"] for row in rows], role=ManifestBlob.Role.LAYER
        )
        .values_list("blob_id", "manifest__repository__name")
        .order_by("manifest__repository__name")
        .distinct()
    ):
        names[blob_id].append(name)
    return [
        {
            "digest": row["blob__digest"],
            "size": row["blob__size"],
            "manifests": row["manifests"],
            "repositories": row["repositories"],
            "repository_names": names[row["blob_id"]][:NAMES_SHOWN],
            "more_repositories": max(0, row["repositories"] - NAMES_SHOWN),
            "saved_bytes": row["blob__size"] * (row["manifests"] - 1),
        }
        for row in rows
    ]


def history(now: datetime | None = None, *, registry: Registry | None = None) -> list[dict]:
    """Stored bytes at each full sync of the last `HISTORY_DAYS` and after each deletion,
    retention run or restore that changed them (`record_change`), at most `HISTORY_POINTS`
    of them spread evenly (the first and the last always among them)."""
    registry = registry or registry_rows.get()
    since = (now or timezone.now()) - timedelta(days=HISTORY_DAYS)
    samples = list(
        StorageSample.objects.filter(registry=registry, at__gte=since)
        .order_by("at", "pk")
        .values_list("at", "stored_bytes")
    )
    if len(samples) > HISTORY_POINTS:
        last = len(samples) - 1
        picks = sorted({round(i * last / (HISTORY_POINTS - 1)) for i in range(HISTORY_POINTS)})
        samples = [samples[i] for i in picks]
    return [{"at": iso(at), "stored_bytes": stored} for at, stored in samples]


# -- after a full sync ---------------------------------------------------------------------


def after_full_sync(client: RegistryClient, registry: Registry | None = None) -> None:
    """What a successful full sync of `registry` adds: whether its garbage collector ran
    and one point of its storage history. (The worker then computes the figures for the
    state it left, so no page waits for them: `jobs`.)"""
    registry = registry or registry_rows.get()
    note_collections(client, registry=registry)
    record_sample(registry=registry)


def record_sample(
    now: datetime | None = None, *, registry: Registry | None = None
) -> StorageSample:
    """One point of "stored bytes over time"; points older than a year go."""
    registry = registry or registry_rows.get()
    now = now or timezone.now()
    StorageSample.objects.filter(registry=registry, at__lt=now - KEEP_SAMPLES).delete()
    return StorageSample.objects.create(
        registry=registry, at=now, stored_bytes=inventory_repositories.stored_bytes(registry)
    )


def record_change(
    registries: Collection[str] | None = None, now: datetime | None = None
) -> list[StorageSample]:
    """After a deletion, a retention run or a restore (run by a worker, `jobs.runner`): one
    point of the history of each registry it touched (by name; None: every one) whose
    stored bytes are no longer its last point's, so the chart drops when the deletion ends
    rather than at the next full sync. The point changes `state_key`, so the figures the
    worker computes next show it. A registry without a point yet waits for its first full
    sync. Two queries a registry."""
    added = []
    for registry in registry_rows.known():
        if registries is not None and registry.name not in registries:
            continue
        stored = inventory_repositories.stored_bytes(registry)
        last = (
            StorageSample.objects.filter(registry=registry)
            .order_by("-at", "-pk")
            .values_list("stored_bytes", flat=True)
            .first()
        )
        if last is not None and last != stored:  # a history begins with a full sync
            added.append(record_sample(now, registry=registry))
    return added
