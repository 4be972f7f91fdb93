import sys

from django.core.management.base import BaseCommand, CommandError

from hubimages import events
from hubimages.connection import registry_client
from hubimages.locks import LeaseBusy
from hubimages.sync import sync_registry


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

    def handle(self, *args, repositories=None, workers=None, **options):
        from django.conf import settings

        workers = workers or settings.SYNC_WORKERS
        if workers < 1:
            raise CommandError("--workers must be at least 1")
        interactive = sys.stdout.isatty() and options["verbosity"] >= 1
        client = registry_client()

        def progress(line: str) -> None:
            if interactive:
                self.stdout.write(f"\r\x1b[K{line}", ending="")
            elif options["verbosity"] >= 1:
                self.stdout.write(line)

        try:
            summary = sync_registry(
                client,
                repositories=repositories,
                catalog=settings.REGISTRY_REPOSITORIES,
                workers=workers,
                progress=progress,
            )
            # Registry events still pending (a push whose fetch failed, a deferred delete).
            processed_events = events.process_received(client)
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
            f"Synced {summary.repositories} repositories in {summary.duration:.1f}s: "
            f"{summary.manifests_added} manifests added, {summary.tags_changed} tags changed, "
            f"{summary.manifests_removed} manifests removed, "
            f"{summary.repositories_removed} repositories removed, {len(summary.errors)} errors."
        )
        if processed_events:
            self.stdout.write(f"Processed {processed_events} pending registry events.")
        if not summary.succeeded:
            raise CommandError(f"{len(summary.errors)} repositories failed to sync")
