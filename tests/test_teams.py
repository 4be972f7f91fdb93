"""Teams and grants as data (SPEC §14): what a user may do where, the services that
change teams (each change audited), and `manage.py team`."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from hubimages.lib.audit import Actor
from hubimages.models import AuditEntry, Grant, Repository, Team, UserGroup
from hubimages.teams import rights, services
from hubimages.teams.rights import rights_for

pytestmark = pytest.mark.django_db

ADMIN = Actor(name="boss")
NAMES = [
    "team/api",
    "team/web",
    "team/golden",
    "team/tools/lint",
    "other/api",
    "teamx/api",
    "solo",
    "a",
]


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice")


def team_with(name: str, *grants: tuple[str, str] | tuple[str, str, str]) -> Team:
    team = services.create_team(name, by=ADMIN)
    for role, pattern, *registry in grants:
        services.grant(
            team, role, pattern, registry=registry[0] if registry else "default", by=ADMIN
        )
    return team


def visible(user, role: str = "viewer", registry: str = "default") -> list[str]:
    mine = rights_for(user)
    return [name for name in NAMES if mine.may(role, registry, name)]


def test_a_stranger_may_do_nothing_and_a_superuser_everything(alice, django_user_model):
    team_with("platform", ("deleter", "**"))
    assert visible(alice) == []
    boss = django_user_model.objects.create_superuser("root")
    assert visible(boss, "policy_admin") == NAMES
    assert rights_for(boss).may_view("staging", "anything/at/all")


def test_a_viewer_sees_what_the_glob_names_and_deletes_nothing(alice):
    team = team_with("api-team", ("viewer", "team/*"))
    services.add_members(team, [alice], by=ADMIN)
    assert visible(alice) == ["team/api", "team/web", "team/golden"]  # * stops at /
    assert visible(alice, "deleter") == []
    assert not rights_for(alice).may_delete("default", "team/api")


def test_roles_are_ranked_a_policy_admin_deletes_and_a_deleter_views(alice):
    team = team_with("ops", ("policy_admin", "team/api"), ("deleter", "team/web"))
    services.add_members(team, [alice], by=ADMIN)
    mine = rights_for(alice)
    assert mine.may_view("default", "team/api") and mine.may_delete("default", "team/api")
    assert mine.may_admin_policies("default", "team/api")
    assert mine.may_delete("default", "team/web") and not mine.may_admin_policies(
        "default", "team/web"
    )
    assert mine.role("default", "team/api") == "policy_admin"
    assert mine.role("default", "team/web") == "deleter"
    assert mine.role("default", "other/api") is None


def test_an_exclusion_takes_a_repository_out_of_that_teams_grants_of_that_role_only(alice):
    ops = team_with("ops", ("deleter", "team/**"), ("deleter", "!team/golden"))
    services.add_members(ops, [alice], by=ADMIN)
    assert visible(alice, "deleter") == ["team/api", "team/web", "team/tools/lint"]
    # Another team's grant is not narrowed by ops's exclusion: rights add up.
    guards = team_with("guards", ("viewer", "team/golden"))
    services.add_members(guards, [alice], by=ADMIN)
    assert rights_for(alice).may_view("default", "team/golden")
    assert not rights_for(alice).may_delete("default", "team/golden")


def test_only_exclusions_cover_nothing(alice):
    team = team_with("odd", ("viewer", "!team/api"))
    services.add_members(team, [alice], by=ADMIN)
    assert visible(alice) == []


def test_grants_hold_in_their_own_registry(alice):
    team = team_with("staging-people", ("deleter", "**", "staging"))
    services.add_members(team, [alice], by=ADMIN)
    assert visible(alice, "deleter", "staging") == NAMES
    assert visible(alice, "viewer", "default") == []


def test_a_group_bound_before_anyone_signed_in_gives_its_rights_at_sign_in(alice):
    team = team_with("platform", ("deleter", "team/**"))
    services.bind_group(team, "/platform-admins", by=ADMIN)  # Keycloak's full path
    assert visible(alice) == []
    services.refresh_groups(alice, ["platform-admins", "everyone"])
    assert visible(alice, "deleter") == ["team/api", "team/web", "team/golden", "team/tools/lint"]


def test_a_group_the_provider_no_longer_names_takes_its_rights_away_on_refresh(alice):
    team = team_with("platform", ("viewer", "**"))
    services.bind_group(team, "platform", by=ADMIN)
    services.refresh_groups(alice, ["platform", "other"])
    assert visible(alice) == NAMES
    assert services.refresh_groups(alice, ["/other"]) == ["other"]
    assert visible(alice) == []
    assert list(UserGroup.objects.filter(user=alice).values_list("name", flat=True)) == ["other"]


def test_group_names_match_exactly_case_included(alice):
    team = team_with("platform", ("viewer", "**"))
    services.bind_group(team, "Platform", by=ADMIN)
    services.refresh_groups(alice, ["platform"])
    assert visible(alice) == []


def test_an_inactive_user_may_do_nothing(alice):
    team = team_with("platform", ("viewer", "**"))
    services.add_members(team, [alice], by=ADMIN)
    alice.is_active = False
    assert visible(alice) == []


def test_lowering_a_role_holds_at_the_next_question(alice):
    team = team_with("platform", ("deleter", "**"))
    services.add_members(team, [alice], by=ADMIN)
    assert rights_for(alice).may_delete("default", "solo")
    services.revoke(team, "deleter", "**", by=ADMIN)
    services.grant(team, "viewer", "**", by=ADMIN)
    assert not rights_for(alice).may_delete("default", "solo")
    assert rights_for(alice).may_view("default", "solo")


def test_the_rights_are_read_in_one_query(alice, django_assert_num_queries):
    for i in range(5):
        team = team_with(f"t{i}", ("viewer", f"team{i}/**"), ("deleter", f"!team{i}/x"))
        services.add_members(team, [alice], by=ADMIN)
        services.bind_group(team, f"g{i}", by=ADMIN)
    services.refresh_groups(alice, ["g1", "g2"])
    with django_assert_num_queries(1):
        mine = rights_for(alice)
        mine.may_view("default", "team3/api")
        mine.may_delete("default", "team3/api")


def test_the_queryset_filter_agrees_with_may_for_every_name_and_role(alice):
    """The SQL filter (REGEXP on SQLite, `~` on PostgreSQL) answers as Python's check."""
    for name in NAMES:
        Repository.objects.create(name=name)
    ops = team_with("ops", ("deleter", "team/**"), ("deleter", "!team/golden"))
    guests = team_with("guests", ("viewer", "?/*"), ("viewer", "a"), ("viewer", "team/g*"))
    admins = team_with("admins", ("policy_admin", "other/*"))
    services.add_members(ops, [alice], by=ADMIN)
    services.add_members(guests, [alice], by=ADMIN)
    services.bind_group(admins, "admins", by=ADMIN)
    services.refresh_groups(alice, ["admins"])
    mine = rights_for(alice)
    for role in ("viewer", "deleter", "policy_admin"):
        filtered = sorted(
            mine.repositories(Repository.objects.all(), role=role).values_list("name", flat=True)
        )
        assert filtered == sorted(visible(alice, role)), role
    assert sorted(mine.repositories(Repository.objects.all()).values_list("name", flat=True)) == [
        "a",
        "other/api",
        "team/api",
        "team/golden",
        "team/tools/lint",
        "team/web",
    ]
    assert not mine.repositories(Repository.objects.all(), registry="staging").exists()
    assert rights.NOTHING.repositories(Repository.objects.all()).count() == 0
    assert rights.EVERYTHING.repositories(Repository.objects.all()).count() == len(NAMES)


# -- services: each change audited, or nothing --------------------------------------------


def test_each_change_is_audited_with_who_and_what(alice):
    by = Actor(name="boss", user_id=7, address="192.0.2.1")
    team = services.create_team("platform", by=by)
    services.add_members(team, [alice], by=by)
    services.bind_group(team, "/ops", by=by)
    services.grant(team, "deleter", "team/**", by=by)
    services.revoke(team, "deleter", "team/**", by=by)
    services.unbind_group(team, "ops", by=by)
    services.remove_members(team, [alice], by=by)
    services.delete_team(team, by=by)
    entries = list(AuditEntry.objects.order_by("id"))
    assert [(e.action, e.target, e.actor, e.actor_id, e.address) for e in entries] == [
        (action, "platform", "boss", 7, "192.0.2.1")
        for action in (
            "team_created",
            "member_added",
            "group_bound",
            "grant_added",
            "grant_revoked",
            "group_unbound",
            "member_removed",
            "team_deleted",
        )
    ]
    assert entries[1].details == {"member": "alice"}
    assert entries[2].details == {"group": "ops"}
    assert entries[3].details == {"role": "deleter", "pattern": "team/**", "registry": "default"}


def test_a_change_that_changes_nothing_writes_no_audit_entry(alice):
    team = services.create_team("platform", by=ADMIN)
    services.add_members(team, [alice], by=ADMIN)
    services.grant(team, "viewer", "**", by=ADMIN)
    services.bind_group(team, "g", by=ADMIN)
    before = AuditEntry.objects.count()
    assert services.add_members(team, [alice], by=ADMIN) == []
    assert services.grant(team, "viewer", "**", by=ADMIN) is False
    assert services.bind_group(team, "/g", by=ADMIN) is False
    assert services.revoke(team, "deleter", "**", by=ADMIN) is False
    assert services.unbind_group(team, "nope", by=ADMIN) is False
    assert AuditEntry.objects.count() == before


def test_a_refused_change_writes_neither_the_change_nor_its_entry():
    services.create_team("platform", by=ADMIN)
    with pytest.raises(services.TeamError, match="exists already"):
        services.create_team("platform", by=ADMIN)
    team = Team.objects.get()
    for role, pattern, registry in [
        ("owner", "**", "default"),
        ("viewer", "Team/API", "default"),
        ("viewer", "**", "Prod!"),
    ]:
        with pytest.raises(services.TeamError):
            services.grant(team, role, pattern, registry=registry, by=ADMIN)
    with pytest.raises(services.TeamError):
        services.create_team("no spaces", by=ADMIN)
    assert list(AuditEntry.objects.values_list("action", flat=True)) == ["team_created"]
    assert not Grant.objects.exists()


# -- manage.py team ------------------------------------------------------------------------


def team_command(*args: str) -> str:
    out = StringIO()
    call_command("team", *args, stdout=out)
    return out.getvalue()


def test_the_team_command_sets_up_a_team_from_a_script(alice, django_user_model):
    django_user_model.objects.create_user("bob")
    assert "Created team platform" in team_command("create", "platform")
    assert "alice, bob" in team_command("add", "platform", "alice", "bob", "alice")
    assert "Bound group platform-admins" in team_command(
        "bind", "platform", "--group", "/platform-admins"
    )
    team_command("grant", "platform", "deleter", "team/**")
    team_command("grant", "platform", "deleter", "!team/golden")
    team_command("grant", "platform", "viewer", "**", "--registry", "staging")
    listed = json.loads(team_command("list", "--json"))
    assert listed == {
        "teams": [
            {
                "name": "platform",
                "members": ["alice", "bob"],
                "groups": ["platform-admins"],
                "grants": [
                    {"role": "deleter", "pattern": "!team/golden", "registry": "default"},
                    {"role": "deleter", "pattern": "team/**", "registry": "default"},
                    {"role": "viewer", "pattern": "**", "registry": "staging"},
                ],
            }
        ]
    }
    assert "platform" in team_command("list")
    assert rights_for(alice).may_delete("default", "team/api")
    assert not rights_for(alice).may_view("default", "team/golden")

    team_command("revoke", "platform", "deleter", "team/**")
    team_command("remove", "platform", "bob")
    team_command("unbind", "platform", "--group", "platform-admins")
    assert not rights_for(alice).may_view("default", "team/api")
    team_command("delete", "platform")
    assert not Team.objects.exists()
    entries = AuditEntry.objects.order_by("id")
    assert entries.count() == 11
    assert all(entry.actor.endswith("(command line)") for entry in entries)
    assert {entry.address for entry in entries} == {""}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("add", "nobody-team", "alice"), "no team named nobody-team"),
        (("add", "platform", "alice", "ghost"), "no user ghost"),
        (("grant", "platform", "viewer", "Team/API"), "cannot match a repository name"),
        (("grant", "platform", "viewer", "**", "--registry", "Prod"), "not a registry name"),
        (("revoke", "platform", "viewer", "**"), r"has no grant viewer on \*\*"),
        (("unbind", "platform", "--group", "g"), "group g is not bound to platform"),
        (("create", "platform"), "exists already"),
        (("bind", "platform", "--group", "/"), "name the group"),
    ],
)
def test_the_team_command_says_what_is_wrong(alice, args, message):
    team_command("create", "platform")
    with pytest.raises(CommandError, match=message):
        team_command(*args)
    assert AuditEntry.objects.count() == 1


def test_the_team_command_refuses_an_unknown_role():
    with pytest.raises(CommandError, match="invalid choice: 'owner'"):
        team_command("grant", "platform", "owner", "**")


# -- the legacy permission, tokens, and policies' patterns ------------------------------------


def test_the_legacy_delete_permission_reads_as_policy_admin_everywhere_in_the_same_query(
    alice, django_assert_num_queries
):
    from django.contrib.auth.models import Group, Permission

    cleaners = Group.objects.create(name="cleaners")
    cleaners.permissions.add(Permission.objects.get(codename="delete_manifest"))
    alice.groups.add(cleaners)
    team = team_with("ops", ("viewer", "team/*"))
    services.add_members(team, [alice], by=ADMIN)

    with django_assert_num_queries(1):
        mine = rights_for(alice)
    assert mine.may_admin_policies("staging", "anything/at/all")
    assert mine.sees_everything("policy_admin")
    assert mine.beyond(["*"], ["**"]) is None


def test_a_read_token_caps_every_role_at_viewer(alice, django_user_model):
    from types import SimpleNamespace

    from hubimages.accounts import tokens
    from hubimages.models import ApiToken

    team = team_with("ops", ("policy_admin", "team/**"))
    services.add_members(team, [alice], by=ADMIN)
    boss = django_user_model.objects.create_superuser("root")
    for user in (alice, boss):
        read = tokens.issue(user=user, name="r", scope=ApiToken.Scope.READ).row
        mine = rights.rights_of(SimpleNamespace(user=user, auth=read))
        assert mine.may_view("default", "team/api")
        assert not mine.may_delete("default", "team/api")
        assert not mine.holds("deleter")


@pytest.mark.parametrize(
    ("patterns", "within", "example"),
    [
        (["team/web*"], [["team/web*"]], None),
        (["team/web-*"], [["team/web*"]], None),
        (["**"], [["team/web*"]], "a"),
        (["team/**"], [["team/*"], ["team/*/**"]], None),
        (["team/**"], [["team/**", "!team/golden"]], "team/golden"),
        (["team/**", "!team/golden"], [["team/**", "!team/golden"]], None),
        (["*/api"], [["team/*"]], "a/api"),
        (["!team/api"], [], None),  # only exclusions: covers nothing
        (["team/?"], [["team/*"]], None),
    ],
)
def test_a_policys_patterns_reach_beyond_a_grant_exactly_when_some_name_proves_it(
    patterns, within, example
):
    from hubimages.lib import globs

    assert globs.example_beyond(patterns, within) == example


def test_registry_patterns_are_decided_on_registry_names():
    from hubimages.lib import globs

    assert globs.example_beyond(["*"], [["prod"], ["staging"]], names=globs.REGISTRY_NAMES) == "a"
    assert globs.example_beyond(["prod"], [["prod"]], names=globs.REGISTRY_NAMES) is None
    assert globs.example_beyond(["prod-*"], [["prod"]], names=globs.REGISTRY_NAMES) == "prod-"
