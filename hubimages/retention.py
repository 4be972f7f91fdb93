"""Retention policies (SPEC §8): keep-only rules whose every run goes through the deletion
plan of §4.

Three incidents recur in other registries' trackers, and each has its guard here:
- cleanups that treat the untagged images inside a multi-arch index as garbage: the
  candidates are the top-level items only (`Manifest.is_top_level`); what an index holds,
  attestations and referrers go or stay with it through `deletion.plan_deletion`;
- "dry runs" that deleted: `dry_run` only reads; `run` deletes exactly the plan a dry run
  showed (its fingerprint) or nothing;
- "keep the last N of each branch" needing one rule per prefix: `group_by`.

Everything here is a function over the ORM, so a view, a command, a test and (once the
background tasks land) a task call it alike. Nothing keeps anything implicitly: not even
`latest`. Whatever a run keeps, a rule says so, and the dry run names it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any, NamedTuple

from django.db import transaction
from django.db.models import OuterRef, Subquery
from django.utils import timezone

from hubimages import deletion
from hubimages.formatting import ago, human_size, iso
from hubimages.locks import RepositoryBusy, repository_lock
from hubimages.models import (
    Manifest,
    Repository,
    RetentionPolicy,
    RetentionRun,
    Tag,
)
from hubimages.sync import sync_repository
from registry.client import RegistryClient
from registry.media import referrer_tag_subject

ALWAYS = "always"
LATEST_PUSHED = "latest_pushed"
LATEST_PULLED = "latest_pulled"
PUSHED_WITHIN = "pushed_within"
PULLED_WITHIN = "pulled_within"
KEEP_KINDS = (ALWAYS, LATEST_PUSHED, LATEST_PULLED, PUSHED_WITHIN, PULLED_WITHIN)
COUNTED = (LATEST_PUSHED, LATEST_PULLED)
TIMED = (PUSHED_WITHIN, PULLED_WITHIN)

POLICY_FIELDS = ("name", "repositories", "rules", "max_delete_fraction", "schedule", "enabled")
RULE_FIELDS = ("keep", "count", "days", "tags", "exclude_tags", "untagged", "group_by")
SCHEDULE_FIELDS = ("every_hours",)
DEFAULT_REPOSITORIES = ("**",)
DEFAULT_TAGS = ("*",)
DEFAULT_MAX_DELETE_FRACTION = 0.5
MAX_SCHEDULE_HOURS = 24 * 366
MAX_IMPORT_BYTES = 100_000
MAX_NUMBER = 1_000_000  # counts and days beyond this are typing mistakes
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
REPOSITORY_PATTERN_RE = re.compile(r"^!?[a-z0-9._/*?-]+$")
# Deleted items pulled this recently are marked "in use" in the dry run.
IN_USE_WITHIN = timedelta(days=30)
# A scheduled run waits this long for a repository a sync or a deletion holds.
SCHEDULED_LOCK_WAIT = 30.0


# -- the policy ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldError:
    """One problem in a policy, at a JSON path such as `rules[2].count`."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class InvalidPolicy(ValueError):
    """A policy's JSON has problems; `errors` names each with its field."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(error) for error in errors))


def _shell_patterns(patterns: Iterable[str]) -> re.Pattern | None:
    """One regular expression for shell-style patterns, each matching a whole tag."""
    parts = [fnmatch.translate(pattern) for pattern in patterns]
    return re.compile("|".join(parts)) if parts else None


@dataclass(frozen=True)
class Rule:
    """A keep rule. Optional fields stay None when the JSON left them out, so a policy
    exports as it was written; the properties give the effective values."""

    keep: str
    count: int | None = None
    days: int | None = None
    tags: tuple[str, ...] | None = None
    exclude_tags: tuple[str, ...] | None = None
    untagged: bool | None = None
    group_by: str | None = None

    @property
    def tag_patterns(self) -> tuple[str, ...]:
        return DEFAULT_TAGS if self.tags is None else self.tags

    @property
    def includes_untagged(self) -> bool:
        return bool(self.untagged)

    @cached_property
    def matchers(self) -> tuple[re.Pattern | None, re.Pattern | None, re.Pattern | None]:
        """Compiled once per rule: its tags, its exclude_tags and its group_by."""
        return (
            _shell_patterns(self.tag_patterns),
            _shell_patterns(self.exclude_tags or ()),
            re.compile(self.group_by) if self.group_by else None,
        )

    def as_json(self) -> dict[str, Any]:
        """The rule as written, in a fixed key order (PostgreSQL's jsonb keeps none)."""
        values = {
            "keep": self.keep,
            "count": self.count,
            "days": self.days,
            "tags": list(self.tags) if self.tags is not None else None,
            "exclude_tags": list(self.exclude_tags) if self.exclude_tags is not None else None,
            "untagged": self.untagged,
            "group_by": self.group_by,
        }
        return {key: value for key, value in values.items() if value is not None}

    def effective_json(self) -> dict[str, Any]:
        """Every field with its effective value: two rules that keep alike compare equal."""
        return {
            "keep": self.keep,
            "count": self.count,
            "days": self.days,
            "tags": list(self.tag_patterns),
            "exclude_tags": list(self.exclude_tags or ()),
            "untagged": self.includes_untagged,
            "group_by": self.group_by,
        }

    def describe(self) -> str:
        """What the rule keeps, in words: "latest 3 of each group of ^(main|pr-[0-9]+)-"."""
        scope = _describe_scope(self)
        if self.keep == ALWAYS:
            what = "always"
        elif self.keep in COUNTED:
            what = f"latest {self.count}{' pulled' if self.keep == LATEST_PULLED else ''}"
            if self.group_by:
                what += f" of each group of {self.group_by}"
        else:
            what = f"{'pushed' if self.keep == PUSHED_WITHIN else 'pulled'} within {self.days} days"
        return f"keep {what} — {scope}"


def _describe_scope(rule: Rule) -> str:
    parts = []
    if rule.tag_patterns:
        parts.append("tags " + ", ".join(rule.tag_patterns))
    if rule.exclude_tags:
        parts.append("except " + ", ".join(rule.exclude_tags))
    if rule.includes_untagged:
        parts.append("untagged items")
    return "; ".join(parts) if parts else "nothing"


@dataclass(frozen=True)
class Policy:
    """A checked policy (build one with `parse_policy`): what the engine runs."""

    name: str
    rules: tuple[Rule, ...]
    repositories: tuple[str, ...] = DEFAULT_REPOSITORIES
    max_delete_fraction: float = DEFAULT_MAX_DELETE_FRACTION
    schedule_hours: int | None = None
    enabled: bool = True

    def as_json(self) -> dict[str, Any]:
        """SPEC §8's shape, every field written out: what export prints and import reads."""
        return {
            "name": self.name,
            "repositories": list(self.repositories),
            "rules": [rule.as_json() for rule in self.rules],
            "max_delete_fraction": self.max_delete_fraction,
            "schedule": {"every_hours": self.schedule_hours} if self.schedule_hours else None,
            "enabled": self.enabled,
        }

    def effective_json(self) -> dict[str, Any]:
        """`as_json` with every rule's defaults filled in: equal for policies that behave
        alike, however their JSON was written (the page's form writes every field)."""
        return {**self.as_json(), "rules": [rule.effective_json() for rule in self.rules]}

    def covers(self, repository: str) -> bool:
        """Some pattern includes the name and none excludes it."""
        including, excluding = self._globs
        return bool(including.fullmatch(repository)) and not (
            excluding and excluding.fullmatch(repository)
        )

    @cached_property
    def _globs(self) -> tuple[re.Pattern, re.Pattern | None]:
        def joined(patterns: list[str]) -> re.Pattern | None:
            if not patterns:
                return None
            return re.compile("|".join(f"(?:{repository_glob(p).pattern})" for p in patterns))

        including = joined([p for p in self.repositories if not p.startswith("!")])
        excluding = joined([p[1:] for p in self.repositories if p.startswith("!")])
        return including or re.compile(r"(?!)"), excluding


def repository_glob(pattern: str) -> re.Pattern:
    """`*` any characters but `/`, `**` any characters, `?` one character but `/`."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        char = pattern[i]
        out.append("[^/]*" if char == "*" else "[^/]" if char == "?" else re.escape(char))
        i += 1
    return re.compile("".join(out))


def validate_policy(data: Any) -> list[FieldError]:
    """Every problem in `data` (a decoded JSON object), one message per field; [] if none."""
    return _parse(data)[1]


def parse_policy(data: Any) -> Policy:
    """The policy `data` describes; raises InvalidPolicy with every problem found."""
    policy, errors = _parse(data)
    if errors or policy is None:
        raise InvalidPolicy(errors)
    return policy


def parse_policy_json(text: str) -> Policy:
    """`parse_policy` of JSON text, with the decoder's own message for broken JSON."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidPolicy([FieldError("", f"not valid JSON: {error}")]) from None
    return parse_policy(data)


def _parse(data: Any) -> tuple[Policy | None, list[FieldError]]:
    if not isinstance(data, dict):
        return None, [FieldError("", 'a policy is a JSON object: {"name": …, "rules": […]}')]
    errors = [
        FieldError(key, f"unknown field; a policy has {', '.join(POLICY_FIELDS)}")
        for key in data
        if key not in POLICY_FIELDS
    ]
    name = data.get("name")
    if name is None:
        errors.append(FieldError("name", "required"))
    elif not isinstance(name, str) or not NAME_RE.match(name):
        errors.append(
            FieldError(
                "name",
                "use 1 to 100 letters, digits, '.', '_' and '-', starting with a letter or digit",
            )
        )
    repositories = _parse_repositories(data.get("repositories", list(DEFAULT_REPOSITORIES)))
    errors += repositories[1]
    rules = _parse_rules(data.get("rules"))
    errors += rules[1]
    fraction = data.get("max_delete_fraction", DEFAULT_MAX_DELETE_FRACTION)
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
        errors.append(
            FieldError("max_delete_fraction", "a number above 0 and at most 1, such as 0.5")
        )
    schedule = _parse_schedule(data.get("schedule"))
    errors += schedule[1]
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        errors.append(FieldError("enabled", "true or false"))
    if errors:
        return None, errors
    return (
        Policy(
            name=name,
            rules=rules[0],
            repositories=repositories[0],
            max_delete_fraction=float(fraction),
            schedule_hours=schedule[0],
            enabled=enabled,
        ),
        [],
    )


def _parse_repositories(value: Any) -> tuple[tuple[str, ...], list[FieldError]]:
    if not isinstance(value, list) or not value:
        return (), [FieldError("repositories", 'a list of patterns, such as ["team/**"]')]
    errors = []
    for i, pattern in enumerate(value):
        if not isinstance(pattern, str) or not REPOSITORY_PATTERN_RE.match(pattern):
            errors.append(
                FieldError(
                    f"repositories[{i}]",
                    f"{json.dumps(pattern)} cannot match a repository name: use lowercase "
                    "letters, digits, '.', '_', '-', '/', the wildcards *, ** and ?, and a "
                    "leading ! to exclude",
                )
            )
    if not errors and all(pattern.startswith("!") for pattern in value):
        errors.append(
            FieldError("repositories", "only exclusions cover nothing: add a pattern such as **")
        )
    return tuple(value), errors


def _parse_schedule(value: Any) -> tuple[int | None, list[FieldError]]:
    if value is None:
        return None, []
    message = f'null (no schedule) or {{"every_hours": N}}, N from 1 to {MAX_SCHEDULE_HOURS}'
    if not isinstance(value, dict):
        return None, [FieldError("schedule", message)]
    errors = [
        FieldError(f"schedule.{key}", "unknown field; a schedule has every_hours")
        for key in value
        if key not in SCHEDULE_FIELDS
    ]
    hours = value.get("every_hours")
    if not _is_int(hours) or not 1 <= hours <= MAX_SCHEDULE_HOURS:
        errors.append(FieldError("schedule.every_hours", message))
    return (hours if not errors else None), errors


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_rules(value: Any) -> tuple[tuple[Rule, ...], list[FieldError]]:
    if not isinstance(value, list):
        return (), [FieldError("rules", "required: a list of keep rules")]
    if not value:
        return (), [
            FieldError(
                "rules",
                "add at least one rule: with none, the policy would delete everything it covers",
            )
        ]
    rules, errors = [], []
    for i, raw in enumerate(value):
        rule, problems = _parse_rule(raw, f"rules[{i}]")
        errors += problems
        if rule:
            rules.append(rule)
    return tuple(rules), errors


def _parse_rule(raw: Any, at: str) -> tuple[Rule | None, list[FieldError]]:
    if not isinstance(raw, dict):
        return None, [FieldError(at, 'a rule is an object such as {"keep": "always"}')]
    errors = [
        FieldError(f"{at}.{key}", f"unknown field; a rule has {', '.join(RULE_FIELDS)}")
        for key in raw
        if key not in RULE_FIELDS
    ]
    keep = raw.get("keep")
    if keep is None:
        errors.append(FieldError(f"{at}.keep", f"required: one of {', '.join(KEEP_KINDS)}"))
    elif keep not in KEEP_KINDS:
        errors.append(
            FieldError(
                f"{at}.keep",
                f"unknown keep kind {json.dumps(keep)}; use one of {', '.join(KEEP_KINDS)}",
            )
        )
    if keep in KEEP_KINDS:  # what goes with an unknown kind cannot be told
        errors += _check_number(
            raw, "count", keep in COUNTED, at, "latest_pushed and latest_pulled"
        )
        errors += _check_number(raw, "days", keep in TIMED, at, "pushed_within and pulled_within")
    tags = _pattern_list(raw, "tags", at, errors)
    exclude = _pattern_list(raw, "exclude_tags", at, errors)
    untagged = raw.get("untagged")
    if untagged is not None and not isinstance(untagged, bool):
        errors.append(FieldError(f"{at}.untagged", "true or false"))
        untagged = None
    group_by = raw.get("group_by")
    if group_by is not None:
        errors += _check_group_by(group_by, keep, at)
    if tags == () and not untagged and not any(e.field == f"{at}.tags" for e in errors):
        errors.append(FieldError(at, 'this rule keeps nothing: give tags, or "untagged": true'))
    if errors:
        return None, errors
    return (
        Rule(
            keep=keep,
            count=raw.get("count"),
            days=raw.get("days"),
            tags=tags,
            exclude_tags=exclude,
            untagged=untagged,
            group_by=group_by,
        ),
        [],
    )


def _check_number(raw: dict, key: str, wanted: bool, at: str, kinds: str) -> list[FieldError]:
    value = raw.get(key)
    if not wanted:
        if key in raw:
            return [FieldError(f"{at}.{key}", f"{key} goes with {kinds} only")]
        return []
    if value is None:
        return [FieldError(f"{at}.{key}", f"required with keep {raw.get('keep')}: a number ≥ 1")]
    if not _is_int(value) or not 1 <= value <= MAX_NUMBER:
        return [FieldError(f"{at}.{key}", f"a whole number from 1 to {MAX_NUMBER:,}")]
    return []


def _pattern_list(raw: dict, key: str, at: str, errors: list[FieldError]) -> tuple | None:
    if key not in raw:
        return None
    value = raw[key]
    if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
        errors.append(FieldError(f"{at}.{key}", 'a list of tag patterns, such as ["v*"]'))
        return None
    return tuple(value)


def _check_group_by(value: Any, keep: Any, at: str) -> list[FieldError]:
    if keep in KEEP_KINDS and keep not in COUNTED:
        return [FieldError(f"{at}.group_by", "group_by goes with latest_pushed and latest_pulled")]
    if not isinstance(value, str) or not value:
        return [FieldError(f"{at}.group_by", "a regular expression, such as ^(main|pr-[0-9]+)-")]
    try:
        re.compile(value)
    except re.error as error:
        return [FieldError(f"{at}.group_by", f"not a valid regular expression: {error}")]
    return []


# -- stored policies -----------------------------------------------------------------------


def policy_of(row: RetentionPolicy) -> Policy:
    """The stored policy, as the engine reads it."""
    return parse_policy(
        {
            "name": row.name,
            "repositories": row.repositories,
            "rules": row.rules,
            "max_delete_fraction": row.max_delete_fraction,
            "schedule": {"every_hours": row.schedule_hours} if row.schedule_hours else None,
            "enabled": row.enabled,
        }
    )


class PolicyExists(Exception):
    """A policy of that name exists and the caller did not ask to replace it."""


def save_policy(
    policy: Policy,
    *,
    original: RetentionPolicy | None = None,
    replace: bool = False,
    now: datetime | None = None,
) -> RetentionPolicy:
    """Create or update the stored policy; `original` is the row being edited (it may be
    renamed). A changed schedule starts counting again from now, so a policy never runs
    on its schedule sooner than its period after a person set it up.

    Raises PolicyExists when the name belongs to another policy and `replace` is false."""
    now = now or timezone.now()
    with transaction.atomic():
        clash = RetentionPolicy.objects.filter(name=policy.name)
        if original is not None:
            clash = clash.exclude(pk=original.pk)
        other = clash.first()
        if other is not None:
            if not replace:
                raise PolicyExists(f"a policy named {policy.name} exists already")
            if original is not None:
                other.delete()
            else:
                original = other
        row = original or RetentionPolicy()
        rescheduled = (
            row.pk is None
            or row.schedule_hours != policy.schedule_hours
            or (policy.enabled and not row.enabled)
        )
        row.name = policy.name
        row.repositories = list(policy.repositories)
        row.rules = [rule.as_json() for rule in policy.rules]
        row.max_delete_fraction = policy.max_delete_fraction
        row.schedule_hours = policy.schedule_hours
        row.enabled = policy.enabled
        if not policy.schedule_hours:
            row.next_run_at = None
        elif rescheduled or row.next_run_at is None:
            row.next_run_at = now + timedelta(hours=policy.schedule_hours)
        row.save()
    return row


@dataclass(frozen=True)
class PolicySummary:
    """A row of the Retention page: the policy, how many repositories it covers now, and
    its last run."""

    row: RetentionPolicy
    policy: Policy
    covered: int
    last_run: RetentionRun | None


def policy_overview() -> list[PolicySummary]:
    """Every stored policy with its coverage and last run: three queries, however many."""
    last = RetentionRun.objects.filter(policy=OuterRef("pk")).order_by("-started_at", "-id")
    rows = list(RetentionPolicy.objects.annotate(last_run_id=Subquery(last.values("pk")[:1])))
    runs = RetentionRun.objects.in_bulk([row.last_run_id for row in rows if row.last_run_id])
    names = list(Repository.objects.values_list("name", flat=True)) if rows else []
    summaries = []
    for row in rows:
        policy = policy_of(row)
        summaries.append(
            PolicySummary(
                row=row,
                policy=policy,
                covered=sum(1 for name in names if policy.covers(name)),
                last_run=runs.get(row.last_run_id),
            )
        )
    return summaries


# -- evaluation ----------------------------------------------------------------------------


class Candidate(NamedTuple):
    """A top-level item; `tags` leaves out the referrer-schema tags, which never match.
    (A named tuple: a run makes one per top-level item, tens of thousands.)"""

    pk: int
    digest: str
    pushed_at: datetime
    last_pulled_at: datetime | None
    tags: tuple[str, ...]


@dataclass(frozen=True)
class KeptCandidate:
    digest: str
    tags: tuple[str, ...]
    reasons: tuple[str, ...]

    @property
    def reason(self) -> str:
        """In words: 'kept by rule 1: always; rule 3: pulled within 30 days'."""
        return "kept by " + "; ".join(self.reasons)


@dataclass(frozen=True)
class RepositoryDryRun:
    repository: Repository
    candidates: int
    selected: tuple[str, ...]
    kept: tuple[KeptCandidate, ...]
    plan: deletion.DeletionPlan
    in_use: Mapping[str, str]  # deleted digest -> "in use: pulled 2 days ago"

    @property
    def name(self) -> str:
        return self.repository.name

    @property
    def delete_fraction(self) -> float:
        return len(self.selected) / self.candidates if self.candidates else 0.0

    def over(self, max_delete_fraction: float) -> bool:
        """Would delete more than that share of the top-level items: a scheduled run stops."""
        return self.delete_fraction > max_delete_fraction

    def as_dict(self) -> dict[str, Any]:
        return {
            "repository": self.name,
            "selected": list(self.selected),
            "plan": self.plan.as_dict(),
        }


@dataclass(frozen=True)
class DryRun:
    policy: Policy
    now: datetime
    repositories: tuple[RepositoryDryRun, ...]
    reclaimable_bytes: int
    fingerprint: str

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
    def braked(self) -> list[RepositoryDryRun]:
        """Repositories where a scheduled run would stop (the max_delete_fraction brake)."""
        return [r for r in self.repositories if r.over(self.policy.max_delete_fraction)]

    def as_dict(self) -> dict[str, Any]:
        """Exactly SPEC §8's `apply_retention --dry-run --json` object."""
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
    policy: Policy, *, only: Collection[str] | None = None
) -> list[Repository]:
    """The repositories the policy covers, by name; `only` narrows them further."""
    rows = Repository.objects.order_by("name")
    if only is not None:
        rows = rows.filter(name__in=list(only))
    return [row for row in rows if policy.covers(row.name)]


def dry_run(
    policy: Policy,
    *,
    now: datetime | None = None,
    repositories: Collection[str] | None = None,
) -> DryRun:
    """What a run of `policy` would delete and keep, as of `now`: reads, never writes.

    A fixed number of queries whatever the number of repositories and items: two read
    every covered repository's candidates and tags, the rules run in Python, and
    `deletion.plan_deletions` plans every repository's selection at once."""
    now = now or start_now()
    repos = covered_repositories(policy, only=repositories)
    candidates = _candidates(repos)
    evaluated = []
    for repository in repos:
        items = candidates.get(repository.pk, [])
        kept = evaluate(policy, items, now=now)
        evaluated.append((repository, items, kept))
    plans = deletion.plan_deletions(
        {
            repository: [c.digest for c in _oldest_first(items) if c.pk not in kept]
            for repository, items, kept in evaluated
        }
    )
    results = [
        _repository_dry_run(repository, items, kept, plans.plans[repository.pk], now)
        for repository, items, kept in evaluated
    ]
    total = plans.reclaimable_bytes
    return DryRun(policy, now, tuple(results), total, _fingerprint(policy, now, results, total))


def _oldest_first(items: list[Candidate]) -> list[Candidate]:
    return sorted(items, key=lambda c: (c.pushed_at, c.digest))


def _repository_dry_run(
    repository: Repository,
    items: list[Candidate],
    kept: dict[int, list[str]],
    plan: deletion.DeletionPlan,
    now: datetime,
) -> RepositoryDryRun:
    newest_first = sorted(items, key=lambda c: c.digest)
    newest_first.sort(key=lambda c: c.pushed_at, reverse=True)
    in_use = {
        item.digest: f"in use: pulled {ago(item.last_pulled_at, now)}"
        for item in plan.delete
        if item.last_pulled_at and item.last_pulled_at >= now - IN_USE_WITHIN
    }
    return RepositoryDryRun(
        repository=repository,
        candidates=len(items),
        selected=plan.selected,
        kept=tuple(
            KeptCandidate(c.digest, c.tags, tuple(kept[c.pk])) for c in newest_first if c.pk in kept
        ),
        plan=plan,
        in_use=in_use,
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
    for pk, repository_id, digest, pushed_at, pulled_at in Manifest.objects.filter(
        repository_id__in=ids, is_top_level=True
    ).values_list("pk", "repository_id", "digest", "pushed_at", "last_pulled_at"):
        by_repository[repository_id].append(
            Candidate(pk, digest, pushed_at, pulled_at, tuple(tags.get(pk, ())))
        )
    return by_repository


def evaluate(policy: Policy, items: list[Candidate], *, now: datetime) -> dict[int, list[str]]:
    """Which candidates the rules keep (a union), each with the rules that keep it:
    id -> ["rule 2: latest 3 of group main", …]. Whatever is not in it is selected."""
    kept: dict[int, list[str]] = defaultdict(list)
    for number, rule in enumerate(policy.rules, start=1):
        for pk, why in _keeps(rule, _scope(rule, items), now):
            kept[pk].append(f"rule {number}: {why}")
    return dict(kept)


def _scope(rule: Rule, items: list[Candidate]) -> list[tuple[Candidate, tuple[str, ...]]]:
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
        matching = tuple(tag for tag in tags if include.match(tag)) if include else ()
        if matching and not (exclude and any(exclude.match(tag) for tag in tags)):
            scope.append((item, matching))
    return scope


def _keeps(
    rule: Rule, scope: list[tuple[Candidate, tuple[str, ...]]], now: datetime
) -> Iterable[tuple[int, str]]:
    if rule.keep == ALWAYS:
        return ((item.pk, "always") for item, _ in scope)
    if rule.keep in TIMED:
        cutoff = now - timedelta(days=rule.days or 0)
        pushed = rule.keep == PUSHED_WITHIN
        why = f"{'pushed' if pushed else 'pulled'} within {rule.days} days"
        return (
            (item.pk, why)
            for item, _ in scope
            if (when := item.pushed_at if pushed else item.last_pulled_at) and when >= cutoff
        )
    return _latest(rule, scope)


def _latest(rule: Rule, scope: list[tuple[Candidate, tuple[str, ...]]]) -> list[tuple[int, str]]:
    """The newest `count` of each group; ties go to the smaller digest."""
    pulled = rule.keep == LATEST_PULLED
    groups: dict[str, list[Candidate]] = defaultdict(list)
    regex = rule.matchers[2]
    for item, tags in scope:
        if pulled and item.last_pulled_at is None:
            continue  # never pulled: not kept by "latest pulled"
        for key in _group_keys(regex, tags):
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


def _group_keys(regex: re.Pattern | None, tags: tuple[str, ...]) -> set[str]:
    """Its first capture group (else the whole match) in each in-scope tag; tags it does
    not match, untagged items, and a first group that took no part in the match all share
    the group ""."""
    if regex is None or not tags:
        return {""}
    keys = set()
    for tag in tags:
        match = regex.search(tag)
        if match is None:
            keys.add("")
        else:
            keys.add((match.group(1) if regex.groups else match.group(0)) or "")
    return keys


def _fingerprint(policy: Policy, now: datetime, results: list[RepositoryDryRun], total: int) -> str:
    """The whole run: the policy as written, its `now`, and each repository's selection
    and plan fingerprint (which covers what the cascade adds and keeps, tags and bytes)."""
    document = {
        "policy": policy.effective_json(),
        "now": iso(now),
        "repositories": [[r.name, list(r.selected), r.plan.fingerprint] for r in results],
        "bytes": total,
    }
    encoded = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
    return hashlib.sha256(encoded).hexdigest()


# -- runs ----------------------------------------------------------------------------------


@dataclass
class RunResult:
    """A run's record and the dry run it executed (or, when the plan changed, the fresh
    one to show instead)."""

    record: RetentionRun
    dry_run: DryRun

    @property
    def changed(self) -> bool:
        return self.record.outcome == RetentionRun.Outcome.CHANGED


def run(
    *,
    policy: Policy,
    now: datetime,
    fingerprint: str | None,
    client: RegistryClient,
    trigger: str,
    started_by: str,
    user=None,
    brake: bool = False,
    repositories: Collection[str] | None = None,
    row: RetentionPolicy | None = None,
    lock_wait: float = 0.0,
) -> RunResult:
    """Execute the dry run previewed as `fingerprint` (as of its `now`), or nothing.

    Under the locks of every covered repository, each is re-read from the registry and the
    dry run computed again; only if it is still the one previewed does anything go, each
    repository through `deletion.execute_deletion` (which checks its own plan once more).
    A scheduled run passes `fingerprint=None` (it previews and executes in one go) and
    `brake=True`: it deletes nothing in a repository where it would delete more than
    `max_delete_fraction` of the top-level items, and says so in the record.

    A job runs it (`jobs.start_retention`): a web request only enqueues it.
    """
    first = dry_run(policy, now=now, repositories=repositories)
    record = RetentionRun(
        policy=row,
        policy_name=policy.name,
        trigger=trigger,
        started_by=started_by,
        started_at=now,
        planned_bytes=first.reclaimable_bytes,
    )
    if fingerprint is not None and first.fingerprint != fingerprint:
        return _finish(record, first, RetentionRun.Outcome.CHANGED, CHANGED_MESSAGE)
    covered = [r.repository for r in first.repositories]
    try:
        with ExitStack() as stack:
            for repository in covered:
                stack.enter_context(
                    repository_lock(repository, owner=f"retention:{policy.name}", wait=lock_wait)
                )
            failure = _recheck(client, covered)
            if failure:
                return _finish(record, first, RetentionRun.Outcome.FAILED, failure)
            checked = dry_run(policy, now=now, repositories=repositories)
            record.planned_bytes = checked.reclaimable_bytes
            if fingerprint is not None and checked.fingerprint != fingerprint:
                return _finish(record, checked, RetentionRun.Outcome.CHANGED, CHANGED_MESSAGE)
            return _execute(record, checked, client, user=user, brake=brake)
    except RepositoryBusy as busy:
        return _finish(record, first, RetentionRun.Outcome.BUSY, f"Nothing was deleted: {busy}.")


CHANGED_MESSAGE = (
    "The registry changed since the preview, so the plan would differ: nothing was deleted."
)


def _recheck(client: RegistryClient, repositories: list[Repository]) -> str:
    for repository in repositories:
        result = sync_repository(client, repository.name)
        if result.error:
            return (
                f"Nothing was deleted: could not re-check {repository.name} against the "
                f"registry: {result.error}"
            )
    return ""


def _execute(
    record: RetentionRun, checked: DryRun, client: RegistryClient, *, user, brake: bool
) -> RunResult:
    notes, incomplete = [], False
    for repo in checked.repositories:
        note, done = _execute_repository(repo, checked.policy, client, user=user, brake=brake)
        notes.append(
            {
                "repository": repo.name,
                "selected": len(repo.selected),
                "deleted": 0,
                "tags": 0,
                "reclaimed_bytes": 0,
                **note,
            }
        )
        incomplete = incomplete or not done
    record.repositories = notes
    record.manifests_deleted = sum(n["deleted"] for n in notes)
    record.tags_deleted = sum(n["tags"] for n in notes)
    record.reclaimed_bytes = sum(n["reclaimed_bytes"] for n in notes)
    outcome = RetentionRun.Outcome.INCOMPLETE if incomplete else RetentionRun.Outcome.DONE
    return _finish(record, checked, outcome, _summary(record, incomplete))


def _execute_repository(
    repo: RepositoryDryRun, policy: Policy, client: RegistryClient, *, user, brake: bool
) -> tuple[dict[str, Any], bool]:
    """Delete one repository's part of a checked dry run: (its note, whether it went as
    planned).

    Its plan is computed again first: a blob shared only with an item of a repository this
    run already cleaned is now reclaimable here too, so the bytes (and the fingerprint) may
    have grown. Only the bytes may differ; what goes, what stays and why must not."""
    if not repo.plan.delete:
        return {"note": "nothing to delete"}, True
    if brake and repo.over(policy.max_delete_fraction):
        return {
            "note": f"stopped: would delete {len(repo.selected)} of {repo.candidates} top-level "
            f"items ({repo.delete_fraction:.0%}), more than max_delete_fraction "
            f"{policy.max_delete_fraction:g}; nothing deleted here"
        }, False
    if repo.plan.refused:
        refused = "; ".join(f"{item.digest}: {item.reason}" for item in repo.plan.refused)
        return {"note": f"nothing deleted here: {refused}"}, False
    current = deletion.plan_deletion(repository=repo.repository, digests=repo.selected)
    if _what_goes(current) != _what_goes(repo.plan):
        return {"note": CHANGED_WHILE_RUNNING}, False
    try:
        outcome = deletion.execute_deletion(
            repository=repo.repository,
            digests=repo.selected,
            fingerprint=current.fingerprint,
            user=user,
            client=client,
            username=f"policy:{policy.name}",
        )
    except deletion.RecheckFailed as failure:
        return {"note": f"nothing deleted here: {failure}"}, False
    return _outcome_note(outcome), outcome.succeeded


CHANGED_WHILE_RUNNING = "the repository changed while the run went on: nothing deleted here"


def _what_goes(plan: deletion.DeletionPlan) -> tuple:
    """A plan without its bytes: what it deletes (with tags and sizes), keeps and refuses."""
    return (
        sorted((i.digest, i.kind, i.tags, i.size) for i in plan.delete),
        sorted((i.digest, i.reason) for i in plan.keep),
        sorted((i.digest, i.reason) for i in plan.refused),
    )


def _outcome_note(outcome: deletion.DeletionOutcome) -> dict[str, Any]:
    if outcome.stale:
        return {"note": CHANGED_WHILE_RUNNING}
    problems = [f"failed {i.digest}: {i.reason}" for i in outcome.failed]
    problems += [f"skipped {i.digest}: {i.reason}" for i in outcome.skipped]
    return {
        "deleted": len(outcome.deleted),
        "tags": sum(len(item.tags) for item in outcome.deleted),
        "reclaimed_bytes": outcome.reclaimed_bytes,
        "note": "; ".join(problems) or "deleted as planned",
    }


def _summary(record: RetentionRun, incomplete: bool) -> str:
    text = (
        f"Deleted {record.manifests_deleted} manifest{'s' if record.manifests_deleted != 1 else ''}"
        f" and {record.tags_deleted} tag{'s' if record.tags_deleted != 1 else ''}; "
        f"{human_size(record.reclaimed_bytes)} ({record.reclaimed_bytes:,} bytes) will be freed "
        "at the next garbage collection."
    )
    return text + (
        " Some repositories were not cleaned: see the run's notes." if incomplete else ""
    )


def _finish(record: RetentionRun, shown: DryRun, outcome: str, message: str) -> RunResult:
    record.outcome = outcome
    record.message = message
    record.finished_at = timezone.now()
    if not record.repositories:
        record.repositories = [
            {
                "repository": r.name,
                "selected": len(r.selected),
                "deleted": 0,
                "tags": 0,
                "reclaimed_bytes": 0,
                "note": "nothing deleted",
            }
            for r in shown.repositories
        ]
    record.save()
    return RunResult(record=record, dry_run=shown)


def claim_due_policies(now: datetime) -> list[RetentionPolicy]:
    """The enabled policies whose schedule is due at `now`, each claimed by moving its
    `next_run_at` forward with a conditional UPDATE, so two workers (on two hosts) never
    start the same policy twice. The workers' schedule (`jobs.schedule_due`) runs each
    claimed policy as a job."""
    due = RetentionPolicy.objects.filter(
        enabled=True, schedule_hours__isnull=False, next_run_at__lte=now
    ).order_by("next_run_at", "pk")
    claimed = []
    for row in due:
        if RetentionPolicy.objects.filter(pk=row.pk, next_run_at=row.next_run_at).update(
            next_run_at=now + timedelta(hours=row.schedule_hours)
        ):
            claimed.append(row)
    return claimed


def run_scheduled(row: RetentionPolicy, now: datetime, *, client: RegistryClient) -> RunResult:
    """A scheduled run of a claimed policy: previewed and executed in one go, as of `now`,
    with the `max_delete_fraction` brake."""
    try:
        policy = policy_of(row)
    except InvalidPolicy as invalid:  # edited behind the app's back, say in /admin/
        return _unreadable(row, now, invalid)
    return run(
        policy=policy,
        now=now,
        fingerprint=None,
        client=client,
        trigger=RetentionRun.Trigger.SCHEDULED,
        started_by="schedule",
        brake=True,
        row=row,
        lock_wait=SCHEDULED_LOCK_WAIT,
    )


def run_due_policies(now: datetime, *, client: RegistryClient) -> list[RunResult]:
    """Claim the due policies and run each now, here (what the jobs do, in one call)."""
    return [run_scheduled(row, now, client=client) for row in claim_due_policies(now)]


def _unreadable(row: RetentionPolicy, now: datetime, invalid: InvalidPolicy) -> RunResult:
    record = RetentionRun.objects.create(
        policy=row,
        policy_name=row.name,
        trigger=RetentionRun.Trigger.SCHEDULED,
        started_by="schedule",
        started_at=now,
        finished_at=timezone.now(),
        outcome=RetentionRun.Outcome.FAILED,
        message=f"Nothing was deleted: the stored policy is not valid: {invalid}",
    )
    empty = DryRun(
        Policy(name=row.name, rules=()), now, (), 0, _fingerprint(Policy(row.name, ()), now, [], 0)
    )
    return RunResult(record=record, dry_run=empty)
