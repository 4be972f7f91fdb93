"""Signing in, as the audit log sees it: every successful sign-in (a password, the
identity provider, the admin's form) and every failed one.

Django sends `user_logged_in` and `user_login_failed` for all of them, whichever view or
backend did the work, and django-axes counts failures from the same `user_login_failed`:
recording from these two signals is the one place that misses none. `apps.py` connects
them. A sign-in through the identity provider leaves what it learnt on the request
(`OIDC_SIGN_IN`: the groups it named) for the entry to say.
"""

from __future__ import annotations

from django.http import HttpRequest

from hubimages.lib import audit
from hubimages.lib.addresses import client_address
from hubimages.lib.audit import Action, Actor

OIDC_SIGN_IN = "hubimages_oidc_sign_in"


def record_sign_in(sender, request: HttpRequest | None = None, user=None, **kwargs) -> None:
    details = getattr(request, OIDC_SIGN_IN, None) or {"method": "password"}
    audit.record(Action.SIGN_IN, by=Actor.of_user(user, request), **details)


def record_failed_sign_in(
    sender, credentials: dict | None = None, request: HttpRequest | None = None, **kwargs
) -> None:
    """A wrong password (or an unknown user): `who` is the name that was tried."""
    username = str((credentials or {}).get("username", ""))[:150]
    address = client_address(request) if request is not None else ""
    audit.record(Action.SIGN_IN_FAILED, by=Actor(name=username, address=address), method="password")
