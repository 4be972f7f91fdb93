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
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any

import regex
from django.db import transaction
from django.db.models import OuterRef, Q, Subquery
from django.utils import timezone

from hubimages.lib import audit, globs
from hubimages.lib.audit import Action, Actor
from hubimages.lib.globs import PATTERN_RE as REPOSITORY_PATTERN_RE
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
# Control characters never match a tag, and PostgreSQL's jsonb cannot even store U+0000.
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
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


# -- bounded matching ------------------------------------------------------------------------

# One match of one of a policy's patterns against one name (a tag, a repository). A sane
# pattern takes microseconds; a catastrophic one (`^(a+)+$`, `^(a|aa)+$`) takes hours on a
# name of a few dozen characters, and Python's `re` holds the interpreter lock meanwhile:
# a gunicorn worker past its timeout, a task worker whose heartbeat stops.
MATCH_SECONDS = 0.25
# All the matching of one evaluation (a dry run, the Retention page's coverage) together:
# a pattern slow on every tag, but not past MATCH_SECONDS on any.
EVALUATION_SECONDS = 5.0


class PatternTooSlow(InvalidPolicy):
    """One of the policy's patterns took longer than its bound: nothing was decided on it
    (the dry run stops there), and the error names the pattern's field."""


class PatternClock:
    """The time bound of one evaluation's matching. Every match of a policy's patterns goes
    through `find`: the `regex` package stops it after MATCH_SECONDS, or what is left of
    EVALUATION_SECONDS, and releases the interpreter lock while it runs, so other threads
    (a worker's heartbeat) go on."""

    def __init__(self, seconds: float | None = None) -> None:
        self.seconds = EVALUATION_SECONDS if seconds is None else seconds
        self.spent = 0.0

    def match(self, pattern: regex.Pattern, how: str, text: str, field: str) -> bool:
        """Whether `pattern` matches `text` (`how`: match, fullmatch); raises PatternTooSlow."""
        return self.find(pattern, how, text, field) is not None

    def find(self, pattern: regex.Pattern, how: str, text: str, field: str):
        """`pattern.<how>(text)`, bounded; raises PatternTooSlow naming `field`."""
        left = self.seconds - self.spent
        if left <= 0:
            raise PatternTooSlow([FieldError(field, self._why(text, left))])
        started = time.perf_counter()
        try:
            return getattr(pattern, how)(text, timeout=min(MATCH_SECONDS, left), concurrent=True)
        except TimeoutError:
            raise PatternTooSlow([FieldError(field, self._why(text, left))]) from None
        finally:
            self.spent += time.perf_counter() - started

    def _why(self, text: str, left: float) -> str:
        name = json.dumps(text if len(text) <= 80 else text[:79] + "…")
        if left < MATCH_SECONDS:
            return (
                f"the policy's patterns took over {self.seconds:g} s in all (the last on "
                f"{name}): simplify them"
            )
        return (
            f"this pattern takes over {MATCH_SECONDS:g} s on {name}: it backtracks "
            "catastrophically (nested quantifiers such as (a+)+, or overlapping alternatives "
            "such as (a|aa)+): simplify it"
        )


def _compile(pattern: str) -> regex.Pattern:
    """A policy's pattern for `PatternClock`: `regex`, with `re`'s behaviour (VERSION0)."""
    return regex.compile(pattern, regex.VERSION0)


def _shell_patterns(patterns: Iterable[str]) -> regex.Pattern | None:
    """One regular expression for shell-style patterns, each matching a whole tag."""
    parts = [fnmatch.translate(pattern) for pattern in patterns]
    return _compile("|".join(parts)) if parts else None


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
    def matchers(self) -> tuple[regex.Pattern | None, regex.Pattern | None, regex.Pattern | None]:
        """Compiled once per rule: its tags, its exclude_tags and its group_by; match them
        through a `PatternClock`."""
        return (
            _shell_patterns(self.tag_patterns),
            _shell_patterns(self.exclude_tags or ()),
            _compile(self.group_by) if self.group_by else None,
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

    def covers(
        self, repository: str, registry: str = "default", clock: PatternClock | None = None
    ) -> bool:
        """Some pattern of each list includes the name and none excludes it. Raises
        PatternTooSlow."""
        clock = clock or PatternClock()
        return clock.match(
            self._repository_covering, "match", repository, "repositories"
        ) and clock.match(self._registry_covering, "match", registry, "registries")

    @cached_property
    def _repository_covering(self) -> regex.Pattern:
        return _compile(globs.anchored([globs.covering_body(self.repositories)]))

    @cached_property
    def _registry_covering(self) -> regex.Pattern:
        return _compile(globs.anchored([globs.covering_body(self.registries)]))


def validate_policy(data: Any) -> list[FieldError]:
    """Every problem in `data` (a decoded JSON object), one message per field; [] if none."""
    return _parse(data)[1]


def parse_policy(data: Any, *, stored: bool = False) -> Policy:
    """The policy `data` describes; raises InvalidPolicy with every problem found.

    `stored`: a policy read back from the database skips the checks added since it may have
    been saved (a `group_by` with nested quantifiers): it still runs, its matching bounded
    by `PatternClock`, rather than break every page that lists it."""
    policy, errors = _parse(data, strict=not stored)
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


def _parse(data: Any, *, strict: bool = True) -> tuple[Policy | None, list[FieldError]]:
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
    rules = _parse_rules(data.get("rules"), strict=strict)
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
    hours = _whole(value.get("every_hours"))
    if hours is None or not 1 <= hours <= MAX_SCHEDULE_HOURS:
        errors.append(FieldError("schedule.every_hours", message))
    return (hours if not errors else None), errors


def _whole(value: Any) -> int | None:
    """The whole number `value` is, or None. JSON does not tell 2.0 from 2 (JSON Schema's
    integer type accepts both), so neither may we; true and false are not numbers."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _parse_rules(value: Any, *, strict: bool) -> tuple[tuple[Rule, ...], list[FieldError]]:
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
        rule, problems = _parse_rule(raw, f"rules[{i}]", strict=strict)
        errors += problems
        if rule:
            rules.append(rule)
    return tuple(rules), errors


def _parse_rule(raw: Any, at: str, *, strict: bool) -> tuple[Rule | None, list[FieldError]]:
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
    # A field given is checked, null included: "untagged": null is no boolean.
    untagged = raw.get("untagged")
    if "untagged" in raw and not isinstance(untagged, bool):
        errors.append(FieldError(f"{at}.untagged", "true or false"))
        untagged = None
    group_by = raw.get("group_by")
    if "group_by" in raw:
        errors += _check_group_by(group_by, keep, at, strict=strict)
    if tags == () and not untagged and not any(e.field == f"{at}.tags" for e in errors):
        errors.append(FieldError(at, 'this rule keeps nothing: give tags, or "untagged": true'))
    if errors:
        return None, errors
    return (
        Rule(
            keep=keep,
            count=_whole(raw.get("count")),
            days=_whole(raw.get("days")),
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
    number = _whole(value)
    if number is None or not 1 <= number <= MAX_NUMBER:
        return [FieldError(f"{at}.{key}", f"a whole number from 1 to {MAX_NUMBER:,}")]
    return []


def _pattern_list(raw: dict, key: str, at: str, errors: list[FieldError]) -> tuple | None:
    if key not in raw:
        return None
    value = raw[key]
    if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
        errors.append(FieldError(f"{at}.{key}", 'a list of tag patterns, such as ["v*"]'))
        return None
    if any(CONTROL_RE.search(pattern) for pattern in value):
        errors.append(FieldError(f"{at}.{key}", "control characters never match a tag"))
        return None
    return tuple(value)


def _check_group_by(value: Any, keep: Any, at: str, *, strict: bool) -> list[FieldError]:
    if keep in KEEP_KINDS and keep not in COUNTED:
        return [FieldError(f"{at}.group_by", "group_by goes with latest_pushed and latest_pulled")]
    if not isinstance(value, str) or not value:
        return [FieldError(f"{at}.group_by", "a regular expression, such as ^(main|pr-[0-9]+)-")]
    if CONTROL_RE.search(value):
        return [FieldError(f"{at}.group_by", "control characters never match a tag")]
    try:
        re.compile(value)
        _compile(value)
    except (re.error, regex.error) as error:
        return [FieldError(f"{at}.group_by", f"not a valid regular expression: {error}")]
    if strict and nested_quantifier(value):
        return [
            FieldError(
                f"{at}.group_by",
                "a repeated group that repeats inside, such as (a+)+, can take hours on one "
                "tag: repeat the group or its inside, not both",
            )
        ]
    return []


def nested_quantifier(pattern: str) -> bool:
    """Whether a group holding an unbounded repeat (`*`, `+`, `{n,}`) is itself repeated
    (`*`, `+`, `{n,}`, `{n,m}` with m > 1): `(a+)+`, `(a*b)*`, `((ab)+c){2,9}`. That is
    the shape of most catastrophic backtracking; what remains is bounded by PatternClock."""
    holds = [False]  # per open group: whether it holds an unbounded repeat
    closed: bool | None = None  # the group just closed held one (None: not after a group)
    i = 0
    while i < len(pattern):
        char = pattern[i]
        repeat = _repeat_at(pattern, i)
        if repeat:
            end, unbounded, many = repeat
            if closed and many:
                return True
            holds[-1] = holds[-1] or unbounded or bool(closed)
            closed, i = None, end
            continue
        closed = None
        if char == "\\":
            i += 2
        elif char == "[":
            i = _class_end(pattern, i)
        elif char == "(":
            holds.append(False)
            i += 1
        elif char == ")" and len(holds) > 1:
            closed = holds.pop()
            holds[-1] = holds[-1] or closed
            i += 1
        else:
            i += 1
    return False


_BRACES = re.compile(r"\{(\d*)(,?)(\d*)\}")


def _repeat_at(pattern: str, i: int) -> tuple[int, bool, bool] | None:
    """A quantifier at `i`: (where it ends, unbounded, more than once), lazy or possessive
    suffix included; None when there is none."""
    char = pattern[i]
    if char in "*+":
        end, unbounded, many = i + 1, True, True
    elif char == "?":
        end, unbounded, many = i + 1, False, False
    elif char == "{" and (braces := _BRACES.match(pattern, i)):
        low, comma, high = braces.groups()
        if not low and not high:
            return None  # a literal "{,}"
        unbounded = bool(comma) and not high
        many = unbounded or int(high or low or 0) > 1
        end = braces.end()
    else:
        return None
    if end < len(pattern) and pattern[end] in "?+":
        end += 1
    return end, unbounded, many


def _class_end(pattern: str, i: int) -> int:
    """Just past the character class that starts at `i`."""
    j = i + 1
    if j < len(pattern) and pattern[j] == "^":
        j += 1
    if j < len(pattern) and pattern[j] == "]":
        j += 1
    while j < len(pattern) and pattern[j] != "]":
        j += 2 if pattern[j] == "\\" else 1
    return j + 1


# -- stored policies -----------------------------------------------------------------------


def policy_of(row: RetentionPolicy) -> Policy:
    """The stored policy, as the engine reads it."""
    return parse_policy(
        stored=True,
        data={
            "name": row.name,
            "registries": row.registries,
            "repositories": row.repositories,
            "rules": row.rules,
            "max_delete_fraction": row.max_delete_fraction,
            "schedule": {"every_hours": row.schedule_hours} if row.schedule_hours else None,
            "enabled": row.enabled,
        },
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
    covered: int | None  # None: its patterns took too long to tell (`PatternClock`)
    last_run: RetentionRun | None


def policy_overview(within: Q | None = None) -> list[PolicySummary]:
    """Every stored policy with its coverage and last run: three queries, however many.
    `within` counts only the repositories it lets through (those a user may see)."""
    last = RetentionRun.objects.filter(policy=OuterRef("pk")).order_by("-started_at", "-id")
    rows = list(RetentionPolicy.objects.annotate(last_run_id=Subquery(last.values("pk")[:1])))
    runs = RetentionRun.objects.in_bulk([row.last_run_id for row in rows if row.last_run_id])
    repositories = Repository.objects.filter(within) if within is not None else Repository.objects
    names = list(repositories.values_list("registry__name", "name")) if rows else []
    clock = PatternClock()
    summaries = []
    for row in rows:
        policy = policy_of(row)
        try:
            covered = sum(1 for registry, name in names if policy.covers(name, registry, clock))
        except PatternTooSlow:
            covered = None
        last_run = runs.get(row.last_run_id)
        summaries.append(PolicySummary(row=row, policy=policy, covered=covered, last_run=last_run))
    return summaries
