"""A retention policy's JSON (SPEC §8): what is accepted, the message for each field that is
not, how repository patterns read, and that export gives back what import took."""

from __future__ import annotations

import json

import pytest

from hubimages.retention import policies
from hubimages.retention.policies import FieldError

SPEC_EXAMPLE = {
    "name": "ci-cleanup",
    "repositories": ["team/**", "!team/golden"],
    "rules": [
        {"keep": "always", "tags": ["v*", "latest"]},
        {
            "keep": "latest_pushed",
            "count": 3,
            "tags": ["main-*", "pr-*"],
            "group_by": "^(main|pr-[0-9]+)-",
        },
        {"keep": "pulled_within", "days": 30},
        {"keep": "latest_pushed", "count": 2, "tags": [], "untagged": True},
    ],
}


def errors_of(data) -> dict[str, str]:
    return {error.field: error.message for error in policies.validate_policy(data)}


def with_rule(**rule) -> dict:
    return {"name": "p", "rules": [rule]}


def test_the_spec_example_is_valid_and_exports_with_every_default_written_out():
    assert policies.validate_policy(SPEC_EXAMPLE) == []

    exported = policies.parse_policy(SPEC_EXAMPLE).as_json()

    assert exported == {
        **SPEC_EXAMPLE,
        "registries": ["*"],
        "max_delete_fraction": 0.5,
        "schedule": None,
        "enabled": True,
    }
    assert list(exported) == list(policies.POLICY_FIELDS)
    again = policies.parse_policy_json(json.dumps(exported))
    assert again.as_json() == exported


def test_a_schedule_and_the_brake_round_trip():
    data = {
        **SPEC_EXAMPLE,
        "registries": ["*"],
        "max_delete_fraction": 0.25,
        "schedule": {"every_hours": 24},
        "enabled": False,
    }

    policy = policies.parse_policy(data)

    assert (policy.schedule_hours, policy.max_delete_fraction, policy.enabled) == (24, 0.25, False)
    assert policy.as_json() == data


def test_an_unknown_keep_kind_is_named_with_the_kinds_there_are():
    assert errors_of(with_rule(keep="newest", count=3, group_by="^(main)-")) == {
        "rules[0].keep": 'unknown keep kind "newest"; use one of always, latest_pushed, '
        "latest_pulled, pushed_within, pulled_within",
    }


@pytest.mark.parametrize(
    ("rule", "field", "message"),
    [
        ({"keep": "latest_pushed"}, "count", "required with keep latest_pushed: a number ≥ 1"),
        ({"keep": "latest_pulled", "count": 0}, "count", "a whole number from 1 to 1,000,000"),
        ({"keep": "latest_pushed", "count": "3"}, "count", "a whole number from 1 to 1,000,000"),
        ({"keep": "latest_pushed", "count": True}, "count", "a whole number from 1 to 1,000,000"),
        ({"keep": "pushed_within"}, "days", "required with keep pushed_within: a number ≥ 1"),
        ({"keep": "pulled_within", "days": -5}, "days", "a whole number from 1 to 1,000,000"),
        (
            {"keep": "always", "days": 3},
            "days",
            "days goes with pushed_within and pulled_within only",
        ),
    ],
)
def test_count_and_days_are_required_whole_numbers_of_at_least_one(rule, field, message):
    assert errors_of({"name": "p", "rules": [rule]}) == {f"rules[0].{field}": message}


def test_group_by_goes_only_with_the_latest_kinds():
    assert errors_of(with_rule(keep="pushed_within", days=7, group_by="^(main)-")) == {
        "rules[0].group_by": "group_by goes with latest_pushed and latest_pulled"
    }


def test_a_group_by_that_does_not_compile_says_why():
    assert errors_of(with_rule(keep="latest_pushed", count=1, group_by="^(main|pr-[0-9+-")) == {
        "rules[0].group_by": "not a valid regular expression: unterminated character set "
        "at position 10"
    }


def test_unknown_fields_are_named_where_they_are():
    data = {
        "name": "p",
        "repository": ["team/*"],
        "rules": [{"keep": "always", "tag": ["v*"]}],
        "schedule": {"every_hours": 6, "at": "03:00"},
    }

    assert errors_of(data) == {
        "repository": "unknown field; a policy has name, registries, repositories, rules, "
        "max_delete_fraction, schedule, enabled",
        "rules[0].tag": "unknown field; a rule has keep, count, days, tags, exclude_tags, "
        "untagged, group_by",
        "schedule.at": "unknown field; a schedule has every_hours",
    }


def test_each_rule_is_checked_and_named_by_its_position():
    data = {
        "name": "p",
        "rules": [
            {"keep": "always"},
            {"keep": "latest_pushed", "count": 2},
            {"keep": "pulled_within"},
        ],
    }

    assert errors_of(data) == {
        "rules[2].days": "required with keep pulled_within: a number ≥ 1",
    }


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"rules": [{"keep": "always"}]}, "name", "required"),
        (
            {"name": "ci cleanup", "rules": [{"keep": "always"}]},
            "name",
            "use 1 to 100 letters, digits, '.', '_' and '-', starting with a letter or digit",
        ),
        (
            {"name": "p"},
            "rules",
            "required: a list of keep rules",
        ),
        (
            {"name": "p", "rules": []},
            "rules",
            "add at least one rule: with none, the policy would delete everything it covers",
        ),
        (
            {"name": "p", "rules": [{"keep": "always", "tags": []}]},
            "rules[0]",
            'this rule keeps nothing: give tags, or "untagged": true',
        ),
        (
            {"name": "p", "rules": [{"keep": "always", "tags": "v*"}]},
            "rules[0].tags",
            'a list of tag patterns, such as ["v*"]',
        ),
        (
            {"name": "p", "rules": [{"keep": "always", "untagged": "yes"}]},
            "rules[0].untagged",
            "true or false",
        ),
        (
            {"name": "p", "repositories": [], "rules": [{"keep": "always"}]},
            "repositories",
            'a list of patterns, such as ["team/**"]',
        ),
        (
            {"name": "p", "repositories": ["!team/golden"], "rules": [{"keep": "always"}]},
            "repositories",
            "only exclusions cover nothing: add a pattern such as **",
        ),
        (
            {"name": "p", "repositories": ["Team/*"], "rules": [{"keep": "always"}]},
            "repositories[0]",
            "\"Team/*\" cannot match a repository name: use lowercase letters, digits, '.', "
            "'_', '-', '/', the wildcards *, ** and ?, and a leading ! to exclude",
        ),
        (
            {"name": "p", "max_delete_fraction": 1.5, "rules": [{"keep": "always"}]},
            "max_delete_fraction",
            "a number above 0 and at most 1, such as 0.5",
        ),
        (
            {"name": "p", "schedule": {"every_hours": 0}, "rules": [{"keep": "always"}]},
            "schedule.every_hours",
            'null (no schedule) or {"every_hours": N}, N from 1 to 8784',
        ),
        (
            {"name": "p", "enabled": "no", "rules": [{"keep": "always"}]},
            "enabled",
            "true or false",
        ),
    ],
)
def test_each_policy_field_gets_its_own_message(data, field, message):
    assert errors_of(data) == {field: message}


def test_broken_json_and_non_objects_are_refused_with_the_reason():
    with pytest.raises(policies.InvalidPolicy) as broken:
        policies.parse_policy_json('{"name": "p",')
    assert str(broken.value.errors[0]).startswith("not valid JSON: Expecting")
    assert policies.validate_policy(["p"]) == [
        FieldError("", 'a policy is a JSON object: {"name": …, "rules": […]}')
    ]


@pytest.mark.parametrize(
    ("patterns", "covered"),
    [
        (["**"], {"team/app", "team/golden", "team/sub/deep", "other"}),
        (["team/*"], {"team/app", "team/golden"}),
        (["team/**"], {"team/app", "team/golden", "team/sub/deep"}),
        (["team/**", "!team/golden"], {"team/app", "team/sub/deep"}),
        (["team/*", "!team/g*"], {"team/app"}),
        (["**", "!team/**"], {"other"}),
        (["team/ap?"], {"team/app"}),
        (["team?app"], set()),  # ? is one character, never a /
        (["*"], {"other"}),
    ],
)
def test_repository_patterns_include_and_a_leading_bang_excludes(patterns, covered):
    policy = policies.parse_policy(
        {"name": "p", "repositories": patterns, "rules": [{"keep": "always"}]}
    )
    names = {"team/app", "team/golden", "team/sub/deep", "other"}

    assert {name for name in names if policy.covers(name)} == covered


def test_a_rule_describes_what_it_keeps_in_words():
    policy = policies.parse_policy(SPEC_EXAMPLE)

    assert [rule.describe() for rule in policy.rules] == [
        "keep always — tags v*, latest",
        "keep latest 3 of each group of ^(main|pr-[0-9]+)- — tags main-*, pr-*",
        "keep pulled within 30 days — tags *",
        "keep latest 2 — untagged items",
    ]
