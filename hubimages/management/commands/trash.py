"""`python manage.py trash list [--registry NAME] [--json]` and
`python manage.py trash restore OPERATION [DIGEST …] [--move-tags] [--yes]` (SPEC §12).

`list` asks the registry about each item first, so the states it prints are the
registry's word now; `list --json` prints a shape scripts rely on: keep it stable.
`restore` runs in the foreground, recorded in the audit log as a restore from the command
line, and exits 0 only when every item asked for is back."""

from __future__ import annotations

import getpass
import json
import sys

from django.core.management.base import BaseCommand, CommandError

from hubimages.deletion import planning
from hubimages.jobs import queue
from hubimages.lib import audit
from hubimages.lib.audit import Action, Actor
from hubimages.lib.formatting import human_size, short_digest
from hubimages.lib.leases import LeaseBusy, LeaseLost
from hubimages.management.options import add_registry_option, registry_from
from hubimages.models import Registry
from hubimages.registries.client import ClientsByRegistry
from hubimages.trash import listing, restore, states
from registry.errors import RegistryError


class Command(BaseCommand):
    help = "What deletions kept, and putting it back until the garbage collector runs."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True)
        show = actions.add_parser("list", help="check and list what the Trash holds")
        show.add_argument("--json", action="store_true", help="print JSON (the stable shape)")
        add_registry_option(show)
        back = actions.add_parser("restore", help="restore a deletion, or some of its items")
        back.add_argument("operation", type=int, help="the deletion's id (`trash list`)")
        back.add_argument("digests", nargs="*", metavar="DIGEST", help="only these items")
        back.add_argument(
            "--move-tags",
            action="store_true",
            help="move a tag back even where it now names another manifest",
        )
        back.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    def handle(self, *args, action, **options):
        if action == "list":
            self.list(options)
        else:
            self.restore(options)

    # -- list ---------------------------------------------------------------------------------

    def list(self, options: dict) -> None:
        registries = [registry_from(options)] if options.get("registry") else _with_trash()
        with ClientsByRegistry() as client_for:
            for registry in registries:
                try:
                    states.check_registry(registry, client_for(registry))
                except RegistryError as error:
                    raise CommandError(
                        f"could not ask registry {registry.name} about its Trash: {error}"
                    ) from None
        only = registries[0].name if options.get("registry") else None
        operations = listing.with_items(listing.operations(only))
        if options["json"]:
            document = {"operations": [operation.as_dict() for operation in operations]}
            self.stdout.write(json.dumps(document, indent=2))
            return
        if not operations:
            self.stdout.write("The Trash is empty.")
        for operation in operations:
            deletion = operation.deletion
            policy = f", policy {operation.policy}" if operation.policy else ""
            if deletion.username.endswith(f"policy {operation.policy}"):
                policy = ""  # "alice · policy nightly" names it already
            self.stdout.write(
                f"#{deletion.pk}  {deletion.started_at:%Y-%m-%d %H:%M} UTC  "
                f"{deletion.username}{policy}  {deletion.registry}/{deletion.repository}  "
                f"frees {human_size(deletion.reclaimed_bytes)}"
            )
            for item in operation.items:
                tags = f"  tags: {', '.join(item.tags)}" if item.tags else ""
                self.stdout.write(f"    {item.state:<11} {item.digest[:19]}  {item.kind:<11}{tags}")
                for conflict in item.conflicts:
                    self.stdout.write(
                        f"      tag {conflict['tag']} left naming {short_digest(conflict['now'])}"
                        " (trash restore --move-tags moves it back)"
                    )

    # -- restore ------------------------------------------------------------------------------

    def restore(self, options: dict) -> None:
        deletion = listing.operations().filter(pk=options["operation"]).first()
        if deletion is None:
            raise CommandError(
                f"no deletion {options['operation']} in the Trash (see `manage.py trash list`)"
            )
        digests = [planning.normalize_digest(d) for d in options["digests"]]
        what = f"{len(digests)} item(s) of" if digests else "everything kept of"
        question = (
            f"Restore {what} deletion #{deletion.pk} ({deletion.registry}/"
            f"{deletion.repository}, by {deletion.username})? [y/N] "
        )
        if not options["yes"] and not self.confirm(question):
            self.stderr.write("Nothing restored.")
            return
        username = f"cli:{getpass.getuser()}"
        audit.record(
            Action.RESTORE,
            by=Actor.command_line(),
            target=queue.restore_target([deletion]),
            operations=[deletion.pk],
            digests=digests,
            move_tags=options["move_tags"],
        )
        try:
            with ClientsByRegistry() as client_for:
                outcome = restore.restore_operations(
                    [deletion],
                    digests=digests or None,
                    move_tags=options["move_tags"],
                    client_for=client_for,
                    username=username,
                )
        except (restore.RestoreRefused, LeaseBusy, LeaseLost, RegistryError) as error:
            raise CommandError(str(error)) from None
        for item in outcome.restored:
            self.stdout.write(f"restored  {item['digest']}  {item['kind']}")
        for item in outcome.already:
            self.stdout.write(f"back      {item['digest']}  {item['kind']} (already)")
        for conflict in outcome.conflicts:
            done = "moved back" if conflict["moved"] else "left alone (--move-tags moves it)"
            self.stderr.write(
                f"tag {conflict['tag']} named {short_digest(conflict['now'])}: {done}"
            )
        for item in outcome.failed:
            self.stderr.write(f"FAILED    {item['digest']}: {item['reason']}")
        self.stdout.write(outcome.message())
        if not outcome.complete:
            raise CommandError(f"{len(outcome.failed)} item(s) could not be restored")

    def confirm(self, question: str) -> bool:
        if not sys.stdin.isatty():
            raise CommandError(
                "refusing to restore without confirmation: standard input is not a terminal; "
                "pass --yes to confirm"
            )
        self.stderr.write(question, ending="")
        self.stderr.flush()
        return sys.stdin.readline().strip().lower() in ("y", "yes")


def _with_trash() -> list[Registry]:
    """The registries whose Trash holds something."""
    return list(Registry.objects.filter(name__in=listing.registries()).order_by("name"))
