"""Personal access tokens for the HTTP API (SPEC §9): issuing, checking, revoking, and the
limit on failed attempts.

A token is `hubi_` and 43 characters of `secrets.token_urlsafe(32)`. It is shown once, when
issued; the database keeps its SHA-256 (looked up by equality, so checking one costs an
index probe) and its first characters, for people to tell tokens apart.

Guessing is limited like sign-ins (`LOGIN_FAILURE_LIMIT` failures per
`LOGIN_COOLOFF_MINUTES`), counted in `ApiTokenFailure` under two keys (SPEC §7): the
client's address (`lib.addresses.client_address`, the real client behind `TRUSTED_PROXIES`),
and the token's first characters, which the tokens page shows, so guesses at the rest of
one token spread over many addresses are limited too. A limited key gets 429 instead of
401 for its unknown tokens. The token is looked up first, and a live token is never
refused because of failures: a lock that refused it would let whoever shares its address
(an office's NAT, every client of a proxy missing from `TRUSTED_PROXIES`) or knows its
first characters lock its holder out, while guessing 256 random bits is hopeless anyway.
Only unknown tokens count: an expired or revoked token is a real one a script forgot to
replace, not a guess. Time is the database's, as every host reads the same counts.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NoReturn

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import DateTimeField, ExpressionWrapper, F, Q
from django.db.models.functions import Now
from django.utils import timezone

from hubimages.lib import audit
from hubimages.lib.audit import Action, Actor
from hubimages.models import ApiToken, ApiTokenFailure
from hubimages.teams.rights import Role, rights_for

PREFIX = "hubi_"
SHOWN_CHARACTERS = 12  # "hubi_" and 7 characters: enough to recognise, useless to guess
MAX_EXPIRY_DAYS = 3650
# Writing last_used_at on every call would make each API request a write: once a minute
# is precise enough for "last used".
LAST_USED_PRECISION = timedelta(minutes=1)
# A header longer than this is not one of our tokens; it is not even hashed.
MAX_TOKEN_LENGTH = 100


class InvalidToken(Exception):
    """The token is unknown, expired or revoked, or its user may not sign in."""


class TooManyFailures(Exception):
    """Unknown tokens from this address, or starting like this one, failed too often: they
    are refused until `until`."""

    def __init__(self, key: str, until: datetime) -> None:
        self.until = until
        kind, _, value = key.partition(":")
        whose = "from this address" if kind == "address" else f"with tokens starting {value}"
        super().__init__(
            f"too many failed token attempts {whose}: try again after {until:%Y-%m-%d %H:%M:%S} UTC"
        )


@dataclass(frozen=True)
class IssuedToken:
    """A token just made: `token` is the only copy of the secret there will ever be."""

    row: ApiToken
    token: str


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue(
    *,
    user,
    name: str,
    scope: str,
    expires_in_days: int | None = None,
    by: Actor | None = None,
) -> IssuedToken:
    """Create a token for `user`, audited as made `by` whom (else by the user). Its scope
    may say more than the user may do: a token never grants more than its user has now
    (`teams.rights.rights_of`), and the user may get a role later."""
    if scope not in ApiToken.Scope.values:
        raise ValueError(f"scope must be one of {', '.join(ApiToken.Scope.values)}")
    if expires_in_days is not None and not 1 <= expires_in_days <= MAX_EXPIRY_DAYS:
        raise ValueError(f"expiry must be from 1 to {MAX_EXPIRY_DAYS} days")
    token = PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        row = _create(user, name, scope, token, expires_in_days)
        audit.record(
            Action.TOKEN_CREATED,
            by=by or Actor.of_user(user),
            target=row.prefix,
            owner=user.get_username(),
            name=row.name,
            scope=scope,
            expires_at=row.expires_at.isoformat() if row.expires_at else None,
        )
    return IssuedToken(row, token)


def _create(user, name: str, scope: str, token: str, expires_in_days: int | None) -> ApiToken:
    return ApiToken.objects.create(
        user=user,
        name=name.strip()[:100],
        scope=scope,
        prefix=token[:SHOWN_CHARACTERS],
        token_hash=hash_token(token),
        expires_at=timezone.now() + timedelta(days=expires_in_days) if expires_in_days else None,
    )


def revoke(row: ApiToken, *, by: Actor | None = None) -> bool:
    """Revoke the token, audited as `by` whom (else its user); False when it was already."""
    with transaction.atomic():
        revoked = ApiToken.objects.filter(pk=row.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        if revoked:
            audit.record(
                Action.TOKEN_REVOKED,
                by=by or Actor.of_user(row.user),
                target=row.prefix,
                owner=row.user.get_username(),
                name=row.name,
            )
    return bool(revoked)


def state(row: ApiToken, now: datetime | None = None) -> str:
    """`active`, `expired` or `revoked`, for lists."""
    if row.revoked_at:
        return "revoked"
    if row.expires_at and row.expires_at <= (now or timezone.now()):
        return "expired"
    return "active"


def may_delete(user, token: ApiToken | None) -> bool:
    """Whether the token (None: a browser session) could delete anywhere now: its scope,
    and the user's current rights (a deleter's role somewhere)."""
    if token is not None and token.scope != ApiToken.Scope.READ_DELETE:
        return False
    return rights_for(user).holds(Role.DELETER)


def authenticate(token: str, *, address: str, now: datetime | None = None) -> ApiToken:
    """The live token `token` names, with its user. An unknown token counts as a failure
    of `address` and of the token's first characters: InvalidToken, or TooManyFailures
    while either is limited."""
    now = now or timezone.now()
    row = None
    if token.startswith(PREFIX) and len(token) <= MAX_TOKEN_LENGTH:
        row = ApiToken.objects.select_related("user").filter(token_hash=hash_token(token)).first()
    if row is None:
        refuse_guess(token, address)
    if row.revoked_at:
        raise InvalidToken(f"this token ({row.name}) was revoked")
    if row.expires_at and row.expires_at <= now:
        raise InvalidToken(
            f"this token ({row.name}) expired on {row.expires_at:%Y-%m-%d %H:%M} UTC"
        )
    if not row.user.is_active:
        raise InvalidToken("this token's user is inactive")
    if row.last_used_at is None or row.last_used_at <= now - LAST_USED_PRECISION:
        ApiToken.objects.filter(pk=row.pk).update(last_used_at=now)
        row.last_used_at = now
    # A success leaves the counts alone: a guesser holding one valid token of its own would
    # otherwise clear its count between guesses.
    return row


def failure_keys(token: str, address: str) -> list[str]:
    """What an unknown token counts against: its client's address and its first characters."""
    return [f"address:{address}"[:80], f"prefix:{token[:SHOWN_CHARACTERS]}"]


def refuse_guess(token: str, address: str) -> NoReturn:
    """TooManyFailures while a key of this attempt is limited (not counted again);
    otherwise count it and raise InvalidToken."""
    keys = failure_keys(token, address)
    locked = (
        ApiTokenFailure.objects.filter(key__in=keys, locked_until__gt=Now())
        .order_by("-locked_until")
        .values_list("key", "locked_until")
        .first()
    )
    if locked:
        raise TooManyFailures(*locked)
    for key in keys:
        record_failure(key)
    raise InvalidToken("not a valid API token")


def record_failure(key: str) -> None:
    """Count a failure under `key`; the one that reaches the limit locks it for the
    cool-off. Failures older than the cool-off are forgotten."""
    cooloff = settings.AXES_COOLOFF_TIME
    since = ExpressionWrapper(Now() - cooloff, output_field=DateTimeField())
    window = Q(first_failed_at__gt=since)
    ApiTokenFailure.objects.filter(
        ~window & (Q(locked_until__isnull=True) | Q(locked_until__lte=Now()))
    ).delete()
    counted = ApiTokenFailure.objects.filter(window, key=key).update(failures=F("failures") + 1)
    if not counted:
        try:
            with transaction.atomic():
                ApiTokenFailure.objects.create(key=key, failures=1, first_failed_at=Now())
        except IntegrityError:  # another request created it just now
            ApiTokenFailure.objects.filter(key=key).update(failures=F("failures") + 1)
    ApiTokenFailure.objects.filter(
        key=key, failures__gte=settings.AXES_FAILURE_LIMIT, locked_until__isnull=True
    ).update(locked_until=ExpressionWrapper(Now() + cooloff, output_field=DateTimeField()))
