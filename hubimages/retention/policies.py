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
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any

from django.db import transaction
from django.db.models import OuterRef, Q, Subquery
from django.utils import timezone

from hubimages.lib import audit
from hubimages.lib.audit import Action, Actor
from hubimages.lib.globs import PATTERN_RE as REPOSITORY_PATTERN_RE
from hubimages.lib.globs import covering
from hubimages.models import Repository, RetentionPolicy, RetentionRun

ALWAYS = "always"
LATEST_PUSHED = "latest_pushed"
LATEST_PULLED = "latest_pulled"
PUSHED_WITHIN = "pushed_within"
PULLED_WITHIN = "pulled_within"
KEEP_KINDS = (ALWAYS, LATEST_PUSHED, LATEST_PULLED, PUSHED_WITHIN, PULLED_WITHIN)
COUNTED = (LATEST_PUSHED, LATEST_PULLED)
TIMED = (PUSHED_WITHIN, PULLED_WITHIN)

POLICY_FIELDS = (
    "name",
    "registries",
    "repositories",
    "rules",
    "max_delete_fraction",
    "schedule",
    "enabled",
)
RULE_FIELDS = ("keep", "count", "days", "tags", "exclude_tags", "untagged", "group_by")
SCHEDULE_FIELDS = ("every_hours",)
DEFAULT_REGISTRIES = ("*",)
DEFAULT_REPOSITORIES = ("**",)
DEFAULT_TAGS = ("*",)
DEFAULT_MAX_DELETE_FRACTION = 0.5
MAX_SCHEDULE_HOURS = 24 * 366
MAX_IMPORT_BYTES = 100_000
MAX_NUMBER = 1_000_000  # counts and days beyond this are typing mistakes
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
REGISTRY_PATTERN_RE = re.compile(r"^!?[a-z0-9*?-]+$")


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
    registries: tuple[str, ...] = DEFAULT_REGISTRIES
    max_delete_fraction: float = DEFAULT_MAX_DELETE_FRACTION
    schedule_hours: int | None = None
    enabled: bool = True

    def as_json(self) -> dict[str, Any]:
        """SPEC §8's shape, every field written out: what export prints and import reads."""
        return {
            "name": self.name,
            "registries": list(self.registries),
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

    def covers(self, repository: str, registry: str = "default") -> bool:
        """Some pattern of each list includes the name and none excludes it."""
        return bool(self._repository_covering.match(repository)) and bool(
            self._registry_covering.match(registry)
        )

    @cached_property
    def _repository_covering(self) -> re.Pattern:
        return covering(self.repositories)

    @cached_property
    def _registry_covering(self) -> re.Pattern:
        return covering(self.registries)


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
    repositories = _parse_patterns(
        data.get("repositories", list(DEFAULT_REPOSITORIES)), "repositories", "repository"
    )
    errors += repositories[1]
    registries = _parse_patterns(
        data.get("registries", list(DEFAULT_REGISTRIES)), "registries", "registry"
    )
    errors += registries[1]
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
            registries=registries[0],
            max_delete_fraction=float(fraction),
            schedule_hours=schedule[0],
            enabled=enabled,
        ),
        [],
    )


PATTERN_RULES = {
    "repositories": (
        REPOSITORY_PATTERN_RE,
        '["team/**"]',
        "letters, digits, '.', '_', '-', '/', the wildcards *, ** and ?",
        "**",
    ),
    "registries": (REGISTRY_PATTERN_RE, '["prod"]', "letters, digits, '-', * and ?", "*"),
}


def _parse_patterns(value: Any, field: str, what: str) -> tuple[tuple[str, ...], list[FieldError]]:
    """A list of globs (`repositories`, `registries`), each checked against what a name of
    that kind can hold."""
    pattern_re, example, allowed, everything = PATTERN_RULES[field]
    if not isinstance(value, list) or not value:
        return (), [FieldError(field, f"a list of patterns, such as {example}")]
    errors = []
    for i, pattern in enumerate(value):
        if not isinstance(pattern, str) or not pattern_re.match(pattern):
            errors.append(
                FieldError(
                    f"{field}[{i}]",
                    f"{json.dumps(pattern)} cannot match a {what} name: use lowercase "
                    f"{allowed}, and a leading ! to exclude",
                )
            )
    if not errors and all(pattern.startswith("!") for pattern in value):
        errors.append(
            FieldError(field, f"only exclusions cover nothing: add a pattern such as {everything}")
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
            "registries": row.registries,
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
    by: Actor | None = None,
) -> RetentionPolicy:
    """Create or update the stored policy; `original` is the row being edited (it may be
    renamed). A changed schedule starts counting again from now, so a policy never runs
    on its schedule sooner than its period after a person set it up. The audit log
    records it, `by` whom (unnamed when None), in the same transaction.

    Raises PolicyExists when the name belongs to another policy and `replace` is false."""
    now = now or timezone.now()
    with transaction.atomic():
        was = original.name if original is not None else None
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
        row.registries = list(policy.registries)
        row.rules = [rule.as_json() for rule in policy.rules]
        row.max_delete_fraction = policy.max_delete_fraction
        row.schedule_hours = policy.schedule_hours
        row.enabled = policy.enabled
        if not policy.schedule_hours:
            row.next_run_at = None
        elif rescheduled or row.next_run_at is None:
            row.next_run_at = now + timedelta(hours=policy.schedule_hours)
        created = row.pk is None
        row.save()
        audit.record(
            Action.POLICY_CREATED if created else Action.POLICY_CHANGED,
            by=by or Actor(name=""),
            target=row.name,
            policy=policy.as_json(),
            **({"renamed_from": was} if was and was != row.name else {}),
        )
    return row


def delete_policy(row: RetentionPolicy, *, by: Actor | None = None) -> None:
    """Delete the stored policy (its runs stay on record, under its name), audited."""
    with transaction.atomic():
        audit.record(
            Action.POLICY_DELETED,
            by=by or Actor(name=""),
            target=row.name,
            repositories=row.repositories,
            rules=row.rules,
        )
        row.delete()


@dataclass(frozen=True)
class PolicySummary:
    """A row of the Retention page: the policy, how many repositories it covers now, and
    its last run."""

    row: RetentionPolicy
    policy: Policy
    covered: int
    last_run: RetentionRun | None


def policy_overview(within: Q | None = None) -> list[PolicySummary]:
    """Every stored policy with its coverage and last run: three queries, however many.
    `within` counts only the repositories it lets through (those a user may see)."""
    last = RetentionRun.objects.filter(policy=OuterRef("pk")).order_by("-started_at", "-id")
    rows = list(RetentionPolicy.objects.annotate(last_run_id=Subquery(last.values("pk")[:1])))
    runs = RetentionRun.objects.in_bulk([row.last_run_id for row in rows if row.last_run_id])
    repositories = Repository.objects.filter(within) if within is not None else Repository.objects
    names = list(repositories.values_list("registry__name", "name")) if rows else []
    summaries = []
    for row in rows:
        policy = policy_of(row)
        summaries.append(
            PolicySummary(
                row=row,
                policy=policy,
                covered=sum(1 for registry, name in names if policy.covers(name, registry)),
                last_run=runs.get(row.last_run_id),
            )
        )
    return summaries
