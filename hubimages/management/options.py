"""What several commands share: `--registry NAME` (SPEC §11)."""

from django.core.management.base import CommandError

from hubimages.models import Registry
from hubimages.registries import rows


def add_registry_option(parser) -> None:
    parser.add_argument(
        "--registry",
        metavar="NAME",
        default=None,
        help="the registry (default: `default`, or the only one)",
    )


def registry_from(options: dict) -> Registry:
    """The registry `--registry` names; a clear error when there is no such registry."""
    try:
        return rows.get(options.get("registry"))
    except rows.UnknownRegistry as error:
        raise CommandError(str(error)) from None
