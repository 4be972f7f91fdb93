"""`python manage.py team …`: teams, their members, group bindings and grants, for
scripted set-up (SPEC §14). Every change is recorded in the audit log as made from the
command line.

    team create TEAM                  team delete TEAM
    team add TEAM USER…               team remove TEAM USER…
    team bind TEAM --group GROUP      team unbind TEAM --group GROUP
    team grant TEAM ROLE PATTERN [--registry NAME]
    team revoke TEAM ROLE PATTERN [--registry NAME]
    team list [--json]
"""

from __future__ import annotations

import json

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from hubimages.lib.audit import Actor
from hubimages.models import Grant, Team
from hubimages.teams import services

ROLES = Grant.Role.values


class Command(BaseCommand):
    help = "Create teams, add members, bind identity-provider groups, grant roles."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True)
        actions.add_parser("create", help="a new team").add_argument("team")
        actions.add_parser("delete", help="a team, its bindings and grants").add_argument("team")
        for name, text in (("add", "add users to a team"), ("remove", "take users out")):
            sub = actions.add_parser(name, help=text)
            sub.add_argument("team")
            sub.add_argument("users", nargs="+", metavar="USER")
        for name, text in (
            ("bind", "whoever the identity provider puts in GROUP is in the team"),
            ("unbind", "undo a bind"),
        ):
            sub = actions.add_parser(name, help=text)
            sub.add_argument("team")
            sub.add_argument("--group", required=True)
        for name, text in (
            ("grant", "give the team ROLE on the repositories PATTERN names (!PATTERN: except)"),
            ("revoke", "take a grant back"),
        ):
            sub = actions.add_parser(name, help=text)
            sub.add_argument("team")
            sub.add_argument("role", choices=ROLES)
            sub.add_argument("pattern", help="a repository glob: team/**, team/*, !team/golden")
            sub.add_argument("--registry", default="default")
        actions.add_parser("list", help="every team, its members, groups and grants").add_argument(
            "--json", action="store_true"
        )

    def handle(self, *args, action, **options):
        by = Actor.command_line()
        try:
            getattr(self, f"do_{action}")(by=by, **options)
        except services.TeamError as error:
            raise CommandError(str(error)) from None

    def do_create(self, *, by, team, **_):
        services.create_team(team, by=by)
        self.stdout.write(f"Created team {team}.")

    def do_delete(self, *, by, team, **_):
        services.delete_team(_team(team), by=by)
        self.stdout.write(f"Deleted team {team}.")

    def do_add(self, *, by, team, users, **_):
        added = services.add_members(_team(team), _users(users), by=by)
        self.stdout.write(f"Added to {team}: {', '.join(added) or 'nobody new'}.")

    def do_remove(self, *, by, team, users, **_):
        removed = services.remove_members(_team(team), _users(users), by=by)
        self.stdout.write(f"Removed from {team}: {', '.join(removed) or 'nobody'}.")

    def do_bind(self, *, by, team, group, **_):
        bound = services.bind_group(_team(team), group, by=by)
        name = services.group_name(group)
        self.stdout.write(
            f"Bound group {name} to {team}." if bound else f"{name} was bound to {team} already."
        )

    def do_unbind(self, *, by, team, group, **_):
        if not services.unbind_group(_team(team), group, by=by):
            raise CommandError(f"group {services.group_name(group)} is not bound to {team}")
        self.stdout.write(f"Unbound group {services.group_name(group)} from {team}.")

    def do_grant(self, *, by, team, role, pattern, registry, **_):
        made = services.grant(_team(team), role, pattern, registry=registry, by=by)
        what = f"{role} on {pattern} in registry {registry}"
        self.stdout.write(f"Granted {team} {what}." if made else f"{team} had {what} already.")

    def do_revoke(self, *, by, team, role, pattern, registry, **_):
        if not services.revoke(_team(team), role, pattern, registry=registry, by=by):
            raise CommandError(f"{team} has no grant {role} on {pattern} in registry {registry}")
        self.stdout.write(f"Revoked {team}'s {role} on {pattern} in registry {registry}.")

    def do_list(self, *, json: bool = False, **_):
        teams = [
            _team_json(team)
            for team in Team.objects.prefetch_related("members", "bindings", "grants")
        ]
        if json:
            self.stdout.write(_dumps({"teams": teams}))
            return
        for team in teams:
            self.stdout.write(team["name"])
            self.stdout.write(f"  members: {', '.join(team['members']) or '—'}")
            self.stdout.write(f"  groups:  {', '.join(team['groups']) or '—'}")
            for grant in team["grants"]:
                self.stdout.write(
                    f"  {grant['role']:<13} {grant['pattern']}  (registry {grant['registry']})"
                )


def _dumps(value) -> str:
    return json.dumps(value, indent=2)


def _team(name: str) -> Team:
    try:
        return Team.objects.get(name=name)
    except Team.DoesNotExist:
        raise CommandError(f"no team named {name}: create it with `team create {name}`") from None


def _users(names: list[str]) -> list:
    model = get_user_model()
    found = {user.get_username(): user for user in model.objects.filter(username__in=names)}
    missing = [name for name in names if name not in found]
    if missing:
        raise CommandError(
            f"no user {', '.join(missing)}: people who sign in through the identity provider "
            "appear at their first sign-in; bind their group instead (team bind TEAM --group G)"
        )
    return [found[name] for name in dict.fromkeys(names)]


def _team_json(team: Team) -> dict:
    return {
        "name": team.name,
        "members": sorted(user.get_username() for user in team.members.all()),
        "groups": sorted(binding.group for binding in team.bindings.all()),
        "grants": [
            {"role": g.role, "pattern": g.pattern, "registry": g.registry}
            for g in sorted(team.grants.all(), key=lambda g: (g.registry, g.role, g.pattern))
        ],
    }
