"""`python manage.py delete_images REPOSITORY DIGEST... [--dry-run] [--json] [--yes]`.

The same plan as the web preview (SPEC §4). `--dry-run --json` prints a shape scripts rely
on: keep it stable.
"""

import getpass
import json
import re
import sys

from django.core.management.base import BaseCommand, CommandError

from hubimages.deletion import execution, planning
from hubimages.lib.formatting import human_size
from hubimages.lib.leases import LeaseLost, RepositoryBusy
from hubimages.management.options import add_registry_option, registry_from
from hubimages.models import Manifest, Repository
from hubimages.registries.client import registry_client

MIN_PREFIX = 12
_HEX = re.compile(r"^[a-f0-9]+$")


class Command(BaseCommand):
    help = "Delete manifests with what goes with them (SPEC §4); --dry-run shows the plan."

    def add_arguments(self, parser):
        parser.add_argument("repository")
        parser.add_argument(
            "digests",
            nargs="+",
            metavar="DIGEST",
            help=f"a digest, with or without sha256:, or a unique prefix of ≥ {MIN_PREFIX} hex",
        )
        parser.add_argument("--dry-run", action="store_true", help="show the plan only")
        parser.add_argument("--json", action="store_true", help="print JSON (the stable shape)")
        parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        add_registry_option(parser)

    def handle(self, *args, repository, digests, dry_run, yes, **options):
        as_json = options["json"]
        registry = registry_from(options)
        try:
            repo = registry.repositories.get(name=repository)
        except Repository.DoesNotExist:
            raise CommandError(
                f"no repository {repository!r} in registry {registry.name}: run sync_registry first"
            ) from None
        selected = [resolve_digest(repo, text) for text in digests]
        plan = planning.plan_deletion(repository=repo, digests=selected)
        if plan.refused:
            raise CommandError(
                "cannot delete:\n"
                + "\n".join(f"  {item.digest}: {item.reason}" for item in plan.refused)
            )
        if dry_run:
            if as_json:
                self.stdout.write(json.dumps(plan.as_dict(), indent=2))
            else:
                self.show(plan)
            return
        if not as_json:
            self.show(plan)
        if not plan.delete:
            self.stdout.write("Nothing to delete.")
            return
        if not yes and not self.confirm(plan):
            self.stderr.write("Nothing deleted.")
            return
        outcome = self.delete(repo, selected, plan)
        if outcome.stale:
            if not as_json:
                self.show(outcome.plan)
            raise CommandError(
                "the repository changed since this plan was made: nothing was deleted; "
                "check the plan and run the command again"
            )
        self.report(outcome, as_json)
        if not outcome.succeeded:
            raise CommandError(
                f"{len(outcome.failed) + len(outcome.skipped)} manifests could not be deleted"
            )

    def confirm(self, plan: planning.DeletionPlan) -> bool:
        if not sys.stdin.isatty():
            raise CommandError(
                "refusing to delete without confirmation: standard input is not a terminal; "
                "pass --yes to confirm"
            )
        self.stderr.write(
            f"Delete {plan.manifest_count} manifests and reclaim "
            f"{human_size(plan.reclaimable_bytes)}? [y/N] ",
            ending="",
        )
        self.stderr.flush()
        return sys.stdin.readline().strip().lower() in ("y", "yes")

    def delete(self, repo, selected, plan) -> execution.DeletionOutcome:
        client = registry_client(repo.registry)
        try:
            return execution.execute_deletion(
                repository=repo,
                digests=selected,
                fingerprint=plan.fingerprint,
                user=None,
                client=client,
                username=f"cli:{getpass.getuser()}",
            )
        except (RepositoryBusy, LeaseLost, execution.RecheckFailed) as error:
            raise CommandError(str(error)) from None
        finally:
            client.close()

    def show(self, plan: planning.DeletionPlan) -> None:
        write = self.stdout.write
        write(f"Plan for {plan.repository}:")
        for group, items in plan.groups():
            write(f"  {group} (selected)")
            for item in items:
                tags = f"  tags: {', '.join(item.tags)}" if item.tags else ""
                write(
                    f"    delete  {item.digest[:19]}  {item.kind:<11} {item.platform or '-':<16}"
                    f" {human_size(item.size):>9}  {item.because}{tags}"
                )
        for item in plan.keep:
            write(f"  keep    {item.digest[:19]}  {item.kind:<11} {item.reason}")
        if plan.tags_removed:
            write(f"Tags removed: {', '.join(plan.tags_removed)}")
        write(
            f"{plan.manifest_count} manifests and {plan.tag_count} tags; reclaims "
            f"{human_size(plan.reclaimable_bytes)} ({plan.reclaimable_bytes} bytes) when the "
            "registry's garbage collector runs."
        )

    def report(self, outcome: execution.DeletionOutcome, as_json: bool) -> None:
        if as_json:
            self.stdout.write(
                json.dumps(
                    {
                        "deleted": [
                            {"digest": i.digest, "kind": i.kind, "tags": list(i.tags)}
                            for i in outcome.deleted
                        ],
                        "failed": [
                            {"digest": i.digest, "reason": i.reason} for i in outcome.failed
                        ],
                        "skipped": [
                            {"digest": i.digest, "reason": i.reason} for i in outcome.skipped
                        ],
                        "reclaimed_bytes": outcome.reclaimed_bytes,
                    },
                    indent=2,
                )
            )
            return
        for item in outcome.deleted:
            self.stdout.write(f"deleted  {item.digest}  {item.kind}")
        for item in outcome.failed:
            self.stderr.write(f"FAILED   {item.digest}: {item.reason}")
        for item in outcome.skipped:
            self.stderr.write(f"skipped  {item.digest}: {item.reason}")
        for warning in outcome.warnings:
            self.stderr.write(f"warning: {warning}")
        self.stdout.write(
            f"Deleted {len(outcome.deleted)} manifests; the registry's garbage collector will "
            f"free {human_size(outcome.reclaimed_bytes)} ({outcome.reclaimed_bytes} bytes)."
        )


def resolve_digest(repository: Repository, text: str) -> str:
    """The full digest of the one manifest `text` names: a digest or a unique prefix."""
    value = text.strip().lower()
    algorithm, _, hexpart = value.rpartition(":")
    if algorithm not in ("", "sha256") or not _HEX.match(hexpart):
        raise CommandError(
            f"{text!r} is not a digest: give sha256:<hex> or at least {MIN_PREFIX} hex digits"
        )
    if len(hexpart) < MIN_PREFIX:
        raise CommandError(f"{text!r} is too short: give at least {MIN_PREFIX} hex digits")
    matches = list(
        Manifest.objects.filter(repository=repository, digest__startswith=f"sha256:{hexpart}")
        .order_by("digest")
        .values_list("digest", flat=True)[:3]
    )
    if not matches:
        raise CommandError(f"no manifest {text} in repository {repository.name}")
    if len(matches) > 1:
        shown = ", ".join(m[:19] for m in matches[:2])
        raise CommandError(
            f"{text} is ambiguous in {repository.name}: it matches {shown}"
            f"{' and more' if len(matches) > 2 else ''}; give more digits"
        )
    return matches[0]
