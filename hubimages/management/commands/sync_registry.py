import sys

from django.core.management.base import BaseCommand, CommandError

from hubimages.lib.formatting import plural
from hubimages.lib.leases import LeaseBusy
from hubimages.management.options import add_registry_option, registry_from
from hubimages.registries import rows
from hubimages.registries.client import registry_client
from hubimages.storage.figures import after_full_sync
from hubimages.sync import events
from hubimages.sync.service import SyncSummary, sync_registry


class Command(BaseCommand):
    help = "Read the registry's catalog, tags and manifests into the database (SPEC §5)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--repository",
            action="append",
            dest="repositories",
            metavar="NAME",
            help="sync only this repository (repeatable)",
        )
        parser.add_argument("--workers", type=int, default=None, help="concurrent requests")
        add_registry_option(parser)
        parser.add_argument(
            "--prune",
            action="store_true",
            help="remove repositories the registry no longer has even when they are all, or "
            "more than half, of those known (without it such a sync keeps them and says so)",
        )

    def handle(self, *args, repositories=None, workers=None, prune=False, **options):
        from django.conf import settings

        workers = workers or settings.SYNC_WORKERS
        if workers < 1:
            raise CommandError("--workers must be at least 1")
        interactive = sys.stdout.isatty() and options["verbosity"] >= 1
        registry = registry_from(options)
        config = rows.configuration(registry.name)
        client = registry_client(registry)

        def progress(line: str) -> None:
            if interactive:
                self.stdout.write(f"\r\x1b[K{line}", ending="")
            elif options["verbosity"] >= 1:
                self.stdout.write(line)

        try:
            summary = sync_registry(
                client,
                repositories=repositories,
                registry=registry,
                catalog=config.repositories if config else (),
                workers=workers,
                progress=progress,
                prune=prune,
                after_full_sync=after_full_sync,
            )
            # Registry events still pending (a push whose fetch failed, a deferred delete).
            processed_events = events.process_received(client, registry)
        except LeaseBusy as error:
            raise CommandError(str(error)) from None
        finally:
            client.close()
        if interactive:
            self.stdout.write("")
        for warning in summary.warnings:
            self.stdout.write(self.style.WARNING(f"warning: {warning}"))
        for error in summary.errors:
            self.stderr.write(self.style.ERROR(f"error: {error}"))
        self.stdout.write(
            f"Synced {plural(summary.repositories, 'repository')} in {summary.duration:.1f}s: "
            f"{plural(summary.manifests_added, 'manifest')} added, "
            f"{plural(summary.tags_changed, 'tag')} changed, "
            f"{plural(summary.manifests_removed, 'manifest')} removed, "
            f"{plural(summary.repositories_removed, 'repository')} removed"
            + (f", {len(summary.held_back)} held back" if summary.held_back else "")
            + f", {plural(len(summary.errors), 'error')}."
        )
        if processed_events:
            self.stdout.write(f"Processed {processed_events} pending registry events.")
        if not summary.succeeded:
            raise CommandError(failure_message(summary))


def failure_message(summary: SyncSummary) -> str:
    """What went wrong, in one line: the catalog could not be read, "1 repository failed
    to sync", repositories that seem gone kept for want of --prune."""
    problems = []
    if summary.catalog_failed:
        problems.append("the catalog could not be read, so no repository was synced")
    if summary.repositories_failed:
        problems.append(f"{plural(summary.repositories_failed, 'repository')} failed to sync")
    if summary.held_back:
        problems.append(
            f"{plural(len(summary.held_back), 'repository', 'repositories')} that seem gone "
            "were kept (see the warning; --prune removes them)"
        )
    return "; ".join(problems)
