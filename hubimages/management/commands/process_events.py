from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from hubimages.models import RegistryEvent
from hubimages.sync import events


class Command(BaseCommand):
    help = (
        "Process the registry events still pending (pushes whose manifest could not be "
        "fetched yet, deletes deferred while a repository was locked) and forget old ones. "
        "For cron, or after the registry or the database was unavailable."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--keep-days",
            type=int,
            default=30,
            help="forget processed events received more than this many days ago (default 30)",
        )

    def handle(self, *args, keep_days: int = 30, **options):
        if keep_days < 1:
            raise CommandError("--keep-days must be at least 1")
        # Every registry's, each read with its own client.
        processed = events.process_received()
        pending = RegistryEvent.objects.filter(state=RegistryEvent.State.RECEIVED)
        pruned = events.prune(timezone.now() - timedelta(days=keep_days))
        self.stdout.write(
            f"Processed {processed} registry events; {pending.count()} still pending; "
            f"forgot {pruned} events older than {keep_days} days."
        )
        for event in pending.order_by("pk")[:10]:
            self.stdout.write(
                self.style.WARNING(
                    f"pending: {event.action} {event.repository}@{event.digest or event.tag}: "
                    f"{event.message or 'not tried yet'}"
                )
            )
