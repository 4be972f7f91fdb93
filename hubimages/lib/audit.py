"""The audit log (SPEC §14): who did what, when and from where, written by the services
and views that do it, read by the Audit page and its exports.

An entry is written in the same transaction as what it records wherever the caller holds
one, so the log never claims what did not happen nor misses what did. Entries are
append-only (`AuditEntry` refuses changes and deletion); the time is the database's.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.db.models import QuerySet
from django.http import HttpRequest

from hubimages.lib.addresses import client_address
from hubimages.lib.formatting import iso
from hubimages.models import AuditEntry

Action = AuditEntry.Action
COMMAND_LINE = "command line"
CSV_HEADER = ("at", "who", "address", "action", "target", "details")
# A CSV cell starting with one of these is a formula to a spreadsheet: quoted away.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class Actor:
    """Who acts: a signed-in user and their address, or someone at the command line."""

    name: str
    user_id: int | None = None
    address: str = ""

    @classmethod
    def of(cls, request: HttpRequest) -> Actor:
        user = getattr(request, "user", None)
        signed_in = user is not None and user.is_authenticated
        return cls(
            name=user.get_username() if signed_in else "",
            user_id=user.pk if signed_in else None,
            address=client_address(request),
        )

    @classmethod
    def of_user(cls, user, request: HttpRequest | None = None) -> Actor:
        """`user`, whatever `request.user` says yet (a sign-in being recorded)."""
        return cls(
            name=user.get_username(),
            user_id=user.pk,
            address=client_address(request) if request is not None else "",
        )

    @classmethod
    def command_line(cls) -> Actor:
        """`manage.py` run by an operating system account."""
        try:
            account = getpass.getuser()
        except (KeyError, OSError):  # no name for this uid (a container's arbitrary user)
            account = ""
        return cls(name=f"{account} ({COMMAND_LINE})" if account else COMMAND_LINE)


def record(action: str, *, by: Actor, target: str = "", **details: Any) -> AuditEntry:
    """Append one entry. `target` names what was acted on (a team, a repository, a
    policy); `details` are JSON values saying the rest."""
    if action not in Action.values:
        raise ValueError(f"unknown audit action {action!r}")
    return AuditEntry.objects.create(
        action=action,
        actor=by.name[:255],
        actor_id=by.user_id,
        address=by.address,
        target=target[:255],
        details=details,
    )


# -- reading -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """The Audit page's filters, checked: junk reads as "no filter"."""

    who: str = ""
    action: str = ""
    since: date | None = None
    until: date | None = None

    @classmethod
    def parse(cls, params) -> Filters:
        action = params.get("action", "").strip()
        return cls(
            who=params.get("who", "").strip()[:255],
            action=action if action in Action.values else "",
            since=_date(params.get("since", "")),
            until=_date(params.get("until", "")),
        )

    def as_query(self) -> dict[str, str | None]:
        """What the URL keeps (None leaves a parameter out)."""
        return {
            "who": self.who or None,
            "action": self.action or None,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
        }


def _date(raw: str) -> date | None:
    try:
        return date.fromisoformat(raw.strip()[:10]) if raw and raw.strip() else None
    except ValueError:
        return None


def entries(filters: Filters) -> QuerySet[AuditEntry]:
    """Entries newest first, narrowed by who (the name, exactly, any case), the action,
    and the days from `since` to `until`, both included (UTC)."""
    rows = AuditEntry.objects.all()
    if filters.who:
        rows = rows.filter(actor__iexact=filters.who)
    if filters.action:
        rows = rows.filter(action=filters.action)
    if filters.since:
        rows = rows.filter(at__gte=_midnight(filters.since))
    if filters.until:
        rows = rows.filter(at__lt=_midnight(filters.until + timedelta(days=1)))
    return rows


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def as_json(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.pk,
        "at": iso(entry.at),
        "who": entry.actor,
        "address": entry.address,
        "action": entry.action,
        "target": entry.target,
        "details": entry.details,
    }


def csv_rows(rows: QuerySet[AuditEntry]) -> Iterator[tuple[str, ...]]:
    """The header, then one line per entry, read in chunks (an export may be long)."""
    yield CSV_HEADER
    for entry in rows.iterator(chunk_size=500):
        yield tuple(
            _cell(value)
            for value in (
                iso(entry.at) or "",
                entry.actor,
                entry.address,
                entry.action,
                entry.target,
                json.dumps(entry.details, sort_keys=True) if entry.details else "",
            )
        )


def _cell(value: str) -> str:
    return f"'{value}" if value.startswith(FORMULA_STARTS) else value
