"""The API's typed shapes: what the OpenAPI document describes and every answer is checked
against. Output shapes mirror the command line's JSON (`list_images --json`,
`delete_images --dry-run --json`, `apply_retention --dry-run --json`) field for field."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from django.conf import settings
from ninja import Field, Schema
from pydantic import AwareDatetime, ConfigDict, StrictBool

from hubimages.inventory import lists
from hubimages.inventory import repositories as inventory_repositories
from hubimages.registries import config as registry_config
from hubimages.retention import policies

MAX_PAGE_SIZE = 100
MAX_DIGESTS = 1000
# A digest as the registry writes it; a selection may leave out `sha256:`. Checked before
# any view runs, so the document and the API refuse the same strings.
DIGEST_PATTERN = r"^(?:sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$"
SELECTED_DIGEST_PATTERN = r"^(?:(?:sha256:)?[0-9a-f]{64}|sha512:[0-9a-f]{128})$"
# A registry's name as REGISTRIES_FILE spells it, or empty for the default one: anything
# else names no registry, and a 422 says so before a query runs (PostgreSQL refuses U+0000).
REGISTRY_PATTERN = rf"^(?:{registry_config.NAME_RE.pattern[1:-1]})?$"
REGISTRY_MAX_LENGTH = 40
Timestamp = str  # ISO 8601 in UTC with a "Z", as the command line prints it


def _timestamp(description: str) -> Any:
    return Field(None, description=description, json_schema_extra={"format": "date-time"})


class Strict(Schema):
    """A request body: an unknown field is an error, not silently ignored (a misspelt
    `dry_run` must never delete)."""

    model_config = ConfigDict(extra="forbid")


# -- errors ------------------------------------------------------------------------------


class FieldProblem(Schema):
    field: str = Field(description="Where: a parameter name, or a JSON path in the body.")
    message: str


class ErrorDetail(Schema):
    code: str = Field(description="Stable, for scripts: `not_found`, `plan_changed`…")
    message: str = Field(description="For people.")
    fields: list[FieldProblem] | None = Field(
        None, description="With 422: each invalid parameter or field."
    )


class ErrorOut(Schema):
    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int, type[ErrorOut]]:
    """The error answers an endpoint documents. Every endpoint documents 400, since Django
    refuses a malformed request (a Host not allowed, too many fields, a body over the
    limit) before any view, and 401, 403 and 429, since every endpoint takes tokens and a
    token of another scope is refused (a report token only reports)."""
    return {status: ErrorOut for status in sorted({400, 401, 403, 429, *statuses})}


# Text a client types (a search): anything but control characters, which match nothing
# and which PostgreSQL refuses in a query (U+0000).
SEARCH_PATTERN = r"^[^\u0000-\u001f\u007f]*$"


# -- paging ------------------------------------------------------------------------------


class PageQuery(Schema):
    page: int = Field(1, ge=1, description="1 for the first page.")
    page_size: int = Field(
        settings.PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE, description="Items per page, ≤ 100."
    )


class Page(Schema):
    count: int = Field(description="Items on all pages.")
    next: str | None = Field(description="The next page's URL; null on the last page.")
    previous: str | None = Field(description="The previous page's URL; null on the first.")


# -- repositories and images -------------------------------------------------------------


class RepositoriesQuery(PageQuery):
    search: str = Field(
        "", max_length=200, pattern=SEARCH_PATTERN, description="Part of the repository's name."
    )
    registry: str = Field(
        "",
        max_length=REGISTRY_MAX_LENGTH,
        pattern=REGISTRY_PATTERN,
        description="Only this registry's repositories; empty: every one.",
    )
    ordering: Literal[tuple(inventory_repositories.REPOSITORY_SORTS)] = Field(  # type: ignore[valid-type]
        "name", description="`-` first for descending."
    )


class RepositoryOut(Schema):
    registry: str = Field(description="The registry the repository belongs to.")
    name: str
    tag_count: int
    image_count: int = Field(description="Top-level items: indexes, and images no index holds.")
    stale_count: int
    size: int = Field(description="Stored bytes, each blob counted once.")
    last_pushed: Timestamp | None = _timestamp("The newest top-level item's Last pushed.")
    synced_at: Timestamp | None = _timestamp("When a sync last read this repository.")


class RepositoryPage(Page):
    results: list[RepositoryOut]


class ImagesQuery(PageQuery):
    registry: str = Field(
        "",
        max_length=REGISTRY_MAX_LENGTH,
        pattern=REGISTRY_PATTERN,
        description="A registry's name (SPEC §11); empty: `default`, or the only registry.",
    )
    search: str = Field(
        "",
        max_length=200,
        pattern=SEARCH_PATTERN,
        description="Part of a tag, in any case and taken literally (`%`, `_`, quotes), or "
        "a digest prefix with or without `sha256:`; a match on a child shows its index.",
    )
    filter: Literal[lists.FILTERS] = Field(  # type: ignore[valid-type]
        lists.DEFAULT_FILTER, description="Which top-level items."
    )
    status: Literal["active", "unknown", "stale"] | None = Field(
        None,
        description="Stale: no pull or push for `STALE_AFTER_MONTHS`. Unknown: no push or "
        "pull seen and no plausible build time, watched for less than that.",
    )
    ordering: Literal[lists.SORTS] = Field(  # type: ignore[valid-type]
        lists.DEFAULT_SORT, description="`-` first for descending; never pulled sorts last."
    )


Status = Literal["active", "unknown", "stale"]


class ChildOut(Schema):
    digest: str
    kind: str
    platform: str
    size: int
    tags: list[str]
    status: Status = Field(description="Its index's or subject's (SPEC §2).")


class InUseOut(Schema):
    source: str = Field(description="The in-use source whose live report names it.")
    where: str = Field(description="Where it runs, as the report says: untrusted text.")


class ImageOut(Schema):
    """One row of the Image Management list, as `list_images --json` prints it."""

    registry: str = Field(description="The registry the item lives in.")
    digest: str
    kind: Literal["index", "image", "attestation", "artifact"]
    media_type: str
    tags: list[str]
    platforms: list[str]
    size: int = Field(description="Config and layers (an index: its images', each blob once).")
    last_pushed: Timestamp | None = _timestamp("The push event's time, or an estimate.")
    last_pushed_estimated: bool
    last_pulled: Timestamp | None = _timestamp("null when no pull was seen.")
    stale: bool
    status: Status = Field(
        description="`unknown`: dated only by `first_seen` (no push or pull seen, no "
        "plausible build time) and watched for less than `STALE_AFTER_MONTHS`."
    )
    first_seen: Timestamp | None = _timestamp("When a sync first saw it.")
    in_use: list[InUseOut] = Field(
        description="Where live in-use reports say it runs (its digest, its index's or a "
        "child's): each source once, with the first of its places; empty when none does."
    )
    children: list[ChildOut] = Field(description="An index's images, then referrers.")


class ImagePage(Page):
    results: list[ImageOut]


class LayerOut(Schema):
    position: int
    digest: str
    size: int
    media_type: str
    created_by: str | None = Field(description="The build step that made it, when known.")


class ReferrerOut(Schema):
    digest: str
    kind: str
    artifact_type: str
    size: int
    tags: list[str]


class PlaceOut(Schema):
    registry: str
    repository: str


class ImageDetailOut(ImageOut):
    platform: str = Field(description="An image's own platform; empty for an index.")
    manifest_size: int = Field(description="The manifest's own bytes.")
    artifact_type: str
    config_digest: str
    created: Timestamp | None = _timestamp("Build time, when plausible.")
    subject: str | None = Field(description="What this artifact refers to (signatures, SBOMs).")
    parents: list[str] = Field(description="Indexes of this repository that hold it.")
    referrers: list[ReferrerOut]
    layers: list[LayerOut]
    labels: dict[str, Any] = Field(description="The config's labels: untrusted text.")
    annotations: dict[str, Any] = Field(description="The manifest's annotations: untrusted text.")
    also_in: list[PlaceOut] = Field(
        description="Other repositories, of any registry, holding the same digest."
    )


# -- delete-images -----------------------------------------------------------------------


class DeleteImagesIn(Strict):
    # Deleting (dry_run false) needs the dry run's fingerprint.
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"properties": {"dry_run": {"const": True}}},
                {
                    "required": ["fingerprint"],
                    "properties": {"fingerprint": {"type": "string", "minLength": 1}},
                },
            ]
        }
    )

    digests: list[Annotated[str, Field(pattern=SELECTED_DIGEST_PATTERN)]] = Field(
        min_length=1,
        max_length=MAX_DIGESTS,
        description="Top-level items to delete, `sha256:<hex>` (the prefix is optional).",
    )
    dry_run: StrictBool = Field(True, description="true: only answer the plan. false: delete it.")
    fingerprint: str | None = Field(
        None, max_length=64, description="With dry_run false: the dry run's fingerprint."
    )
    allow_in_use: StrictBool = Field(
        False,
        description="Delete items a live in-use report names (SPEC §13) instead of keeping "
        "them: the dry run and the deletion must both say so. Recorded in the history.",
    )
    allow_active: StrictBool = Field(
        False,
        description="Deleting items that are not stale needs this, as the UI asks a second "
        "tick for them (the dry run marks each `active`).",
    )


class PlannedOut(Schema):
    digest: str
    kind: str
    tags: list[str]
    size: int
    because: str = Field(description="`selected`, or why the cascade takes it.")


class KeptOut(Schema):
    digest: str
    reason: str


class FlaggedOut(PlannedOut):
    """A planned item with the guard rails the UI shows beside it."""

    in_use: list[InUseOut] = Field(description="Where live in-use reports say it runs.")
    active: bool = Field(description="Not stale: deleting it needs `allow_active`.")
    latest: bool = Field(description="Tagged `latest`: a pull without a tag gets it.")
    signed: bool = Field(description="A signature of it goes with it.")
    signature: bool = Field(description="It is a signature: what it verified stops verifying.")


class KeptFlaggedOut(KeptOut):
    in_use: list[InUseOut] = Field(description="Kept because live reports say it runs.")


class RefusedOut(Schema):
    digest: str
    reason: str


class PlanBody(Schema):
    """The `delete_images --dry-run --json` object."""

    delete: list[PlannedOut]
    keep: list[KeptOut]
    tags_removed: list[str]
    reclaimable_bytes: int = Field(description="What the registry's garbage collector frees.")


class PlanOut(PlanBody):
    delete: list[FlaggedOut]  # type: ignore[assignment]
    keep: list[KeptFlaggedOut]  # type: ignore[assignment]
    fingerprint: str = Field(description="Send it back with dry_run false to delete this plan.")
    refused: list[RefusedOut] = Field(description="Selected digests that cannot be deleted.")


class PlanChangedOut(ErrorOut):
    plan: PlanOut = Field(description="The plan as it is now.")


class JobStartedOut(Schema):
    id: int
    url: str = Field(description="Follow the job here.")


# -- jobs --------------------------------------------------------------------------------


class JobOut(Schema):
    id: int
    name: str = Field(
        description='What the pages call it: "Job #2 · Deletion". The deletion it made is '
        '`outcome.deletion_id`, "Deletion #1" in History, the Trash and the CSV.'
    )
    kind: Literal["sync", "sync_repository", "deletion", "retention", "restore", "trash_check"]
    status: Literal["queued", "running", "succeeded", "failed"]
    registry: str
    repository: str
    started_by: str
    started_by_label: str = Field(
        description="Who started it as pages say it; a retention run names its policy too: "
        '"alice · policy nightly", "scheduled · policy nightly".'
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    max_attempts: int
    progress: str = Field(description="While it runs.")
    message: str = Field(description="Why it failed, or why it will be tried again.")
    outcome: dict[str, Any] = Field(
        description="Once finished. A deletion: `deleted` (digest, kind, tags, size), "
        "`failed` and `skipped` (digest, reason), `reclaimed_bytes`, `warnings` (what other "
        "clients' pushes during the deletion did: tags that went with a deleted manifest, "
        "an index left listing a deleted one); with `stale` true the "
        "plan changed, nothing was deleted and `plan` is the new one. A restore: "
        "`restored` and `already` (digest, kind, repository), `failed` (with `reason`), "
        "`tags` put back, `conflicts` (tag, digest, `now`: what it names instead, `moved`), "
        "`message`; or `refused`: why nothing was restored."
    )


# -- retention policies ------------------------------------------------------------------


# No control characters: they never match a tag (`policies.CONTROL_RE`).
PRINTABLE = r"^[^\u0000-\u001f\u007f]+$"
TagPattern = Annotated[str, Field(min_length=1, pattern=PRINTABLE)]
Number = Annotated[int, Field(ge=1, le=policies.MAX_NUMBER)]


class _RuleScope(Strict):
    """Which top-level items a rule looks at: tagged ones by their tags, and untagged ones
    when asked. A rule whose scope is empty (`"tags": []` without `"untagged": true`)
    keeps nothing, and is refused."""

    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"properties": {"tags": {"minItems": 1}}},
                {"required": ["untagged"], "properties": {"untagged": {"const": True}}},
            ]
        }
    )

    tags: list[TagPattern] = Field(
        default_factory=lambda: list(policies.DEFAULT_TAGS),
        description="Shell-style patterns, each matching a whole tag.",
    )
    exclude_tags: list[TagPattern] = Field(default_factory=list)
    untagged: StrictBool = Field(False, description="Untagged items are in scope too.")


class AlwaysRule(_RuleScope):
    keep: Literal["always"]


class CountedRule(_RuleScope):
    keep: Literal["latest_pushed", "latest_pulled"]
    count: Number
    group_by: str = Field(
        None,
        min_length=1,
        pattern=PRINTABLE,
        description="A regular expression: `count` is per group, the group being its first "
        "capture group (or the whole match).",
        json_schema_extra={"format": "regex"},
    )


class TimedRule(_RuleScope):
    keep: Literal["pushed_within", "pulled_within"]
    days: Number


RuleSchema = Annotated[AlwaysRule | CountedRule | TimedRule, Field(discriminator="keep")]


class ScheduleSchema(Strict):
    every_hours: int = Field(ge=1, le=policies.MAX_SCHEDULE_HOURS)


class RetentionPolicy(Strict):
    """SPEC §8's policy JSON, as `retention_policy export` prints it."""

    model_config = ConfigDict(json_schema_extra=lambda schema: _some_pattern_includes(schema))

    name: str = Field(pattern=policies.NAME_RE.pattern)
    registries: list[Annotated[str, Field(pattern=policies.REGISTRY_PATTERN_RE.pattern)]] = Field(
        default_factory=lambda: list(policies.DEFAULT_REGISTRIES),
        min_length=1,
        description="Globs on registry names (`*`, `?`); a leading `!` excludes.",
    )
    repositories: list[Annotated[str, Field(pattern=policies.REPOSITORY_PATTERN_RE.pattern)]] = (
        Field(
            default_factory=lambda: list(policies.DEFAULT_REPOSITORIES),
            min_length=1,
            description="Globs on repository names (`*`, `**`, `?`); a leading `!` excludes.",
        )
    )
    rules: list[RuleSchema] = Field(min_length=1, description="Kept when any rule keeps it.")
    max_delete_fraction: float = Field(policies.DEFAULT_MAX_DELETE_FRACTION, gt=0, le=1)
    schedule: ScheduleSchema | None = None
    enabled: StrictBool = True


def _some_pattern_includes(schema: dict) -> None:
    """Exclusions alone cover nothing: some registry and some repository pattern must
    include."""
    for field in ("registries", "repositories"):
        schema["properties"][field]["contains"] = {"pattern": "^[^!]"}


class PolicyPage(Page):
    results: list[RetentionPolicy]


class RepositoryDryRunOut(Schema):
    registry: str
    repository: str
    selected: list[str]
    plan: PlanBody


class DryRunOut(Schema):
    """`apply_retention --dry-run --json`, plus the fingerprint that runs exactly it."""

    policy: str
    now: Timestamp = Field(json_schema_extra={"format": "date-time"})
    repositories: list[RepositoryDryRunOut]
    reclaimable_bytes: int
    fingerprint: str


class DryRunChangedOut(ErrorOut):
    dry_run: DryRunOut = Field(description="A fresh dry run, as of a new `now`.")


class RunIn(Strict):
    now: AwareDatetime = Field(description="The dry run's `now`, as it answered it.")
    fingerprint: str = Field(max_length=64, description="The dry run's fingerprint.")


# -- storage -----------------------------------------------------------------------------


class RepositoryStorageOut(Schema):
    name: str
    stored_bytes: int = Field(description="The distinct blobs its manifests use, each once.")
    stale_reclaimable_bytes: int = Field(
        description="What deleting all its stale top-level items would free."
    )
    untagged_bytes: int = Field(description="What deleting its untagged items would free.")


class StoragePointOut(Schema):
    at: str = Field(description="When a full sync ended (ISO 8601, UTC).")
    stored_bytes: int


class RegistryQuery(Schema):
    """The one parameter of an endpoint about one registry's things; checked as the lists'
    are (`paging.reject_unknown_parameters`): `?registry=prod&registry=staging`, or a
    misspelt `registry`, must not fall back to some registry and delete there."""

    registry: str = Field(
        "",
        max_length=REGISTRY_MAX_LENGTH,
        pattern=REGISTRY_PATTERN,
        description="A registry's name (SPEC §11); empty: `default`, or the only registry.",
    )


class StorageOut(Schema):
    registry: str = Field(description="Whose figures these are: each registry stores its own.")
    stored_bytes: int = Field(description="The registry's distinct blobs, each counted once.")
    stale_reclaimable_bytes: int = Field(
        description="What deleting every stale item would free; blobs shared only by stale "
        "items of several repositories count once."
    )
    untagged_bytes: int = Field(description="What deleting every untagged item would free.")
    complete: bool = Field(
        description="True: the registry's own figures (the caller sees every repository of "
        "it). False: the sum of the repositories the caller sees, and no history."
    )
    repositories: list[RepositoryStorageOut]
    history: list[StoragePointOut] = Field(
        description="Stored bytes after each full sync, and after each deletion, retention "
        "run or restore that changed them."
    )
    computed_at: str = Field(description="When the workers computed these (ISO 8601, UTC).")
    current: bool = Field(
        description="Whether they describe the registry as hubimages knows it now; false "
        "after a sync or a deletion, until the workers compute new ones."
    )
    computing: bool = Field(description="Whether a worker is computing new figures now.")


# -- trash -------------------------------------------------------------------------------


class TrashQuery(PageQuery):
    registry: str = Field(
        "", max_length=40, description="A registry's name (SPEC §11); empty: every registry."
    )


class TagConflictOut(Schema):
    tag: str
    now: str = Field(description="The manifest the tag names now, which it was left naming.")


class TrashItemOut(Schema):
    repository: str
    digest: str
    kind: str
    tags: list[str] = Field(description="The tags that named it when it was deleted.")
    state: Literal["restorable", "partly_lost", "lost", "restored", "unchecked"] = Field(
        description="As last checked (`checked_at`): restorable while every blob it needs "
        "answers in the registry, partly_lost or lost once the garbage collector took some "
        "or all of it; restored; unchecked until first checked."
    )
    checked_at: Timestamp | None = _timestamp("When the registry was last asked about it.")
    missing: list[str] = Field(description="What the last check found gone.")
    size: int = Field(description="Its config and layers, as when it was deleted.")
    kept_bytes: int = Field(description="The manifest's own bytes, which the Trash keeps.")
    restored_at: Timestamp | None = _timestamp("When it was restored.")
    restored_by: str
    conflicts: list[TagConflictOut] = Field(
        description="Its tags that its restore left naming another manifest; restore again "
        "with `move_tags` to move them back."
    )


class TrashOperationOut(Schema):
    id: int = Field(description="The deletion operation; restore it with its id.")
    name: str = Field(description='"Deletion #12": as History, the job page and the CSV say.')
    registry: str
    repository: str
    deleted_at: Timestamp
    deleted_by: str = Field(
        description="Who deleted it; a retention run's deletion names the person who pressed "
        'Run now (or "scheduled") and the policy: "alice · policy nightly".'
    )
    policy: str | None = Field(description="The retention policy whose run deleted it.")
    retention_run: int | None
    reclaimed_bytes: int = Field(description="What it frees that is still deleted.")
    collected_at: Timestamp | None = _timestamp("When its garbage collection was noticed.")
    items: list[TrashItemOut]


class TrashPage(Page):
    results: list[TrashOperationOut]


class RestoreIn(Strict):
    digests: list[Annotated[str, Field(pattern=SELECTED_DIGEST_PATTERN)]] = Field(
        default_factory=list,
        max_length=MAX_DIGESTS,
        description="Only these items (an index brings the children its deletion took); "
        "empty: all of it.",
    )
    move_tags: StrictBool = Field(
        False, description="Move a tag back even where it now names another manifest."
    )
    whole_run: StrictBool = Field(
        False, description="Restore every deletion of this one's retention run."
    )


# -- in use ------------------------------------------------------------------------------


class InUseImageIn(Strict):
    reference: str = Field(
        max_length=1000,
        description="`host[:port]/repository@sha256:…`, or `…:tag` (resolved when received); "
        "`nginx` reads as Docker reads it, `docker.io/library/nginx:latest`.",
    )
    where: str = Field(
        "", max_length=1000, description="Where it runs, e.g. `prod/default/pod/api-7d9f`."
    )


class InUseReportIn(Strict):
    """SPEC §13's report: it replaces the source's last one whole."""

    images: list[InUseImageIn] = Field(max_length=100_000)
    ttl_seconds: int = Field(
        ge=60, le=90 * 24 * 3600, description="The report holds this long after it arrives."
    )
    required: StrictBool = Field(
        False,
        description="While this source's report is out of date, retention deletes nothing "
        "on the registries it names.",
    )


class UnresolvedOut(Schema):
    reference: str
    where: str
    reason: str


class InUseReportOut(Schema):
    source: str
    received_at: Timestamp = Field(json_schema_extra={"format": "date-time"})
    expires_at: Timestamp = Field(json_schema_extra={"format": "date-time"})
    ttl_seconds: int
    required: bool
    references: int = Field(description="The references kept: those on registries served here.")
    unresolved: list[UnresolvedOut] = Field(
        description="Tags no repository here has (up to 100): not kept."
    )
    other_registries: dict[str, int] = Field(
        description="References to registries hubimages does not serve, by host: not kept."
    )
