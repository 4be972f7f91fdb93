import json

from django.core.management.base import BaseCommand, CommandError

from hubimages import inventory
from hubimages.models import Repository


class Command(BaseCommand):
    help = "Print a repository's Image Management rows (SPEC §3)."

    def add_arguments(self, parser):
        parser.add_argument("repository")
        parser.add_argument("--json", action="store_true", help="print JSON (the stable shape)")
        parser.add_argument("--search", default="")
        parser.add_argument("--filter", default=inventory.DEFAULT_FILTER, choices=inventory.FILTERS)
        parser.add_argument("--sort", default=inventory.DEFAULT_SORT, choices=inventory.SORTS)
        parser.add_argument("--status", default="", choices=[s for s in inventory.STATUSES if s])

    def handle(self, *args, repository, search, filter, sort, status, **options):
        try:
            repo = Repository.objects.get(name=repository)
        except Repository.DoesNotExist:
            raise CommandError(f"no repository {repository!r}: run sync_registry first") from None
        query = inventory.ListQuery(search=search, filter=filter, sort=sort, status=status)
        rows = list(inventory.with_details(inventory.top_level(repo, query)))
        listing = {
            "repository": repo.name,
            "count": len(rows),
            "results": [inventory.row_as_dict(row) for row in rows],
        }
        if options["json"]:
            self.stdout.write(json.dumps(listing, indent=2))
            return
        for row in listing["results"]:
            self.stdout.write(
                f"{row['digest'][:19]}  {row['kind']:<11} {row['size']:>12}  "
                f"{','.join(row['platforms']) or '-':<24} {','.join(row['tags'])}"
            )
        self.stdout.write(f"{listing['count']} items")
