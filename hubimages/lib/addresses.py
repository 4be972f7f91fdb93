"""Where a request comes from, for limits and the audit log."""

from __future__ import annotations

from django.http import HttpRequest


def client_address(request: HttpRequest) -> str:
    """The client's address as the connection shows it (`REMOTE_ADDR`); "" when unknown."""
    return (request.META.get("REMOTE_ADDR") or "").strip()[:64]
