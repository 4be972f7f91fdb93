"""Receiving a source's in-use report (SPEC §13): `PUT /api/v1/in-use/{source}` and
`manage.py report_in_use` both call `replace`.

A report replaces the source's last one whole, in one transaction: a reader sees the old
references or the new ones, never a mix, and two reports of one source arriving together
end as one of them (the source's row is locked while its references are rewritten).

Each reference is matched to the registry whose configured host it names (Docker Hub by
any of its names); one naming another registry is counted by host in the answer, not kept.
A tag is resolved to the digest it names in hubimages' database when the report arrives:
what runs by tag is what the tag pointed at then. A tag hubimages does not know is said so
in the answer, never silently dropped. A reference that is not one at all rejects the whole
report, so nothing is half-replaced.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.db.models.functions import Now

from hubimages.inuse import references
from hubimages.lib.formatting import iso
from hubimages.models import InUseReference, InUseSource, Registry, Tag
from hubimages.registries import rows

SOURCE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MIN_TTL = 60
MAX_TTL = 90 * 24 * 3600
MAX_IMAGES = 100_000
WHERE_CHARACTERS = 300
UNRESOLVED_KEPT = 100
PROBLEMS_SHOWN = 20
OTHER_HOSTS_SHOWN = 50
INSERT_BATCH = 2000
TAG_QUERY_CHUNK = 500


class InvalidReport(ValueError):
    """The report cannot be taken; `problems` says where: [(field, message)]."""

    def __init__(self, message: str, problems: Sequence[tuple[str, str]] = ()) -> None:
        self.problems = list(problems)
        super().__init__(message)


@dataclass
class Received:
    """What became of a report: the references kept, the tags no repository of
    hubimages has, and the references to registries hubimages does not serve (by host)."""

    source: InUseSource
    kept: int
    unresolved: list[dict[str, str]] = field(default_factory=list)
    other_registries: Counter = field(default_factory=Counter)

    @property
    def expires_at(self) -> datetime:
        return self.source.received_at + timedelta(seconds=self.source.ttl_seconds)

    def as_dict(self) -> dict:
        return {
            "source": self.source.name,
            "received_at": iso(self.source.received_at),
            "expires_at": iso(self.expires_at),
            "ttl_seconds": self.source.ttl_seconds,
            "required": self.source.required,
            "references": self.kept,
            "unresolved": self.unresolved,
            "other_registries": dict(self.other_registries.most_common(OTHER_HOSTS_SHOWN)),
        }


def check_source_name(name: str) -> str:
    if not isinstance(name, str) or not SOURCE_NAME_RE.match(name):
        raise InvalidReport(
            f"{str(name)[:100]!r} is not a source name: letters, digits, `.`, `_` and `-`, "
            "up to 100, such as prod-eu or ci",
            [("source", "not a source name")],
        )
    return name


def replace(
    *,
    source: str,
    images: Iterable[dict],
    ttl_seconds: int,
    required: bool = False,
    reported_by: str = "",
) -> Received:
    """Make `images` ([{"reference", "where"}]) the source's report; raises InvalidReport
    before anything is written."""
    check_source_name(source)
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int):
        raise InvalidReport("ttl_seconds must be a whole number", [("ttl_seconds", "not a number")])
    if not MIN_TTL <= ttl_seconds <= MAX_TTL:
        raise InvalidReport(
            f"ttl_seconds must be from {MIN_TTL} to {MAX_TTL} (90 days)",
            [("ttl_seconds", "out of range")],
        )
    parsed = _parse(list(images))
    hosts = registry_hosts()
    received = Received(source=InUseSource(name=source), kept=0)
    wanted: list[tuple[references.ImageReference, str, Registry]] = []
    for reference, where in parsed:
        registry = hosts.get(reference.host)
        if registry is None:
            received.other_registries[reference.host] += 1
        else:
            wanted.append((reference, where, registry))
    rows_ = _resolve(wanted, received)
    received.source = _store(source, rows_, ttl_seconds, required, reported_by, received)
    received.kept = len(rows_)
    return received


def _parse(images: list) -> list[tuple[references.ImageReference, str]]:
    if len(images) > MAX_IMAGES:
        raise InvalidReport(
            f"a report holds at most {MAX_IMAGES:,} images", [("images", "too many")]
        )
    parsed, problems = [], []
    for i, image in enumerate(images):
        if not isinstance(image, dict) or not isinstance(image.get("reference"), str):
            problems.append((f"images[{i}]", "an object with a reference"))
            continue
        where = image.get("where", "")
        if not isinstance(where, str):
            problems.append((f"images[{i}].where", "not a string"))
            continue
        try:
            parsed.append((references.parse(image["reference"]), _clip(where)))
        except references.BadReference as bad:
            problems.append((f"images[{i}].reference", str(bad)))
    if problems:
        raise InvalidReport(
            f"{len(problems)} of the {len(images)} images are not image references: nothing "
            "was changed",
            problems[:PROBLEMS_SHOWN],
        )
    return parsed


def _clip(where: str) -> str:
    """Untrusted text, kept short: its start and end, which name the cluster and the pod."""
    text = " ".join(where.split())
    if len(text) <= WHERE_CHARACTERS:
        return text
    tail = WHERE_CHARACTERS // 3
    return text[: WHERE_CHARACTERS - 1 - tail] + "…" + text[-tail:]


def registry_hosts() -> dict[str, Registry]:
    """Each configured registry by the host image references name it with."""
    rows.ensure_rows()
    by_name = {row.name: row for row in Registry.objects.filter(configured=True)}
    hosts = {}
    for config in rows.configured():
        if config.url and config.name in by_name:
            hosts[references.host_key(config.host)] = by_name[config.name]
    return hosts


def _resolve(
    wanted: list[tuple[references.ImageReference, str, Registry]], received: Received
) -> list[InUseReference]:
    """The references to keep, each with a digest: tags looked up in the database, once
    each; the same (registry, digest, place) kept once."""
    tags = _tag_digests({(r.pk, ref.repository, ref.tag) for ref, _, r in wanted if not ref.digest})
    kept: dict[tuple[int, str, str], InUseReference] = {}
    for reference, where, registry in wanted:
        digest = reference.digest or tags.get((registry.pk, reference.repository, reference.tag))
        if not digest:
            if len(received.unresolved) < UNRESOLVED_KEPT:
                received.unresolved.append(
                    {
                        "reference": str(reference),
                        "where": where,
                        "reason": f"no tag {reference.tag} in {reference.repository} of "
                        f"registry {registry.name}",
                    }
                )
            continue
        key = (registry.pk, digest, where)
        if key not in kept:
            kept[key] = InUseReference(
                registry=registry,
                repository=reference.repository,
                digest=digest,
                tag=reference.tag,
                where=where,
            )
    return list(kept.values())


def _tag_digests(wanted: set[tuple[int, str, str]]) -> dict[tuple[int, str, str], str]:
    """(registry id, repository, tag) -> the digest the tag names now."""
    found: dict[tuple[int, str, str], str] = {}
    ordered = sorted(wanted)
    for start in range(0, len(ordered), TAG_QUERY_CHUNK):
        chunk = ordered[start : start + TAG_QUERY_CHUNK]
        which = Q()
        for registry_id, repository, tag in chunk:
            which |= Q(repository__registry_id=registry_id, repository__name=repository, name=tag)
        for registry_id, repository, tag, digest in Tag.objects.filter(which).values_list(
            "repository__registry_id", "repository__name", "name", "manifest__digest"
        ):
            found[(registry_id, repository, tag)] = digest
    return found


def _store(
    name: str,
    references_: list[InUseReference],
    ttl_seconds: int,
    required: bool,
    reported_by: str,
    received: Received,
) -> InUseSource:
    """The source's row and references, replaced in one transaction (the row locked, so
    two reports of one source never mix), received now by the database's clock."""
    values = {
        "required": required,
        "ttl_seconds": ttl_seconds,
        "reported_by": reported_by[:150],
        "size": len(references_),
        "ignored": sum(received.other_registries.values()),
        "unresolved": received.unresolved,
        "registries": sorted({reference.registry.name for reference in references_}),
    }
    with transaction.atomic():
        source = _locked_source(name, values)
        InUseSource.objects.filter(pk=source.pk).update(received_at=Now(), **values)
        InUseReference.objects.filter(source=source).delete()
        for reference in references_:
            reference.source = source
        InUseReference.objects.bulk_create(references_, batch_size=INSERT_BATCH)
    return InUseSource.objects.get(pk=source.pk)


def _locked_source(name: str, values: dict) -> InUseSource:
    source = InUseSource.objects.select_for_update().filter(name=name).first()
    if source is not None:
        return source
    try:
        with transaction.atomic():
            return InUseSource.objects.create(name=name, received_at=Now(), **values)
    except IntegrityError:  # another report of this new source came first
        return InUseSource.objects.select_for_update().get(name=name)
