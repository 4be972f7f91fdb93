"""What the delete preview shows beside the plan (SPEC §4): what each item frees on its own,
what the rest of it is shared with, and the guard rails that ask for a second look.

"Storage you will reclaim" alone confused people: two rows of 3.0 MB reclaim 310 kB because
most of their layers are used elsewhere. Each item therefore gets the bytes only it holds,
the bytes it shares with other items of the same deletion (freed together, counted once in
the total) and the bytes a manifest that stays still uses (never freed), with a few of
those manifests named (by tag, or an index's tag and the platform). Read-only, four
queries whatever the plan's size.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Count, Min, Q
from django.utils import timezone

from hubimages.deletion import planning
from hubimages.inventory import status
from hubimages.lib.formatting import short_digest
from hubimages.models import IndexEntry, Manifest, ManifestBlob, Tag, platform_label

# Pulled this recently, an item is "recently pulled": the same window the retention dry run
# uses. (Not "in use": that means a live in-use report says it runs, SPEC §13.)
RECENTLY_PULLED_DAYS = 30
NAMES_SHOWN = 3


@dataclass(frozen=True)
class ItemSharing:
    """How one planned item's blobs split. `frees`: blobs no other manifest uses;
    `shared_going`: blobs only other items of this deletion use too; `shared_staying`:
    blobs a manifest that stays uses, named in `staying_names` (at least `more_staying`
    more share them)."""

    frees: int = 0
    shared_going: int = 0
    shared_staying: int = 0
    staying_names: tuple[str, ...] = ()
    more_staying: int = 0


@dataclass(frozen=True)
class PlanSharing:
    items: dict[str, ItemSharing]  # by digest
    frees_alone: int  # the sum of the items' `frees`
    shared_among_items: int  # blobs that only several items of the deletion use

    @property
    def total(self) -> int:
        """The plan's reclaimable bytes, built up from the parts shown."""
        return self.frees_alone + self.shared_among_items


def plan_sharing(
    plan: planning.DeletionPlan, *, visible: Callable[[str], bool] | None = None
) -> PlanSharing:
    """What each planned item frees and what it shares. `visible` says which other
    repositories of the registry may be named (those the user sees); the others count,
    unnamed ("and N more"), so the bytes stay exact."""
    ids = {item.manifest_id: item.digest for item in plan.delete}
    if not ids:
        return PlanSharing({}, 0, 0)
    users: dict[int, set[int]] = defaultdict(set)  # blob -> planned manifests using it
    blobs_of: dict[int, set[int]] = defaultdict(set)  # planned manifest -> its blobs
    sizes: dict[int, int] = {}
    for manifest_id, blob_id, size in ManifestBlob.objects.filter(
        manifest_id__in=planning.as_parameter(ids)
    ).values_list("manifest_id", "blob_id", "blob__size"):
        users[blob_id].add(manifest_id)
        blobs_of[manifest_id].add(blob_id)
        sizes[blob_id] = size
    outside = _users_outside(list(sizes), list(ids))
    names = _names(plan.repository, {sample for _, sample in outside.values()}, visible)
    items = {
        digest: _item_sharing(blobs_of[pk], users, sizes, outside, names)
        for pk, digest in ids.items()
    }
    shared_among = sum(
        size for blob, size in sizes.items() if blob not in outside and len(users[blob]) > 1
    )
    return PlanSharing(items, sum(item.frees for item in items.values()), shared_among)


def _users_outside(blob_ids: list[int], planned: list[int]) -> dict[int, tuple[int, int]]:
    """Blob -> (how many manifests outside the plan use it, one of them to name, a tagged
    one if any). Counted in SQL: a base layer may serve thousands of manifests."""
    if not blob_ids:
        return {}
    rows = (
        ManifestBlob.objects.filter(blob_id__in=planning.as_parameter(blob_ids))
        .exclude(manifest_id__in=planning.as_parameter(planned))
        .values("blob_id")
        .annotate(
            count=Count("manifest_id", distinct=True),
            tagged=Min("manifest_id", filter=Q(manifest__is_tagged=True)),
            any=Min("manifest_id"),
        )
        .values_list("blob_id", "count", "tagged", "any")
    )
    return {blob: (count, tagged or any_) for blob, count, tagged, any_ in rows}


def _names(
    repository: str, manifest_ids: set[int], visible: Callable[[str], bool] | None = None
) -> dict[int, str]:
    """A manifest as people know it: its first tag; an untagged image inside a tagged index
    by that index's tag and its platform ("latest · linux/arm64/v8"), which says which
    architecture it is; else its short digest and platform. `repo:` before it when it lives
    in another repository; none for one in a repository `visible` refuses."""
    rows = (
        Manifest.objects.filter(pk__in=planning.as_parameter(manifest_ids))
        .annotate(first_tag=Min("tags__name"))
        .values_list(
            "pk", "repository__name", "digest", "first_tag", "os", "architecture", "variant"
        )
    )
    rows = list(rows)
    parents = _tagged_parents([row[0] for row in rows if not row[3]])
    names = {}
    for pk, repo, digest, tag, os, architecture, variant in rows:
        if repo != repository and visible is not None and not visible(repo):
            continue
        own_platform = platform_label(os, architecture, variant)
        if tag:
            name = tag
        elif pk in parents:
            index_tag, declared = parents[pk]
            name = " · ".join(part for part in (index_tag, declared or own_platform) if part)
            tag = index_tag
        else:
            name = " · ".join(part for part in (short_digest(digest), own_platform) if part)
        if repo != repository:
            name = f"{repo}:{name}" if tag else f"{repo}@{name}"
        names[pk] = name
    return names


def _tagged_parents(manifest_ids: list[int]) -> dict[int, tuple[str, str]]:
    """Untagged manifest -> (the first tag of a tagged index holding it, the platform that
    index declares for it)."""
    if not manifest_ids:
        return {}
    rows = (
        IndexEntry.objects.filter(
            child_id__in=planning.as_parameter(manifest_ids), index__is_tagged=True
        )
        .annotate(tag=Min("index__tags__name"))
        .values_list("child_id", "tag", "os", "architecture", "variant")
        .order_by("child_id", "tag")
    )
    parents: dict[int, tuple[str, str]] = {}
    for child, tag, os, architecture, variant in rows:
        if tag and child not in parents:
            parents[child] = (tag, platform_label(os, architecture, variant))
    return parents


def _item_sharing(
    blobs: set[int],
    users: dict[int, set[int]],
    sizes: dict[int, int],
    outside: dict[int, tuple[int, int]],
    names: dict[int, str],
) -> ItemSharing:
    frees = going = staying = 0
    most_users = 0
    sharers: list[str] = []
    for blob in sorted(blobs, key=lambda b: (-sizes[b], b)):  # biggest shared layer first
        if blob in outside:
            count, sample = outside[blob]
            staying += sizes[blob]
            most_users = max(most_users, count)
            if names.get(sample) and names[sample] not in sharers:
                sharers.append(names[sample])
        elif len(users[blob]) > 1:
            going += sizes[blob]
        else:
            frees += sizes[blob]
    shown = tuple(sharers[:NAMES_SHOWN])
    # Distinct sharers number at least the users of the most shared blob.
    more = max(most_users, len(sharers)) - len(shown)
    return ItemSharing(frees, going, staying, shown, more)


# -- guard rails ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Guards:
    """Why an item deserves a second look before it goes."""

    pulled_at: datetime | None = None  # pulled within RECENTLY_PULLED_DAYS
    latest: bool = False  # tagged `latest`: what `docker pull` without a tag gets
    signature: bool = False  # a signature: images verified against it stop verifying
    # Not stale (Active, or Unknown: undated, watched for less than STALE_AFTER_MONTHS),
    # as the top-level item it goes with is (SPEC §2): a stale image's signature is stale.
    active: bool = False

    @property
    def any(self) -> bool:
        return bool(self.pulled_at or self.latest or self.signature or self.active)


def guard_rails(plan: planning.DeletionPlan, now: datetime | None = None) -> dict[str, Guards]:
    """The guard rails of each planned item, by digest (items without any are left out)."""
    now = now or timezone.now()
    recent_since = now - timedelta(days=RECENTLY_PULLED_DAYS)
    states = status.statuses({item.manifest_id for item in plan.delete}, now)
    guards = {}
    for item in plan.delete:
        pulled = item.last_pulled_at
        found = Guards(
            pulled_at=pulled if pulled and pulled >= recent_since else None,
            latest="latest" in item.tags,
            signature=is_signature(item),
            active=item.kind != Manifest.Kind.ATTESTATION
            and states.get(item.manifest_id, status.ACTIVE) != status.STALE,
        )
        if found.any:
            guards[item.digest] = found
    return guards


def is_signature(item: planning.PlannedItem) -> bool:
    """cosign's `.sig` tags and signature artifact types (cosign, Notary v2)."""
    if item.kind != Manifest.Kind.ARTIFACT:
        return False
    kind = item.artifact_type.lower()
    return any(tag.endswith(".sig") for tag in item.tags) or "signature" in kind or ".sig." in kind


def needs_active_confirmation(plan: planning.DeletionPlan, now: datetime | None = None) -> bool:
    """Deleting an item that is not stale takes a second, explicit tick."""
    return any(guard.active for guard in guard_rails(plan, now).values())


def flags(plan: planning.DeletionPlan, now: datetime | None = None) -> dict[str, dict]:
    """Each planned item's guard rails as the API's dry run carries them, by digest: where
    live reports say it runs (`in_use`), whether it is `active` (not stale), tagged
    `latest`, `signed` (a signature of it goes with it) or itself a `signature`."""
    guards = guard_rails(plan, now)
    signed = _signed({item.manifest_id for item in plan.delete})
    found = {}
    for item in plan.delete:
        guard = guards.get(item.digest, Guards())
        found[item.digest] = {
            "in_use": item.in_use.as_list() if item.in_use else [],
            "active": guard.active,
            "latest": guard.latest,
            "signed": item.manifest_id in signed,
            "signature": guard.signature,
        }
    return found


def _signed(manifest_ids: set[int]) -> set[int]:
    """The manifests among these that a signature refers to (cosign's `.sig`, or a
    signature artifact type): two queries."""
    if not manifest_ids:
        return set()
    ids = planning.as_parameter(manifest_ids)
    by_tag = Tag.objects.filter(manifest__subject_id__in=ids, name__endswith=".sig")
    by_type = Manifest.objects.filter(
        subject_id__in=ids, kind=Manifest.Kind.ARTIFACT, artifact_type__icontains="signature"
    )
    return set(by_tag.values_list("manifest__subject_id", flat=True)) | set(
        by_type.values_list("subject_id", flat=True)
    )
