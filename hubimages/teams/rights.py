"""What a user may do where: `rights_for(user)` reads their teams' grants once (one query)
and answers per registry and repository, or narrows a queryset of repositories in SQL;
`rights_of(request)` does it once per request, and narrows a `read` API token's rights to
viewing.

Roles are ranked: a `deleter` also views, a `policy_admin` also deletes. A team's grants
of one role in one registry form one list of globs, as a retention policy's
`repositories` (SPEC §8): a repository is covered when some pattern includes it and none
of that list's `!` patterns excludes it. Rights from several teams, or several roles,
add up. A superuser may do everything; an inactive or anonymous user nothing. Django's
`hubimages.delete_manifest` permission, which before teams let its holder delete and edit
retention policies anywhere, still does: it reads as `policy_admin` on every repository
of every registry.

Nothing is cached between requests: a role taken away holds from the next request on.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from django.contrib.auth.models import Permission
from django.db.models import CharField, IntegerField, Q, QuerySet, Value
from django.http import HttpRequest

from hubimages.lib import globs
from hubimages.models import ApiToken, Grant, Repository, Team, UserGroup

Role = Grant.Role
DEFAULT_REGISTRY = "default"
# Each role and the roles that include it.
RANK = {Role.VIEWER: 1, Role.DELETER: 2, Role.POLICY_ADMIN: 3}
# The permission that meant "may delete (and edit retention policies)" before teams.
LEGACY_PERMISSION = ("hubimages", "delete_manifest")
LEGACY_ROLE = Role.POLICY_ADMIN
NOWHERE = Q(pk__in=[])


@dataclass(frozen=True)
class Rights:
    """`patterns[(registry, role)]`: one pattern list per team holding that role there;
    `everywhere`: a role held on every repository of every registry. Build one with
    `rights_for`."""

    everything: bool = False
    everywhere: str | None = None
    patterns: dict[tuple[str, str], tuple[tuple[str, ...], ...]] = field(default_factory=dict)

    def may(self, role: str, registry: str, repository: str) -> bool:
        if self._everywhere(role):
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

    def holds(self, role: str) -> bool:
        """`role` (or a higher one) somewhere: whether to offer what needs it at all."""
        return self._everywhere(role) or bool(self.registries(role))

    def registries(self, role: str = Role.VIEWER) -> list[str]:
        """The registries where some grant gives `role` or above (only those with one:
        for `everything` and `everywhere`, ask `sees_everything`)."""
        held_there = {registry for registry, _ in self.patterns}
        return sorted(r for r in held_there if self._expression(role, r) is not None)

    def sees_everything(self, role: str = Role.VIEWER) -> bool:
        return self._everywhere(role)

    def viewing(self, registry: str) -> Callable[[str], bool] | None:
        """Which repositories of `registry` these rights see, as a test on names (no
        query); None when they see every repository of every registry."""
        if self._everywhere(Role.VIEWER):
            return None
        covering = self._covering(Role.VIEWER, registry)
        return lambda name: bool(covering.match(name))

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
        if self._everywhere(role):
            return queryset
        expression = self._expression(role, registry)
        if expression is None:
            return queryset.none()
        return queryset.filter(**{f"{field}__regex": expression})

    def q(
        self,
        role: str = Role.VIEWER,
        *,
        registry_field: str = "registry__name",
        field: str = "name",
    ) -> Q:
        """A filter for rows naming a registry (`registry_field`) and a repository
        (`field`) that `role` covers, in any registry: one regular expression per registry
        with grants, so the database does the matching, whatever the number of rows."""
        if self._everywhere(role):
            return Q()
        clauses = Q()
        for registry in self.registries(role):
            expression = self._expression(role, registry)
            clauses |= Q(**{registry_field: registry, f"{field}__regex": expression})
        return clauses if clauses else NOWHERE

    def within(
        self,
        role: str = Role.VIEWER,
        *,
        registry_field: str = "registry__name",
        field: str = "name",
    ) -> Q | None:
        """`q`, or None when `role` is held everywhere: the selectors' "no filter at all"."""
        if self._everywhere(role):
            return None
        return self.q(role, registry_field=registry_field, field=field)

    def narrow(
        self,
        queryset: QuerySet,
        role: str = Role.VIEWER,
        *,
        registry_field: str = "registry__name",
        field: str = "name",
    ) -> QuerySet:
        """`queryset` with only the rows `q` lets through (nothing at all: `none()`)."""
        where = self.q(role, registry_field=registry_field, field=field)
        return queryset.none() if where is NOWHERE else queryset.filter(where)

    def capped(self, role: str) -> Rights:
        """These rights, none above `role` (a `read` token: viewing only)."""
        top = RANK[role]
        if self.everything:
            return Rights(everywhere=role)
        everywhere = self.everywhere
        if everywhere is not None and RANK[everywhere] > top:
            everywhere = role
        patterns: dict[tuple[str, str], list[tuple[str, ...]]] = defaultdict(list)
        for (registry, held), lists in self.patterns.items():
            patterns[(registry, held if RANK[held] <= top else role)].extend(lists)
        return Rights(
            everywhere=everywhere, patterns={key: tuple(value) for key, value in patterns.items()}
        )

    def beyond(
        self,
        registries: Sequence[str],
        repositories: Sequence[str],
        role: str = Role.POLICY_ADMIN,
    ) -> tuple[str, str] | None:
        """(registry, repository) that a retention policy with these `registries` and
        `repositories` patterns covers and these rights do not hold `role` on, or None when
        it covers only what they do. Decided on the patterns, not on the repositories that
        exist now, so a policy never reaches a repository pushed later outside them. ""
        stands for a name too intricate to find (still beyond)."""
        if self._everywhere(role):
            return None
        if globs.example_beyond(repositories, []) is None:
            return None  # the policy covers no repository at all
        granted = self.registries(role)
        stranger = globs.example_beyond(
            registries, [[name] for name in granted], names=globs.REGISTRY_NAMES
        )
        if stranger is not None:
            return (stranger, globs.example_beyond(repositories, []) or "")
        for registry in granted:
            if not globs.covers(registries, registry):
                continue
            example = globs.example_beyond(repositories, self.pattern_lists(role, registry))
            if example is not None:
                return (registry, example)
        return None

    def describe(self, role: str) -> str:
        """Where `role` is held, for people: `team/web* in prod; ** in staging`."""
        if self._everywhere(role):
            return "every repository of every registry"
        parts = [
            f"{', '.join(p for patterns in self.pattern_lists(role, registry) for p in patterns)} "
            f"in {registry}"
            for registry in self.registries(role)
        ]
        return "; ".join(parts) or "no repository"

    def _everywhere(self, role: str) -> bool:
        if role not in RANK:
            raise ValueError(f"role must be one of {', '.join(RANK)}, not {role!r}")
        return self.everything or (
            self.everywhere is not None and RANK[self.everywhere] >= RANK[role]
        )

    def pattern_lists(self, role: str, registry: str) -> list[tuple[str, ...]]:
        """Every team's pattern list giving `role` or above in `registry`."""
        return [
            patterns
            for held, rank in RANK.items()
            if rank >= RANK[role]
            for patterns in self.patterns.get((registry, held), ())
        ]

    def _expression(self, role: str, registry: str) -> str | None:
        """The anchored expression of every grant at `role` or above; None: none."""
        if role not in RANK:
            raise ValueError(f"role must be one of {', '.join(RANK)}, not {role!r}")
        bodies = [globs.covering_body(patterns) for patterns in self.pattern_lists(role, registry)]
        bodies = [body for body in bodies if body != globs.NOTHING]
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


# -- retention policies: who may see one, who may change it ----------------------------------


def policy_refusal(
    rights: Rights, registries: Sequence[str], repositories: Sequence[str], *, doing: str
) -> str | None:
    """Why these rights may not `doing` ("save", "run", "delete") a retention policy with
    these `registries` and `repositories` patterns, or None when they may: they must
    administer policies on everything it covers (`Rights.beyond`). The
    message names covered repositories they do not administer (up to three), else a name
    the patterns would cover, and what they do administer."""
    beyond = rights.beyond(registries, repositories)
    if beyond is None:
        return None
    existing = [
        f"{registry}/{name}"
        for registry, name in _covered(registries, repositories)
        .exclude(rights.q(Role.POLICY_ADMIN))
        .values_list("registry__name", "name")
        .order_by("registry__name", "name")[:3]
    ]
    registry, name = beyond
    if existing:
        example = ", ".join(existing)
    elif name and registry:
        example = f"for example any repository named {name} in {registry}"
    else:
        example = "its patterns reach beyond your grants"
    return (
        f"You may not {doing} this policy: it covers repositories you do not administer "
        f"policies for ({example}). You administer policies for "
        f"{rights.describe(Role.POLICY_ADMIN)}: narrow its registries and repositories to "
        "those, or ask an administrator."
    )


def may_see_policy(rights: Rights, registries: Sequence[str], repositories: Sequence[str]) -> bool:
    """A policy shows to whoever may see some repository it covers or could cover: its
    patterns and their grants meet (decided on the patterns, no query), so a policy
    written before its repositories are pushed shows to those who will see them."""
    if rights.sees_everything():
        return True
    for registry in rights.registries(Role.VIEWER):
        if not globs.covers(registries, registry):
            continue
        for patterns in rights.pattern_lists(Role.VIEWER, registry):
            if globs.example([repositories, patterns]) is not None:
                return True
    return False


# -- the Trash: who may put back what a deletion took ----------------------------------------


def restore_refusal(rights: Rights, deletions: Iterable) -> str | None:
    """Why these rights may not restore what these deletions (rows with `registry` and
    `repository`) took, or None when they may: restoring is deleting undone, so it takes
    the `deleter` role on each one's repository (a retention run's: on all of them)."""
    beyond = sorted(
        {
            f"{row.registry}/{row.repository}"
            for row in deletions
            if not rights.may_delete(row.registry, row.repository)
        }
    )
    if not beyond:
        return None
    return (
        f"restoring needs the deleter role on {', '.join(beyond[:3])}"
        f"{f' and {len(beyond) - 3} more' if len(beyond) > 3 else ''}, which you do not hold"
    )


def may_check_trash(rights: Rights, registry: str) -> bool:
    """Asking a registry about its Trash (a job) is for those who may restore in it."""
    return rights.sees_everything(Role.DELETER) or registry in rights.registries(Role.DELETER)


def _covered(registries: Sequence[str], repositories: Sequence[str]) -> QuerySet[Repository]:
    """The repositories a policy's patterns cover, matched in SQL."""
    return Repository.objects.filter(
        registry__name__regex=globs.covering(registries).pattern,
        name__regex=globs.covering(repositories).pattern,
    )


def teams_of(user) -> QuerySet[Team]:
    """The teams `user` is in: as a member, or through a group the identity provider
    named at their last sign-in."""
    groups = UserGroup.objects.filter(user=user).values("name")
    return Team.objects.filter(Q(members=user) | Q(bindings__group__in=groups)).distinct()


def rights_for(user) -> Rights:
    """The user's rights now, in one query: their teams' grants, and a row standing for
    the legacy permission when they hold it (directly or through a Django group)."""
    if user is None or not user.is_authenticated or not user.is_active:
        return NOTHING
    if user.is_superuser:
        return EVERYTHING
    columns = ("team_id", "registry", "role", "pattern")
    grants = Grant.objects.filter(team__in=teams_of(user)).values_list(*columns).order_by()
    app_label, codename = LEGACY_PERMISSION
    legacy = (
        Permission.objects.filter(content_type__app_label=app_label, codename=codename)
        .filter(Q(user=user) | Q(group__user=user))
        .annotate(
            team_id=Value(0, output_field=IntegerField()),
            registry=Value("", output_field=CharField()),
            role=Value(LEGACY_ROLE, output_field=CharField()),
            pattern=Value("", output_field=CharField()),
        )
        .values_list(*columns)
        .order_by()
    )
    return _rights(grants.union(legacy, all=True))


def _rights(rows: Iterable[tuple[int, str, str, str]]) -> Rights:
    lists: dict[tuple[int, str, str], list[str]] = defaultdict(list)
    everywhere = None
    for team_id, registry, role, pattern in rows:
        if team_id == 0:  # the legacy permission (no team has id 0)
            everywhere = role
            continue
        lists[(team_id, registry, role)].append(pattern)
    patterns: dict[tuple[str, str], list[tuple[str, ...]]] = defaultdict(list)
    for (_team, registry, role), team_patterns in sorted(lists.items()):
        patterns[(registry, role)].append(tuple(team_patterns))
    return Rights(
        everywhere=everywhere, patterns={key: tuple(value) for key, value in patterns.items()}
    )


def rights_of(request: HttpRequest) -> Rights:
    """The rights of whoever makes this request, read once per request: the signed-in
    user's, or an API token's user's, no more than `viewer` for a `read` token."""
    user = getattr(request, "user", None)
    token = getattr(request, "auth", None)
    token = token if isinstance(token, ApiToken) else None
    key = (getattr(user, "pk", None), token.pk if token else None, token.scope if token else "")
    kept = getattr(request, "_hubimages_rights", None)
    if kept is not None and kept[0] == key:
        return kept[1]
    rights = rights_for(user)
    if token is not None and token.scope != ApiToken.Scope.READ_DELETE:
        rights = rights.capped(Role.VIEWER)
    request._hubimages_rights = (key, rights)
    return rights
