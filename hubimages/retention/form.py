"""The policy editor's form: plain fields and one row per rule, to and from SPEC §8's JSON.

Not a Django form: the JSON is the policy's one true shape and `retention.validate_policy`
its one validator, so the form only turns fields into that JSON and maps each error's
JSON path (`rules[1].count`) back onto the field it concerns. A row whose `keep` is empty
is no rule at all. "Add rule" and "Remove rule" are submit buttons that draw the editor
again (htmx swaps it in place; without JavaScript the page comes back), so a rule can be
added or removed before the policy is ever saved.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from django.http import QueryDict

from hubimages.retention import policies

# The most rules the editor shows and sends back: each row is six fields, and Django
# refuses a form of more than DATA_UPLOAD_MAX_NUMBER_FIELDS (1,000). A longer policy (the
# API and import take any length) is shown whole but refused on save, never cut short.
EDITOR_MAX_RULES = 100
KEEP_CHOICES = (
    ("", "— no rule —"),
    (policies.ALWAYS, "always"),
    (policies.LATEST_PUSHED, "latest N pushed"),
    (policies.LATEST_PULLED, "latest N pulled"),
    (policies.PUSHED_WITHIN, "pushed within N days"),
    (policies.PULLED_WITHIN, "pulled within N days"),
)
_PATH = re.compile(r"^rules\[(\d+)\](?:\.(\w+))?$")
_ROW_KEEP = re.compile(r"^rule-(\d{1,6})-keep$")
_RULE_FIELD = {
    "keep": "keep",
    "count": "number",
    "days": "number",
    "tags": "tags",
    "exclude_tags": "exclude_tags",
    "untagged": "untagged",
    "group_by": "group_by",
}
_POLICY_FIELD = {
    "name": "name",
    "registries": "registries",
    "repositories": "repositories",
    "max_delete_fraction": "max_delete_fraction",
    "schedule": "schedule_hours",
    "schedule.every_hours": "schedule_hours",
    "enabled": "enabled",
}


@dataclass
class RuleRow:
    keep: str = ""
    number: str = ""
    tags: str = "*"
    exclude_tags: str = ""
    untagged: bool = False
    group_by: str = ""
    errors: dict[str, list[str]] = field(default_factory=dict)
    index: int = 0
    added: bool = False  # just added with "Add rule": the page puts the focus on it

    @property
    def is_rule(self) -> bool:
        return bool(self.keep)

    @property
    def prefix(self) -> str:
        """The row's field names start with this: rule-0-keep, rule-0-number…"""
        return f"rule-{self.index}"


@dataclass
class PolicyForm:
    name: str = ""
    registries: str = " ".join(policies.DEFAULT_REGISTRIES)
    repositories: str = "**"
    max_delete_fraction: str = str(policies.DEFAULT_MAX_DELETE_FRACTION)
    schedule_hours: str = ""
    enabled: bool = True
    rows: list[RuleRow] = field(default_factory=list)
    errors: dict[str, list[str]] = field(default_factory=dict)  # field -> messages
    # What "Add rule" or "Remove rule" just did, for screen readers ("Rule 2 added.").
    note: str = ""
    removed: bool = False  # a rule was just removed: the focus goes to "Add rule"
    _checked: bool = field(default=False, repr=False)
    _policy: policies.Policy | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for index, row in enumerate(self.rows):
            row.index = index

    @classmethod
    def from_policy(cls, policy: policies.Policy | None) -> PolicyForm:
        if policy is None:
            return cls(rows=[RuleRow()])
        rows = [
            RuleRow(
                keep=rule.keep,
                number=str(rule.count or rule.days or ""),
                tags=" ".join(rule.tag_patterns),
                exclude_tags=" ".join(rule.exclude_tags or ()),
                untagged=rule.includes_untagged,
                group_by=rule.group_by or "",
            )
            for rule in policy.rules
        ]
        return cls(
            name=policy.name,
            registries=" ".join(policy.registries),
            repositories="\n".join(policy.repositories),
            max_delete_fraction=f"{policy.max_delete_fraction:g}",
            schedule_hours=str(policy.schedule_hours or ""),
            enabled=policy.enabled,
            rows=rows or [RuleRow()],
        )

    @classmethod
    def from_post(cls, data: QueryDict) -> PolicyForm:
        """Every row the form sent, in order, whatever its number: a rule is never
        dropped (too many are refused by `validate`) unless its "Remove rule" was pressed.
        Emptied rows go, so the numbers match the dry run's "rule 2"; "Add rule" appends
        an empty row, and a form without any rule keeps one to fill."""
        rows = []
        numbers = sorted({int(m.group(1)) for key in data if (m := _ROW_KEEP.match(key))})
        removed = data.get("remove_rule", "")
        note = ""
        if removed.isdigit() and int(removed) in numbers:
            note = f"Rule {numbers.index(int(removed)) + 1} removed."
            numbers.remove(int(removed))
        for i in numbers:
            rows.append(
                RuleRow(
                    keep=data.get(f"rule-{i}-keep", "").strip(),
                    number=data.get(f"rule-{i}-number", "").strip(),
                    tags=data.get(f"rule-{i}-tags", "").strip(),
                    exclude_tags=data.get(f"rule-{i}-exclude_tags", "").strip(),
                    untagged=data.get(f"rule-{i}-untagged") == "on",
                    group_by=data.get(f"rule-{i}-group_by", "").strip(),
                )
            )
        rows = [row for row in rows if row.is_rule]
        if data.get("add_rule") or not rows:
            rows.append(RuleRow(added=bool(data.get("add_rule"))))
            note = f"Rule {len(rows)} added." if data.get("add_rule") else note
        return cls(
            name=data.get("name", "").strip(),
            # A form from before the field (an open page at an upgrade): every registry.
            registries=data.get("registries", " ".join(policies.DEFAULT_REGISTRIES)).strip(),
            repositories=data.get("repositories", "").strip(),
            max_delete_fraction=data.get("max_delete_fraction", "").strip(),
            schedule_hours=data.get("schedule_hours", "").strip(),
            enabled=data.get("enabled") == "on",
            rows=rows,
            note=note,
            removed=bool(note) and not data.get("add_rule"),
        )

    @property
    def rows_changed(self) -> bool:
        """ "Add rule" or "Remove rule" was pressed: the editor, not only the dry run,
        is drawn again."""
        return bool(self.note)

    def as_json(self) -> dict[str, Any]:
        """The policy JSON these fields say; what does not parse is passed on as typed,
        so the validator's message names the field."""
        data: dict[str, Any] = {
            "name": self.name,
            "registries": self.registries.split(),
            "repositories": self.repositories.split(),
            "rules": [_rule_json(row) for row in self.rows if row.is_rule],
            "enabled": self.enabled,
        }
        if self.max_delete_fraction:
            data["max_delete_fraction"] = _number(self.max_delete_fraction, float)
        if self.schedule_hours:
            data["schedule"] = {"every_hours": _number(self.schedule_hours, int)}
        return data

    def validate(self) -> policies.Policy | None:
        """The policy, or None with every error placed on its field. Checks once: a view
        may add an error of its own (a name in use) before the page is drawn."""
        if self._checked:
            return self._policy
        self._checked = True
        rules = sum(1 for row in self.rows if row.is_rule)
        if rules > EDITOR_MAX_RULES:
            self.errors.setdefault("rules", []).append(
                f"the editor handles up to {EDITOR_MAX_RULES} rules; this policy has {rules}: "
                "edit its JSON (Export, then Import with Replace) or use the API"
            )
            return None
        policy_errors = policies.validate_policy(self.as_json())
        if not policy_errors:
            self._policy = policies.parse_policy(self.as_json())
            return self._policy
        rule_rows = [row for row in self.rows if row.is_rule]
        for error in policy_errors:
            self._place(error, rule_rows)
        return None

    def add_errors(self, errors: list[policies.FieldError]) -> None:
        """Errors found after `validate` (a pattern too slow in the dry run), each on its
        field."""
        rule_rows = [row for row in self.rows if row.is_rule]
        for error in errors:
            self._place(error, rule_rows)

    def _place(self, error: policies.FieldError, rule_rows: list[RuleRow]) -> None:
        match = _PATH.match(error.field)
        if match and int(match.group(1)) < len(rule_rows):
            row = rule_rows[int(match.group(1))]
            name = _RULE_FIELD.get(match.group(2) or "", "rule")
            row.errors.setdefault(name, []).append(error.message)
            return
        name = _POLICY_FIELD.get(error.field.split("[")[0], "rules")
        self.errors.setdefault(name, []).append(error.message)

    def error_list(self) -> list[str]:
        """Every error with the field it concerns, for the dry run's place on the page."""
        messages = [
            f"{_LABELS.get(name, name)}: {m}" for name, ms in self.errors.items() for m in ms
        ]
        number = 0
        for row in self.rows:
            if not row.is_rule:
                continue
            number += 1
            for name, ms in row.errors.items():
                where = f"Rule {number}" + (f", {_LABELS[name]}" if name in _LABELS else "")
                messages += [f"{where}: {m}" for m in ms]
        return messages


_LABELS = {
    "name": "Name",
    "registries": "Registries",
    "repositories": "Repositories",
    "max_delete_fraction": "Brake",
    "schedule_hours": "Schedule",
    "enabled": "Enabled",
    "rules": "Rules",
    "keep": "keep",
    "number": "N",
    "tags": "tags",
    "exclude_tags": "except tags",
    "untagged": "untagged",
    "group_by": "group by",
}


def _rule_json(row: RuleRow) -> dict[str, Any]:
    rule: dict[str, Any] = {"keep": row.keep}
    if row.number and row.keep in policies.COUNTED + policies.TIMED:
        rule["days" if row.keep in policies.TIMED else "count"] = _number(row.number, int)
    rule["tags"] = _patterns(row.tags)
    if row.exclude_tags:
        rule["exclude_tags"] = _patterns(row.exclude_tags)
    if row.untagged:
        rule["untagged"] = True
    if row.group_by:
        rule["group_by"] = row.group_by
    return rule


def _patterns(text: str) -> list[str]:
    return [part for part in re.split(r"[,\s]+", text) if part]


def _number(text: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        return text
