"""The dry run of a retention policy (SPEC §8): its candidates, which rule keeps what, and
the plan of each covered repository through the deletion planner.

A candidate a live in-use report names (SPEC §13) is never selected, as if an `always` rule
kept it, and the dry run says so; and while a required in-use source is out of date, the
dry run says that a run would delete nothing on the registries it covers (`blocked`)."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from django.db.models import Q
from django.utils import timezone

from hubimages.deletion import planning
from hubimages.inuse import matching
from hubimages.inuse.matching import Blocking, InUse
from hubimages.inventory import status
from hubimages.lib.formatting import ago, iso
from hubimages.models import Manifest, PushedFrom, Repository, Tag
from hubimages.retention.policies import (
    ALWAYS,
    LATEST_PULLED,
    PUSHED_WITHIN,
    TIMED,
    PatternClock,
    Policy,
    Rule,
)
from registry.media import referrer_tag_subject

# Deleted items pulled this recently are marked "recently pulled" in the dry run.
RECENTLY_PULLED_WITHIN = timedelta(days=30)


# -- evaluation ----------------------------------------------------------------------------


class Candidate(NamedTuple):
    """A top-level item; `tags` leaves out the referrer-schema tags, which never match.
    (A named tuple: a run makes one per top-level item, tens of thousands.)"""

    pk: int
    digest: str
    pushed_at: datetime
    last_pulled_at: datetime | None
    tags: tuple[str, ...]
    # How `pushed_at` was found (`PushedFrom`): first seen dates nothing, yet stays its
    # Last pushed, so age rules count from when hubimages first saw it (SPEC §2).
    pushed_at_source: str = PushedFrom.EVENT

    def unknown(self, now: datetime) -> bool:
        """Unknown (SPEC §2): undated, and watched for less than STALE_AFTER_MONTHS."""
        found = status.status_from(self.pushed_at, self.pushed_at_source, self.last_pulled_at, now)
        return found == status.UNKNOWN


@dataclass(frozen=True)
class KeptCandidate:
    digest: str
    tags: tuple[str, ...]
    reasons: tuple[str, ...]
    in_use: InUse | None = None

    @property
    def reason(self) -> str:
        """In words: 'kept by rule 1: always; rule 3: pulled within 30 days', after what
        the live in-use reports say: 'in use by prod: prod/shop/pod/api-7d9f'."""
        rules = "kept by " + "; ".join(self.reasons) if self.reasons else ""
        return "; ".join(filter(None, (self.in_use.reason() if self.in_use else "", rules)))


@dataclass(frozen=True)
class RepositoryDryRun:
    repository: Repository
    candidates: int
    selected: tuple[str, ...]
    kept: tuple[KeptCandidate, ...]
    plan: planning.DeletionPlan
    recently_pulled: Mapping[str, str]  # deleted digest -> "recently pulled: 2 days ago"
    unknown: int = 0  # candidates dated only by when hubimages first saw them (Unknown)

    @property
    def name(self) -> str:
        return self.repository.name

    @property
    def delete_fraction(self) -> float:
        return len(self.selected) / self.candidates if self.candidates else 0.0

    def over(self, max_delete_fraction: float) -> bool:
        """Would delete more than that share of the top-level items: a scheduled run stops."""
        return self.delete_fraction > max_delete_fraction

    @property
    def registry(self) -> str:
        return self.repository.registry.name

    def as_dict(self) -> dict[str, Any]:
        return {
            "registry": self.registry,
            "repository": self.name,
            "selected": list(self.selected),
            "plan": self.plan.as_dict(),
        }


def blocked_message(blocked: Iterable[Blocking]) -> str:
    """`the required in-use source prod last reported …: what it runs now is unknown.
    Retention deletes nothing on registry default until it reports again.`, or "" for
    no source."""
    blocked = list(blocked)
    if not blocked:
        return ""
    registries = sorted({name for source in blocked for name in source.registries})
    which = "registry" if len(registries) == 1 else "registries"
    again = "it reports" if len(blocked) == 1 else "they report"
    return (
        "; ".join(source.message() for source in blocked)
        + f". Retention deletes nothing on {which} {', '.join(registries)} until {again} "
        "again."
    )


@dataclass(frozen=True)
class DryRun:
    policy: Policy
    now: datetime
    repositories: tuple[RepositoryDryRun, ...]
    reclaimable_bytes: int
    fingerprint: str
    # Required in-use sources out of date on covered registries: a run deletes nothing there.
    blocked: tuple[Blocking, ...] = ()

    @property
    def blocked_registries(self) -> tuple[str, ...]:
        """The covered registries a run deletes nothing on now (SPEC §13), by name."""
        return tuple(sorted({name for source in self.blocked for name in source.registries}))

    @property
    def blocks_everything(self) -> bool:
        """Whether every covered repository is on such a registry: a run deletes nothing."""
        return bool(self.blocked) and all(
            r.registry in self.blocked_registries for r in self.repositories
        )

    @property
    def blocked_message(self) -> str:
        """Why a run would delete nothing now on some registries, or "": `the required
        in-use source prod last reported …. Retention deletes nothing on registry default
        until it reports again.`"""
        return blocked_message(self.blocked)

    @property
    def manifest_count(self) -> int:
        return sum(r.plan.manifest_count for r in self.repositories)

    @property
    def tag_count(self) -> int:
        return sum(r.plan.tag_count for r in self.repositories)

    @property
    def selected_count(self) -> int:
        return sum(len(r.selected) for r in self.repositories)

    @property
    def unknown_count(self) -> int:
        """Candidates, kept or selected, that are Unknown: no push or pull seen, no
        plausible build time; their Last pushed is when hubimages first saw them."""
        return sum(r.unknown for r in self.repositories)

    @property
    def braked(self) -> list[RepositoryDryRun]:
        """Repositories where a scheduled run would stop (the max_delete_fraction brake)."""
        return [r for r in self.repositories if r.over(self.policy.max_delete_fraction)]

    def as_dict(self) -> dict[str, Any]:
        """SPEC §8's `apply_retention --dry-run --json` object, each repository with its
        registry (SPEC §11)."""
        return {
            "policy": self.policy.name,
            "now": iso(self.now),
            "repositories": [r.as_dict() for r in self.repositories],
            "reclaimable_bytes": self.reclaimable_bytes,
        }


def start_now() -> datetime:
    """A run's `now`, fixed once at its start; whole seconds, so it reads and round-trips
    (a preview's form carries it to Run now) without loss."""
    return timezone.now().replace(microsecond=0)


def covered_repositories(
    policy: Policy,
    *,
    registry: str | None = None,
    only: Collection[str] | None = None,
    within: Q | None = None,
    clock: PatternClock | None = None,
) -> list[Repository]:
    """The repositories the policy covers, by registry and name; `registry` and `only` (names
    in that registry) narrow them further, and so does `within` (a filter on repositories:
    those a user may see)."""
    rows = Repository.objects.select_related("registry").order_by("registry__name", "name")
    if within is not None:
        rows = rows.filter(within)
    if registry is not None:
        rows = rows.filter(registry__name=registry)
    if only is not None:
        rows = rows.filter(name__in=list(only))
    clock = clock or PatternClock()
    return [row for row in rows if policy.covers(row.name, row.registry.name, clock)]


def dry_run(
    policy: Policy,
    *,
    now: datetime | None = None,
    registry: str | None = None,
    repositories: Collection[str] | None = None,
    within: Q | None = None,
) -> DryRun:
    """What a run of `policy` would delete and keep, as of `now`: reads, never writes.
    `within` leaves out the repositories a user may not see (their dry run: its totals
    and fingerprint are those of what it shows).

    A fixed number of queries whatever the number of repositories and items: two read
    every covered repository's candidates and tags, the rules run in Python, and
    `deletion.plan_deletions` plans every repository's selection at once. Its patterns'
    matching is bounded (`PatternClock`): a catastrophic one raises `PatternTooSlow`
    within seconds, in a web request as in a worker."""
    now = now or start_now()
    clock = PatternClock()
    repos = covered_repositories(
        policy, registry=registry, only=repositories, within=within, clock=clock
    )
    candidates = _candidates(repos)
    running = matching.of_manifests([c.pk for items in candidates.values() for c in items])
    evaluated = []
    for repository in repos:
        items = candidates.get(repository.pk, [])
        kept = evaluate(policy, items, now=now, clock=clock)
        for item in items:
            if item.pk in running:
                kept.setdefault(item.pk, [])
        evaluated.append((repository, items, kept))
    plans = planning.plan_deletions(
        {
            repository: [c.digest for c in _oldest_first(items) if c.pk not in kept]
            for repository, items, kept in evaluated
        }
    )
    results = [
        _repository_dry_run(repository, items, kept, plans.plans[repository.pk], now, running)
        for repository, items, kept in evaluated
    ]
    total = plans.reclaimable_bytes
    blocked = matching.blocking({repository.registry.name for repository in repos})
    return DryRun(
        policy,
        now,
        tuple(results),
        total,
        dry_run_fingerprint(policy, now, results, total),
        tuple(blocked),
    )


def _oldest_first(items: list[Candidate]) -> list[Candidate]:
    return sorted(items, key=lambda c: (c.pushed_at, c.digest))


def _repository_dry_run(
    repository: Repository,
    items: list[Candidate],
    kept: dict[int, list[str]],
    plan: planning.DeletionPlan,
    now: datetime,
    running: Mapping[int, InUse],
) -> RepositoryDryRun:
    newest_first = sorted(items, key=lambda c: c.digest)
    newest_first.sort(key=lambda c: c.pushed_at, reverse=True)
    recently_pulled = {
        item.digest: f"recently pulled: {ago(item.last_pulled_at, now)}"
        for item in plan.delete
        if item.last_pulled_at and item.last_pulled_at >= now - RECENTLY_PULLED_WITHIN
    }
    return RepositoryDryRun(
        repository=repository,
        candidates=len(items),
        selected=plan.selected,
        kept=tuple(
            KeptCandidate(c.digest, c.tags, tuple(kept[c.pk]), running.get(c.pk))
            for c in newest_first
            if c.pk in kept
        ),
        plan=plan,
        recently_pulled=recently_pulled,
        unknown=sum(1 for c in items if c.unknown(now)),
    )


def _candidates(repositories: list[Repository]) -> dict[int, list[Candidate]]:
    """Top-level items of these repositories, by repository id, with their matchable tags."""
    ids = [r.pk for r in repositories]
    tags: dict[int, list[str]] = defaultdict(list)
    for manifest_id, name in (
        Tag.objects.filter(repository_id__in=ids, manifest__is_top_level=True)
        .order_by("name")
        .values_list("manifest_id", "name")
    ):
        if referrer_tag_subject(name) is None:
            tags[manifest_id].append(name)
    by_repository: dict[int, list[Candidate]] = defaultdict(list)
    rows = Manifest.objects.filter(repository_id__in=ids, is_top_level=True).values_list(
        "pk",
        "repository_id",
        "digest",
        "pushed_at",
        "last_pulled_at",
        "pushed_at_source",
        "pushed_at_estimated",
    )
    for pk, repository_id, digest, pushed_at, pulled_at, source, estimated in rows:
        by_repository[repository_id].append(
            Candidate(
                pk,
                digest,
                pushed_at,
                pulled_at,
                tuple(tags.get(pk, ())),
                source if estimated else PushedFrom.EVENT,
            )
        )
    return by_repository


def evaluate(
    policy: Policy, items: list[Candidate], *, now: datetime, clock: PatternClock | None = None
) -> dict[int, list[str]]:
    """Which candidates the rules keep (a union), each with the rules that keep it:
    id -> ["rule 2: latest 3 of group main", …]. Whatever is not in it is selected.
    Raises `PatternTooSlow` (naming the rule's field) when a pattern exceeds `clock`."""
    clock = clock or PatternClock()
    kept: dict[int, list[str]] = defaultdict(list)
    for number, rule in enumerate(policy.rules, start=1):
        at = f"rules[{number - 1}]"
        for pk, why in _keeps(rule, _scope(rule, items, clock, at), now, clock, at):
            kept[pk].append(f"rule {number}: {why}")
    return dict(kept)


def _scope(
    rule: Rule, items: list[Candidate], clock: PatternClock, at: str
) -> list[tuple[Candidate, tuple[str, ...]]]:
    """The rule's scope, each item with its in-scope tags (those matching `tags`)."""
    include, exclude, _ = rule.matchers
    untagged = rule.includes_untagged
    scope = []
    for item in items:
        tags = item.tags
        if not tags:
            if untagged:
                scope.append((item, ()))
            continue
        matching = ()
        if include:
            matching = tuple(t for t in tags if clock.match(include, "match", t, f"{at}.tags"))
        if matching and not (
            exclude and any(clock.match(exclude, "match", t, f"{at}.exclude_tags") for t in tags)
        ):
            scope.append((item, matching))
    return scope


def _keeps(
    rule: Rule,
    scope: list[tuple[Candidate, tuple[str, ...]]],
    now: datetime,
    clock: PatternClock,
    at: str,
) -> Iterable[tuple[int, str]]:
    if rule.keep == ALWAYS:
        return ((item.pk, "always") for item, _ in scope)
    if rule.keep in TIMED:
        try:
            cutoff = now - timedelta(days=rule.days or 0)
        except OverflowError:  # the window starts before datetimes do: every date is in it
            cutoff = datetime.min.replace(tzinfo=UTC)
        pushed = rule.keep == PUSHED_WITHIN
        why = f"{'pushed' if pushed else 'pulled'} within {rule.days} days"
        return (
            (item.pk, why)
            for item, _ in scope
            if (when := item.pushed_at if pushed else item.last_pulled_at) and when >= cutoff
        )
    return _latest(rule, scope, clock, f"{at}.group_by")


def _latest(
    rule: Rule, scope: list[tuple[Candidate, tuple[str, ...]]], clock: PatternClock, at: str
) -> list[tuple[int, str]]:
    """The newest `count` of each group; ties go to the smaller digest."""
    pulled = rule.keep == LATEST_PULLED
    groups: dict[str, list[Candidate]] = defaultdict(list)
    regex = rule.matchers[2]
    for item, tags in scope:
        if pulled and item.last_pulled_at is None:
            continue  # never pulled: not kept by "latest pulled"
        for key in _group_keys(regex, tags, clock, at):
            groups[key].append(item)
    kept = []
    for key, members in groups.items():
        members.sort(key=lambda c: c.digest)
        members.sort(key=lambda c: c.last_pulled_at if pulled else c.pushed_at, reverse=True)
        why = f"latest {rule.count}{' pulled' if pulled else ''}"
        if regex is not None:
            why += f" of group {key}" if key else " of the ungrouped items"
        kept += [(item.pk, why) for item in members[: rule.count]]
    return kept


def _group_keys(regex, tags: tuple[str, ...], clock: PatternClock, at: str) -> set[str]:
    """Its first capture group (else the whole match) in each in-scope tag; tags it does
    not match, untagged items, and a first group that took no part in the match all share
    the group ""."""
    if regex is None or not tags:
        return {""}
    keys = set()
    for tag in tags:
        match = clock.find(regex, "search", tag, at)
        if match is None:
            keys.add("")
        else:
            keys.add((match.group(1) if regex.groups else match.group(0)) or "")
    return keys


def dry_run_fingerprint(
    policy: Policy, now: datetime, results: list[RepositoryDryRun], total: int
) -> str:
    """The whole run: the policy as written, its `now`, and each repository's selection
    and plan fingerprint (which covers what the cascade adds and keeps, tags and bytes)."""
    document = {
        "policy": policy.effective_json(),
        "now": iso(now),
        "repositories": [
            [r.registry, r.name, list(r.selected), r.plan.fingerprint] for r in results
        ],
        "bytes": total,
    }
    encoded = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
    return hashlib.sha256(encoded).hexdigest()
