"""What the delete preview shows beside the plan (SPEC §4): what each item frees on its own,
what the rest of it is shared with, and the guard rails that ask for a second look.

"Storage you will reclaim" alone confused people: two rows of 3.0 MB reclaim 310 kB because
most of their layers are used elsewhere. Each item therefore gets the bytes only it holds,
the bytes it shares with other items of the same deletion (freed together, counted once in
the total) and the bytes a manifest that stays still uses (never freed), with a few of
those manifests named (by tag, or an index's tag and the platform). Read-only, four
queries whatever the plan's size.

Size and Frees count different things on purpose. Size is what the item weighs as the list
shows it (SPEC §2: config and layers; an index, the distinct blobs of its images and
attestations). Frees is what the collector frees (SPEC §4), so it also counts the
manifest's own bytes, which is why an attestation of 497 B frees 1.1 kB. Each item's
`manifest_bytes` says how much of its Frees that is: with nothing shared, an image's or an
attestation's Frees is exactly its Size plus its manifest bytes.

The page groups the items under what the user selected: each group's figures
(`GroupSharing`) split the total the same way, a blob counted under one group only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Count, Min, Q
from django.utils import timezone

from hubimages.deletion import planning
from hubimages.inventory import status
from hubimages.lib.formatting import short_digest
from hubimages.models import IndexEntry, Manifest, ManifestBlob, Tag, platform_label
from registry.media import referrer_tag_subject

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
    manifest_bytes: int = 0  # of `frees`, the manifest's own bytes (not in its Size)

    @property
    def frees_content(self) -> int:
        """Of `frees`, the config and layers: what its Size counts."""
        return self.frees - self.manifest_bytes


@dataclass(frozen=True)
class GroupSharing:
    """What a selected item frees with everything that goes with it (its images,
    attestations, signatures). `frees`: blobs only this group's items use, `manifest_bytes`
    of them the manifests' own; `shared_staying`: the distinct bytes of its items that a
    manifest that stays uses (not freed); `shared_going`: those it shares only with other
    groups of this deletion (freed once, counted under none)."""

    frees: int = 0
    manifest_bytes: int = 0
    shared_staying: int = 0
    shared_going: int = 0

    @property
    def frees_content(self) -> int:
        """Of `frees`, the configs and layers."""
        return self.frees - self.manifest_bytes


@dataclass(frozen=True)
class PlanSharing:
    items: dict[str, ItemSharing]  # by digest
    frees_alone: int  # the sum of the items' `frees`
    shared_among_items: int  # blobs that only several items of the deletion use
    groups: dict[str, GroupSharing] = field(default_factory=dict)  # by selected digest
    shared_among_groups: int = 0  # blobs that only items of several groups use
    kept_shared: int = 0  # the distinct bytes of the items that a manifest staying uses

    @property
    def total(self) -> int:
        """The plan's reclaimable bytes, built up from the parts shown."""
        return self.frees_alone + self.shared_among_items

    @property
    def groups_frees(self) -> int:
        """The sum of the groups' `frees`: with `shared_among_groups`, the total again."""
        return sum(group.frees for group in self.groups.values())


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
    manifest_blobs: set[int] = set()  # the blobs that are a manifest's own bytes
    for manifest_id, blob_id, size, role in ManifestBlob.objects.filter(
        manifest_id__in=planning.as_parameter(ids)
    ).values_list("manifest_id", "blob_id", "blob__size", "role"):
        users[blob_id].add(manifest_id)
        blobs_of[manifest_id].add(blob_id)
        sizes[blob_id] = size
        if role == ManifestBlob.Role.MANIFEST:
            manifest_blobs.add(blob_id)
    outside = _users_outside(list(sizes), list(ids))
    names = _names(plan.repository, {sample for _, sample in outside.values()}, visible)
    items = {
        digest: _item_sharing(blobs_of[pk], users, sizes, outside, names, manifest_blobs)
        for pk, digest in ids.items()
    }
    shared_among = sum(
        size for blob, size in sizes.items() if blob not in outside and len(users[blob]) > 1
    )
    group_of = {item.manifest_id: item.group for item in plan.delete}
    groups, among_groups = _group_sharing(users, sizes, outside, manifest_blobs, group_of)
    return PlanSharing(
        items,
        sum(item.frees for item in items.values()),
        shared_among,
        groups,
        among_groups,
        sum(sizes[blob] for blob in outside),
    )


def _group_sharing(
    users: dict[int, set[int]],
    sizes: dict[int, int],
    outside: dict[int, tuple[int, int]],
    manifest_blobs: set[int],
    group_of: dict[int, str],
) -> tuple[dict[str, GroupSharing], int]:
    """Each group's figures, and the bytes only items of several groups use: every blob
    the plan frees is in exactly one of them, so they add up to the total."""
    figures: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    among = 0
    for blob, size in sizes.items():
        groups = {group_of[pk] for pk in users[blob]}
        for group in groups:
            if blob in outside:
                figures[group]["shared_staying"] += size
            elif len(groups) > 1:
                figures[group]["shared_going"] += size
            else:
                figures[group]["frees"] += size
                if blob in manifest_blobs:
                    figures[group]["manifest_bytes"] += size
        if blob not in outside and len(groups) > 1:
            among += size
    return {group: GroupSharing(**parts) for group, parts in figures.items()}, among


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
    manifest_blobs: set[int],
) -> ItemSharing:
    frees = going = staying = own_manifest = 0
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
            if blob in manifest_blobs:
                own_manifest += sizes[blob]
    shown = tuple(sharers[:NAMES_SHOWN])
    # Distinct sharers number at least the users of the most shared blob.
    more = max(most_users, len(sharers)) - len(shown)
    return ItemSharing(frees, going, staying, shown, more, own_manifest)


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
    # Of those, Unknown: no push, pull or plausible build time seen (SPEC §2).
    undated: bool = False

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
        state = states.get(item.manifest_id, status.ACTIVE)
        counted = item.kind != Manifest.Kind.ATTESTATION
        found = Guards(
            pulled_at=pulled if pulled and pulled >= recent_since else None,
            latest="latest" in item.tags,
            signature=is_signature(item),
            active=counted and state != status.STALE,
            undated=counted and state == status.UNKNOWN,
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


# -- in plain words ---------------------------------------------------------------------------


def cascade_words(items: list[planning.PlannedItem]) -> str:
    """What goes with a selected item, as a person says it: "3 images (linux/amd64,
    linux/arm64/v8, linux/arm/v7), 1 attestation, 1 signature". `items` are the ones that
    go with it (not the selected item itself)."""
    platforms: list[str] = []
    counts: dict[str, int] = defaultdict(int)
    for item in items:
        if item.kind == Manifest.Kind.IMAGE:
            platforms.append(item.platform)
        counts[plain_kind(item)] += 1
    words = []
    for one, many in _KINDS:
        count = counts[one]
        if not count:
            continue
        text = f"{count} {one if count == 1 else many}"
        if one == "image" and any(platforms):
            text += f" ({', '.join(sorted(p or 'no platform' for p in platforms))})"
        words.append(text)
    return ", ".join(words)


_KINDS = (
    ("image", "images"),
    ("image index", "image indexes"),
    ("attestation", "attestations"),
    ("signature", "signatures"),
    ("SBOM", "SBOMs"),
    ("list of linked artifacts", "lists of linked artifacts"),
    ("linked artifact", "linked artifacts"),
)


def plain_kind(item: planning.PlannedItem) -> str:
    """An item's kind in the words of `_KINDS`: a referrer by what it is (a signature, an
    SBOM), as people call it."""
    if item.kind == Manifest.Kind.IMAGE:
        return "image"
    if item.kind == Manifest.Kind.INDEX:
        return "image index"
    if item.kind == Manifest.Kind.ATTESTATION:
        return "attestation"
    if is_signature(item):
        return "signature"
    kind = item.artifact_type.lower()
    if any(t.endswith(".sbom") for t in item.tags) or any(
        word in kind for word in ("sbom", "spdx", "cyclonedx")
    ):
        return "SBOM"
    if any(t.endswith(".att") for t in item.tags) or "in-toto" in kind or "attestation" in kind:
        return "attestation"
    if item.kind == Manifest.Kind.ARTIFACT and any(
        referrer_tag_subject(t) and "." not in t for t in item.tags
    ):
        return "list of linked artifacts"  # the OCI referrers fallback index, `sha256-<hex>`
    return "linked artifact"


def plain_reasons(items: list[planning.PlannedItem]) -> dict[str, str]:
    """Why each item of a group goes, by digest, naming what it belongs to as the page
    does ("signature of the linux/amd64 image", "attestation of the selected image index,
    which nothing that stays uses") rather than by the planner's digests."""
    names = {}
    for item in items:
        kind = plain_kind(item)
        if item.because == planning.SELECTED:
            names[short_digest(item.digest)] = f"the selected {kind}"
        elif item.platform and item.kind != Manifest.Kind.ATTESTATION:
            names[short_digest(item.digest)] = f"the {item.platform} {kind}"
    reasons = {}
    for item in items:
        because = item.because
        for prefix, words in (
            (planning.REFERRER_OF, "{kind} of {name}"),
            (planning.ONLY_IN_INDEX, "{kind} of {name}, which nothing that stays uses"),
        ):
            if because.startswith(prefix):
                target = because.removeprefix(prefix)
                index = prefix == planning.ONLY_IN_INDEX
                name = names.get(target, f"index {target}" if index else target)
                because = words.format(kind=plain_kind(item), name=name)
        reasons[item.digest] = because
    return reasons
