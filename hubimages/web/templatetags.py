"""Formatting for the pages: sizes, times, digests and clipped untrusted text."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

from django import template
from django.contrib.humanize.templatetags.humanize import intcomma
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.timesince import timeuntil

from hubimages.inventory import lists, status
from hubimages.lib import formatting
from hubimages.models import Manifest

register = template.Library()

# Even the full text behind a disclosure is capped: a megabyte label must not bloat a page.
LONG_TEXT_LIMIT = 10_000
ARTIFACT_TYPE_CHARACTERS = 60


@register.filter
def human_size(value: int | None) -> str:
    return "—" if value is None else formatting.human_size(value)


@register.filter
def ago(value: datetime | None) -> str:
    """`formatting.ago`; "—" for never. The exact time goes in the title."""
    return "—" if value is None else formatting.ago(value)


@register.simple_tag
def size(value: int | None):
    """A size as people read it, with the exact bytes on hover."""
    if value is None:
        return "—"
    return format_html(
        '<span class="size" title="{} bytes">{}</span>',
        intcomma(value),
        formatting.human_size(value),
    )


@register.filter
def middle(value: object, length: int = 40) -> str:
    """Registry text clipped in the middle, so that what tells tags apart stays visible:
    `sha256-4f9a…c2d1.sig` keeps its `.sig`, `release-2026-…-amd64` its platform."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= length:
        return text
    tail = (length - 1) // 3
    return text[: length - 1 - tail] + "…" + text[-tail:]


@register.filter
def utc(value: datetime | None) -> str:
    """The exact time for a tooltip: 2026-02-28 14:03:09 UTC."""
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@register.filter
def iso(value: datetime | None) -> str:
    """Machine-readable time for `<time datetime>`."""
    return formatting.iso(value) or ""


register.filter("short_digest", formatting.short_digest)


@register.filter("status")
def status_filter(manifest: Manifest) -> str:
    """active, unknown or stale: its own, or its index's or subject's (`inventory.status`)."""
    return status.status_of(manifest)


@register.filter
def watching_since(manifest: Manifest) -> datetime:
    """When hubimages first saw the Unknown item (or the index or subject it goes with)."""
    return status.since(manifest)


@register.inclusion_tag("includes/clipped.html")
def clipped(value: object, length: int = 200) -> dict:
    """Untrusted text, shortened to `length` with the rest behind a disclosure."""
    text = value if isinstance(value, str) else str(value)
    return {
        "short": text if len(text) <= length else text[: length - 1] + "…",
        "full": text[:LONG_TEXT_LIMIT],
        "clipped": len(text) > length,
        "capped": len(text) > LONG_TEXT_LIMIT,
    }


@register.simple_tag
def in_use_badges(in_use: object) -> str:
    """What live in-use reports say of an item (`inuse.matching.InUse`): a badge a source,
    "In use: prod ×3", opening onto its first place; report text, so escaped and clipped.
    Written here rather than by an included template: a page may show dozens."""
    if not in_use:
        return ""
    return format_html_join(
        "",
        '<details class="in-use"><summary class="badge badge-in-use" title="A live in-use '
        'report says it runs">In use: <bdi>{}</bdi> ×{}</summary><ul class="plain '
        'in-use-places">{}{}</ul></details>',
        (
            (
                middle(use.source),
                use.count,
                format_html("<li><bdi>{}</bdi></li>", middle(use.place, 80))
                if use.place
                else format_html('<li class="muted">no place given</li>'),
                format_html('<li class="muted">and {} more</li>', use.more) if use.more else "",
            )
            for use in in_use.sources
        ),
    )


@register.filter
def platforms(manifest: Manifest) -> list[str]:
    return lists.platforms_of(manifest)


@dataclass(frozen=True)
class Content:
    manifest: Manifest
    platform: str
    label: str


@register.filter
def contents(manifest: Manifest) -> dict:
    """What an index row opens onto: its images and attestations, then its referrers
    (from the prefetched entries and referrers), with a one-line summary."""
    children = []
    for child, platform in lists.children_of(manifest):
        if child.subject_id == manifest.pk:
            # An artifact type is registry text of up to 255 characters: clipped to a label.
            kind = child.artifact_type
            kind = (
                kind
                if len(kind) <= ARTIFACT_TYPE_CHARACTERS
                else kind[: ARTIFACT_TYPE_CHARACTERS - 1] + "…"
            )
            label = f"Referrer ({kind})" if kind else "Referrer"
        else:
            label = child.get_kind_display()
        children.append(Content(child, platform, label))
    counts = Counter(child.manifest.kind for child in children)
    words = [
        f"{counts[kind]} {one if counts[kind] == 1 else many}"
        for kind, one, many in (
            (Manifest.Kind.IMAGE, "image", "images"),
            (Manifest.Kind.INDEX, "index", "indexes"),
            (Manifest.Kind.ATTESTATION, "attestation", "attestations"),
            (Manifest.Kind.ARTIFACT, "referrer", "referrers"),
        )
        if counts[kind]
    ]
    return {"children": children, "summary": ", ".join(words)}


@register.filter
def until(value: datetime | None) -> str:
    """A coming time in one unit, "in 3 hours"; "due now" once it has passed."""
    if value is None:
        return "—"
    now = timezone.now()
    if value <= now:
        return "due now"
    return f"in {timeuntil(value, now, depth=1)}"


@register.filter
def get(mapping: dict, key: str):
    """`mapping[key]`, or None: for dictionaries keyed by digests, which templates cannot
    look up with a dot."""
    return mapping.get(key) if hasattr(mapping, "get") else None


@register.filter
def item_label(manifest: Manifest) -> str:
    """What people call a row: its tags ("2.4.1, latest"), else "untagged". Check boxes
    and toggles say it, so a screen reader names the item, not only its digest."""
    names = [tag.name for tag in manifest.tags.all()]
    if not names:
        return "untagged"
    shown = ", ".join(middle(name) for name in names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


@register.filter
def matching(manifest: Manifest, search: str) -> set[str]:
    """The children and referrers of a row that the search matched by themselves."""
    return lists.matching_children(manifest, search)
