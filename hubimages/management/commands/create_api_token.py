"""`python manage.py create_api_token USER --name NAME --scope read|read+delete
[--expires-in-days N]`: a personal access token for scripts, printed as the last line."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from hubimages.accounts import tokens
from hubimages.lib.audit import Actor
from hubimages.models import ApiToken


class Command(BaseCommand):
    help = "Create a personal access token for the HTTP API; prints it as the last line."

    def add_arguments(self, parser):
        parser.add_argument("user", help="the username the token acts as")
        parser.add_argument("--name", required=True, help="what uses the token")
        parser.add_argument("--scope", required=True, choices=ApiToken.Scope.values)
        parser.add_argument(
            "--expires-in-days",
            type=int,
            default=None,
            help=f"1 to {tokens.MAX_EXPIRY_DAYS}; by default the token never expires",
        )

    def handle(self, *args, user, name, scope, expires_in_days, **options):
        account = get_user_model().objects.filter(username=user).first()
        if account is None:
            raise CommandError(f"no user {user!r}")
        if not account.is_active:
            raise CommandError(f"user {user!r} is inactive: its tokens would not work")
        if not name.strip():
            raise CommandError("--name must not be empty")
        try:
            issued = tokens.issue(
                user=account,
                name=name,
                scope=scope,
                expires_in_days=expires_in_days,
                by=Actor.command_line(),
            )
        except ValueError as error:
            raise CommandError(str(error)) from None
        if scope == ApiToken.Scope.READ_DELETE and not tokens.may_delete(account, None):
            self.stderr.write(
                f"warning: {user} may delete nowhere (no deleter role), so this token cannot "
                "delete either (a token never grants more than its user has)"
            )
        expiry = (
            f"expires {issued.row.expires_at:%Y-%m-%d %H:%M} UTC"
            if expires_in_days
            else ("never expires")
        )
        self.stdout.write(
            f"Created token {issued.row.name!r} for {user}, scope {scope}, {expiry}. "
            "It is shown only now; hubimages keeps a hash of it:"
        )
        self.stdout.write(issued.token)
