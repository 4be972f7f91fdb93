"""Formatting for the pages: sizes, times, digests and clipped untrusted text."""

from __future__ import annotations

from datetime import UTC, datetime

from django import template
from django.utils import timezone
from django.utils.timesince import timesince

from hubimages import inventory
from hubimages.models import Manifest

register = template.Library()

_UNITS = ("kB", "MB", "GB", "TB", "PB")
# Even the full text behind a disclosure is capped: a megabyte label must not bloat a page.
LONG_TEXT_LIMIT = 10_000


@register.filter
def human_size(value: int | None) -> str:
    """Decimal units, one decimal, as Docker Hub shows them: 53.2 MB."""
    if value is None:
        return "—"
    size = float(value)
    if size < 1000:
        return f"{int(size)} B"
    for unit in _UNITS:
        size /= 1000
        if size < 1000 or unit == _UNITS[-1]:
            return f"{size:.1f} {unit}"
    raise AssertionError("unreachable")


@register.filter
def ago(value: datetime | None) -> str:
    """One unit, like "3 months ago": enough to judge at a glance (the exact time is
    in the title)."""
    if value is None:
        return "—"
    now = timezone.now()
    if value > now or (now - value).total_seconds() < 60:
        return "just now"
    return f"{timesince(value, now, depth=1)} ago"


@register.filter
def utc(value: datetime | None) -> str:
    """The exact time for a tooltip: 2026-02-28 14:03:09 UTC."""
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@register.filter
def iso(value: datetime | None) -> str:
    """Machine-readable time for `<time datetime>`."""
    if value is None:
        return ""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


@register.filter
def short_digest(value: str) -> str:
    """12 hex digits, without the algorithm, as `docker images` shows them."""
    return value.split(":", 1)[-1][:12]


@register.filter
def stale(manifest: Manifest) -> bool:
    return inventory.is_stale(manifest)


@register.inclusion_tag("includes/clipped.html")
def clipped(value: object, length: int = 200) -> dict:
    """Untrusted text, shortened to `length` with the rest behind a disclosure."""
    text = value if isinstance(value, str) else str(value)
    return {
        "short": text if len(text) <= length else text[: length - 1] + "…",
        "full": text[: LONG_TEXT_LIMIT],
        "clipped": len(text) > length,
        "capped": len(text) > LONG_TEXT_LIMIT,
    }
