import json

from django.core.management.base import BaseCommand, CommandError

from hubimages.inventory import lists
from hubimages.management.options import add_registry_option, registry_from
from hubimages.models import Repository


class Command(BaseCommand):
    help = "Print a repository's Image Management rows (SPEC §3)."

    def add_arguments(self, parser):
        parser.add_argument("repository")
        parser.add_argument("--json", action="store_true", help="print JSON (the stable shape)")
        parser.add_argument("--search", default="")
        parser.add_argument("--filter", default=lists.DEFAULT_FILTER, choices=lists.FILTERS)
        parser.add_argument("--sort", default=lists.DEFAULT_SORT, choices=lists.SORTS)
        parser.add_argument("--status", default="", choices=[s for s in lists.STATUSES if s])
        add_registry_option(parser)

    def handle(self, *args, repository, search, filter, sort, status, **options):
        registry = registry_from(options)
        try:
            repo = registry.repositories.get(name=repository)
        except Repository.DoesNotExist:
            raise CommandError(
                f"no repository {repository!r} in registry {registry.name}: run sync_registry first"
            ) from None
        query = lists.ListQuery(search=search, filter=filter, sort=sort, status=status)
        rows = list(lists.with_details(lists.top_level(repo, query)))
        listing = {
            "registry": registry.name,
            "repository": repo.name,
            "count": len(rows),
            "results": [lists.row_as_dict(row, registry=registry.name) for row in rows],
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
