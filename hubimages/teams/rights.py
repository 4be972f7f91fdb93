"""What a user may do where: `rights_for(user)` reads their teams' grants once (one query)
and answers per registry and repository, or narrows a queryset of repositories in SQL.

Roles are ranked: a `deleter` also views, a `policy_admin` also deletes. A team's grants
of one role in one registry form one list of globs, as a retention policy's
`repositories` (SPEC §8): a repository is covered when some pattern includes it and none
of that list's `!` patterns excludes it. Rights from several teams, or several roles,
add up. A superuser may do everything; an inactive or anonymous user nothing.

Nothing is cached between requests: a role taken away holds from the next request on.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property

from django.db.models import Q, QuerySet

from hubimages.lib import globs
from hubimages.models import Grant, Team, UserGroup

Role = Grant.Role
DEFAULT_REGISTRY = "default"
# Each role and the roles that include it.
RANK = {Role.VIEWER: 1, Role.DELETER: 2, Role.POLICY_ADMIN: 3}


@dataclass(frozen=True)
class Rights:
    """`bodies[(registry, role)]`: one `globs.covering_body` per team holding that role
    there. Build one with `rights_for`."""

    everything: bool = False
    bodies: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)

    def may(self, role: str, registry: str, repository: str) -> bool:
        if self.everything:
            return True
        return bool(self._covering(role, registry).match(repository))

    def may_view(self, registry: str, repository: str) -> bool:
        return self.may(Role.VIEWER, registry, repository)

    def may_delete(self, registry: str, repository: str) -> bool:
        return self.may(Role.DELETER, registry, repository)

    def may_admin_policies(self, registry: str, repository: str) -> bool:
        return self.may(Role.POLICY_ADMIN, registry, repository)

    def role(self, registry: str, repository: str) -> str | None:
        """The highest role held on that repository, None when none."""
        for role in sorted(RANK, key=RANK.get, reverse=True):
            if self.may(role, registry, repository):
                return role
        return None

    def repositories(
        self,
        queryset: QuerySet,
        *,
        role: str = Role.VIEWER,
        registry: str = DEFAULT_REGISTRY,
        field: str = "name",
    ) -> QuerySet:
        """`queryset` narrowed to the rows whose `field` (a repository name) `role` covers
        in `registry`: one regular expression in the WHERE clause, whatever the number of
        grants."""
        if self.everything:
            return queryset
        expression = self._expression(role, registry)
        if expression is None:
            return queryset.none()
        return queryset.filter(**{f"{field}__regex": expression})

    def _expression(self, role: str, registry: str) -> str | None:
        """The anchored expression of every grant at `role` or above; None: none."""
        if role not in RANK:
            raise ValueError(f"role must be one of {', '.join(RANK)}, not {role!r}")
        bodies = [
            body
            for held, rank in RANK.items()
            if rank >= RANK[role]
            for body in self.bodies.get((registry, held), ())
            if body != globs.NOTHING
        ]
        return globs.anchored(bodies) if bodies else None

    def _covering(self, role: str, registry: str) -> re.Pattern:
        return self._compiled.setdefault(
            (role, registry), re.compile(self._expression(role, registry) or "(?!)")
        )

    @cached_property
    def _compiled(self) -> dict[tuple[str, str], re.Pattern]:
        return {}


NOTHING = Rights()
EVERYTHING = Rights(everything=True)


def teams_of(user) -> QuerySet[Team]:
    """The teams `user` is in: as a member, or through a group the identity provider
    named at their last sign-in."""
    groups = UserGroup.objects.filter(user=user).values("name")
    return Team.objects.filter(Q(members=user) | Q(bindings__group__in=groups)).distinct()


def rights_for(user) -> Rights:
    if user is None or not user.is_authenticated or not user.is_active:
        return NOTHING
    if user.is_superuser:
        return EVERYTHING
    grants = Grant.objects.filter(team__in=teams_of(user)).values_list(
        "team_id", "registry", "role", "pattern"
    )
    lists: dict[tuple[int, str, str], list[str]] = defaultdict(list)
    for team_id, registry, role, pattern in grants:
        lists[(team_id, registry, role)].append(pattern)
    bodies: dict[tuple[str, str], list[str]] = defaultdict(list)
    for (_team, registry, role), patterns in sorted(lists.items()):
        bodies[(registry, role)].append(globs.covering_body(patterns))
    return Rights(bodies={key: tuple(value) for key, value in bodies.items()})
