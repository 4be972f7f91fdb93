"""`python manage.py retention_policy list | export NAME | import FILE [--replace]`:
stored retention policies as SPEC §8's JSON, the same JSON the Retention page imports and
exports."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from hubimages.lib.audit import Actor
from hubimages.management.commands.apply_retention import read_policy
from hubimages.models import RetentionPolicy
from hubimages.retention import policies


class Command(BaseCommand):
    help = "List, export or import stored retention policies (SPEC §8 JSON)."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True)
        actions.add_parser("list", help="the stored policies, one a line")
        export = actions.add_parser("export", help="print a stored policy as JSON")
        export.add_argument("name")
        load = actions.add_parser("import", help="store a policy from its JSON file (or -)")
        load.add_argument("file")
        load.add_argument(
            "--replace", action="store_true", help="replace a stored policy of the same name"
        )

    def handle(self, *args, action, **options):
        if action == "list":
            for row in RetentionPolicy.objects.all():
                schedule = f"every {row.schedule_hours} h" if row.schedule_hours else "no schedule"
                state = "" if row.enabled else ", paused"
                self.stdout.write(f"{row.name}  ({schedule}{state})")
        elif action == "export":
            try:
                row = RetentionPolicy.objects.get(name=options["name"])
            except RetentionPolicy.DoesNotExist:
                raise CommandError(f"no policy named {options['name']}") from None
            self.stdout.write(json.dumps(policies.policy_of(row).as_json(), indent=2))
        else:
            policy = read_policy(options["file"])
            try:
                policies.save_policy(policy, replace=options["replace"], by=Actor.command_line())
            except policies.PolicyExists as error:
                raise CommandError(f"{error}: pass --replace to replace it") from None
            self.stdout.write(f"Stored policy {policy.name}.")
