"""Password sign-in, and the switch that turns it off."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.backends import ModelBackend


class LocalAccountsBackend(ModelBackend):
    """Django's own backend, refusing every password while `LOCAL_ACCOUNTS` is false: the
    login page, the admin's form and anything else that calls `authenticate()` then fail
    alike. Sessions and permissions work as before (people signed in through the identity
    provider are users too)."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        if not settings.LOCAL_ACCOUNTS:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)
