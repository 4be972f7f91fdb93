"""Changing teams: create and delete them, add and remove members, bind and unbind the
identity provider's groups, grant and revoke roles. Each change and its audit entry are
written in one transaction: both or neither. A change that changes nothing (adding a
member twice) writes nothing, not even an audit entry.

`refresh_groups` stores the groups the identity provider named at a sign-in."""

from __future__ import annotations

import re
from collections.abc import Iterable

from django.db import IntegrityError, transaction

from hubimages.lib import audit, globs
from hubimages.lib.audit import Action, Actor
from hubimages.models import Grant, GroupBinding, Team, UserGroup

TEAM_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
REGISTRY_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
MAX_GROUP_LENGTH = 255


class TeamError(ValueError):
    """A change that cannot be made, said so a person can fix it."""


def group_name(raw: str) -> str:
    """A group as it is matched: Keycloak's full paths (`/ops/oncall`) lose their leading
    `/`; otherwise the provider's string exactly, case included."""
    return raw.strip().lstrip("/")[:MAX_GROUP_LENGTH]


@transaction.atomic
def create_team(name: str, *, by: Actor) -> Team:
    if not TEAM_NAME_RE.match(name):
        raise TeamError(f"{name!r} is not a team name: letters, digits, '.', '_', '-', at most 100")
    try:
        with transaction.atomic():
            team = Team.objects.create(name=name)
    except IntegrityError:
        raise TeamError(f"a team named {name} exists already") from None
    audit.record(Action.TEAM_CREATED, by=by, target=name)
    return team


@transaction.atomic
def delete_team(team: Team, *, by: Actor) -> None:
    audit.record(
        Action.TEAM_DELETED,
        by=by,
        target=team.name,
        members=sorted(team.members.values_list("username", flat=True)),
        groups=sorted(team.bindings.values_list("group", flat=True)),
        grants=[_grant_json(grant) for grant in team.grants.all()],
    )
    team.delete()


@transaction.atomic
def add_members(team: Team, users: Iterable, *, by: Actor) -> list[str]:
    """The usernames added (those already in the team are left out)."""
    present = set(team.members.values_list("pk", flat=True))
    added = [user for user in users if user.pk not in present]
    team.members.add(*added)
    names = [user.get_username() for user in added]
    for name in names:
        audit.record(Action.MEMBER_ADDED, by=by, target=team.name, member=name)
    return names


@transaction.atomic
def remove_members(team: Team, users: Iterable, *, by: Actor) -> list[str]:
    present = set(team.members.values_list("pk", flat=True))
    removed = [user for user in users if user.pk in present]
    team.members.remove(*removed)
    names = [user.get_username() for user in removed]
    for name in names:
        audit.record(Action.MEMBER_REMOVED, by=by, target=team.name, member=name)
    return names


@transaction.atomic
def bind_group(team: Team, group: str, *, by: Actor) -> bool:
    """Bind `group`; False when it was bound already."""
    name = group_name(group)
    if not name:
        raise TeamError("name the group, e.g. --group platform-admins")
    _, created = GroupBinding.objects.get_or_create(team=team, group=name)
    if created:
        audit.record(Action.GROUP_BOUND, by=by, target=team.name, group=name)
    return created


@transaction.atomic
def unbind_group(team: Team, group: str, *, by: Actor) -> bool:
    name = group_name(group)
    deleted, _ = GroupBinding.objects.filter(team=team, group=name).delete()
    if deleted:
        audit.record(Action.GROUP_UNBOUND, by=by, target=team.name, group=name)
    return bool(deleted)


def check_grant(role: str, pattern: str, registry: str) -> None:
    if role not in Grant.Role.values:
        raise TeamError(f"role must be one of {', '.join(Grant.Role.values)}, not {role!r}")
    if not globs.PATTERN_RE.match(pattern):
        raise TeamError(
            f"{pattern!r} cannot match a repository name: use lowercase letters, digits, "
            "'.', '_', '-', '/', the wildcards *, ** and ?, and a leading ! to exclude"
        )
    if not REGISTRY_NAME_RE.match(registry):
        raise TeamError(f"{registry!r} is not a registry name (lowercase letters, digits, -)")


@transaction.atomic
def grant(team: Team, role: str, pattern: str, *, registry: str = "default", by: Actor) -> bool:
    """Grant `role` on what `pattern` names (or, with `!`, take it out of the team's
    other patterns of that role); False when the team had that grant already."""
    check_grant(role, pattern, registry)
    row, created = Grant.objects.get_or_create(
        team=team, role=role, pattern=pattern, registry=registry
    )
    if created:
        audit.record(Action.GRANT_ADDED, by=by, target=team.name, **_grant_json(row))
    return created


@transaction.atomic
def revoke(team: Team, role: str, pattern: str, *, registry: str = "default", by: Actor) -> bool:
    deleted, _ = Grant.objects.filter(
        team=team, role=role, pattern=pattern, registry=registry
    ).delete()
    if deleted:
        audit.record(
            Action.GRANT_REVOKED,
            by=by,
            target=team.name,
            role=role,
            pattern=pattern,
            registry=registry,
        )
    return bool(deleted)


def _grant_json(row: Grant) -> dict[str, str]:
    return {"role": row.role, "pattern": row.pattern, "registry": row.registry}


@transaction.atomic
def refresh_groups(user, groups: Iterable[str]) -> list[str]:
    """Replace the user's groups with `groups` (as the provider named them at this
    sign-in): a group the provider no longer names is gone, with the rights it gave."""
    names = sorted({name for name in (group_name(g) for g in groups) if name})
    UserGroup.objects.filter(user=user).exclude(name__in=names).delete()
    present = set(UserGroup.objects.filter(user=user).values_list("name", flat=True))
    UserGroup.objects.bulk_create(
        [UserGroup(user=user, name=name) for name in names if name not in present],
        ignore_conflicts=True,
    )
    return names
