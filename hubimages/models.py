"""What hubimages knows of the registry (SPEC §1), plus its own records.

Manifests are per repository (the same digest may live in several); blobs are global, as
the registry stores them. A few columns are kept up to date by `sync.rollups` rather
than computed on every page, so the list can filter and sort from an index:
`is_top_level`, `is_tagged`, and an index's `total_size`.
"""

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.functions import Now
from django.urls import reverse


def platform_label(os: str, architecture: str, variant: str) -> str:
    """`linux/arm64/v8`, `linux/amd64`: the parts that are known, joined."""
    return "/".join(part for part in (os, architecture, variant) if part)


class Registry(models.Model):
    """A registry hubimages serves (SPEC §11). Where it is and how to sign in come from the
    configuration (`hubimages.registries.config`), never from here: secrets stay in the
    environment or in files. The row is the registry's identity for everything that
    belongs to it, and what the workers learned of it (`capabilities`)."""

    name = models.SlugField(max_length=40, unique=True)
    url = models.CharField(max_length=500, blank=True)
    description = models.CharField(max_length=500, blank=True)
    # Declared by the configuration now; a registry taken out of it keeps its rows (its
    # history, its repositories as they were) but is no longer synced.
    configured = models.BooleanField(default=False)
    # What a cheap request of each kind found (`registries.probes`), and when.
    capabilities = models.JSONField(default=dict, blank=True)
    probed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "registries"

    def __str__(self) -> str:
        return self.name


def default_registry() -> int:
    """The registry `default` (made if need be): what a row names when it names none, as
    REGISTRY_URL alone means one registry of that name (SPEC §11). The app names its
    registry everywhere; this is for a single registry's scripts and tests."""
    return Registry.objects.get_or_create(name="default")[0].pk


class Repository(models.Model):
    registry = models.ForeignKey(
        Registry, on_delete=models.CASCADE, related_name="repositories", default=default_registry
    )
    name = models.CharField(max_length=255)
    first_seen_at = models.DateTimeField(auto_now_add=True)
    synced_at = models.DateTimeField(null=True, blank=True)
    # Bumped on every change so an open page can ask "anything new?" cheaply.
    revision = models.PositiveBigIntegerField(default=0)
    # Top-level items per list filter ("all", "tagged", …), kept by `sync.rollups`: a
    # list of a million manifests shows its count without counting them.
    list_counts = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "repositories"
        constraints = [
            models.UniqueConstraint(fields=["registry", "name"], name="repository_unique_name")
        ]
        indexes = [models.Index(fields=["name"], name="repository_by_name")]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("image_management", args=[self.registry.name, self.name])

    @property
    def key(self) -> tuple[str, str]:
        """(registry, name): what tells two repositories apart (load `registry` with it)."""
        return (self.registry.name, self.name)


class Blob(models.Model):
    """Content stored once for the whole registry: layers, configs and manifest bytes. A
    blob two registries hold is two blobs: each registry collects its own storage."""

    registry = models.ForeignKey(
        Registry, on_delete=models.CASCADE, related_name="blobs", default=default_registry
    )
    digest = models.CharField(max_length=160)
    size = models.BigIntegerField()
    media_type = models.CharField(max_length=255, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["registry", "digest"], name="blob_unique_digest")
        ]

    def __str__(self) -> str:
        return self.digest


class PushedFrom(models.TextChoices):
    """How a manifest's Last pushed was found (SPEC §2): only a push event dates it; a
    plausible build time estimates it; the time a sync first saw it dates nothing, and
    leaves the item Unknown until a push or pull is seen (`inventory.status`)."""

    EVENT = "event", "Push event"
    BUILD = "build", "Build time"
    FIRST_SEEN = "first_seen", "First seen"


class Manifest(models.Model):
    class Kind(models.TextChoices):
        INDEX = "index", "Image index"
        IMAGE = "image", "Image"
        ATTESTATION = "attestation", "Attestation"
        ARTIFACT = "artifact", "Referrer"

    repository = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="manifests")
    digest = models.CharField(max_length=160)
    media_type = models.CharField(max_length=255)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    artifact_type = models.CharField(max_length=255, blank=True)
    size = models.BigIntegerField(help_text="The manifest's own bytes.")
    total_size = models.BigIntegerField(default=0, help_text="Config + layers (SPEC §2).")
    os = models.CharField(max_length=64, blank=True)
    architecture = models.CharField(max_length=64, blank=True)
    variant = models.CharField(max_length=64, blank=True)
    annotations = models.JSONField(default=dict, blank=True)
    config_digest = models.CharField(max_length=160, blank=True)
    labels = models.JSONField(default=dict, blank=True)
    history = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(null=True, blank=True, help_text="Build time, if plausible.")
    subject_digest = models.CharField(max_length=160, blank=True)
    subject = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="referrers"
    )
    first_seen_at = models.DateTimeField()
    pushed_at = models.DateTimeField()
    pushed_at_estimated = models.BooleanField(default=True)
    pushed_at_source = models.CharField(
        max_length=10, choices=PushedFrom.choices, default=PushedFrom.BUILD
    )
    last_pulled_at = models.DateTimeField(null=True, blank=True)
    is_top_level = models.BooleanField(default=True)
    is_tagged = models.BooleanField(default=False)
    # A sync's HEAD by digest answered 404 then: kept (a blip must not drop an untagged
    # image the registry API cannot list again) until a later sync asks again.
    unconfirmed_since = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["repository", "digest"], name="manifest_unique_digest")
        ]
        indexes = [
            models.Index(
                fields=["repository", "is_top_level", "pushed_at"], name="manifest_by_pushed"
            ),
            models.Index(
                fields=["repository", "is_top_level", "total_size"], name="manifest_by_size"
            ),
            models.Index(
                fields=["repository", "is_top_level", "last_pulled_at"], name="manifest_by_pulled"
            ),
            models.Index(
                fields=["repository", "is_top_level", "kind", "pushed_at"], name="manifest_by_kind"
            ),
            models.Index(
                fields=["repository", "is_top_level", "is_tagged", "pushed_at"],
                name="manifest_by_tagged",
            ),
            # A filter with another sort would scan past every row of the other kind
            # (indexes sort after all images by size): one index per filter × sort.
            models.Index(
                fields=["repository", "is_top_level", "kind", "total_size"],
                name="manifest_by_kind_size",
            ),
            models.Index(
                fields=["repository", "is_top_level", "kind", "last_pulled_at"],
                name="manifest_by_kind_pulled",
            ),
            models.Index(
                fields=["repository", "is_top_level", "is_tagged", "total_size"],
                name="manifest_by_tagged_size",
            ),
            models.Index(
                fields=["repository", "is_top_level", "is_tagged", "last_pulled_at"],
                name="manifest_by_tagged_pulled",
            ),
            models.Index(fields=["config_digest"], name="manifest_by_config"),
            models.Index(fields=["digest"], name="manifest_by_digest"),
            # A manifest's referrers waiting for it (`rollups.changing`): few rows have a
            # subject, so only they are indexed.
            models.Index(
                fields=["repository", "subject_digest"],
                name="manifest_by_subject_digest",
                condition=~models.Q(subject_digest=""),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.repository.name}@{self.digest}"

    @property
    def platform(self) -> str:
        return platform_label(self.os, self.architecture, self.variant)


class IndexEntry(models.Model):
    """An index's pointer to one of its child manifests, with the platform it declares."""

    index = models.ForeignKey(Manifest, on_delete=models.CASCADE, related_name="entries")
    child = models.ForeignKey(Manifest, on_delete=models.CASCADE, related_name="parent_entries")
    position = models.PositiveIntegerField()
    os = models.CharField(max_length=64, blank=True)
    architecture = models.CharField(max_length=64, blank=True)
    variant = models.CharField(max_length=64, blank=True)
    annotations = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["position"]
        constraints = [
            models.UniqueConstraint(fields=["index", "position"], name="entry_unique_position")
        ]
        indexes = [models.Index(fields=["child"], name="entry_by_child")]

    @property
    def platform(self) -> str:
        return platform_label(self.os, self.architecture, self.variant)

    @property
    def child_platform(self) -> str:
        """The platform the index declares for its child, else the child's own config's."""
        return self.platform or self.child.platform


class ManifestBlob(models.Model):
    class Role(models.TextChoices):
        MANIFEST = "manifest", "Manifest bytes"
        CONFIG = "config", "Config"
        LAYER = "layer", "Layer"

    manifest = models.ForeignKey(Manifest, on_delete=models.CASCADE, related_name="blob_links")
    blob = models.ForeignKey(Blob, on_delete=models.PROTECT, related_name="manifest_links")
    role = models.CharField(max_length=8, choices=Role.choices)
    position = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["position"]
        constraints = [
            models.UniqueConstraint(
                fields=["manifest", "role", "position"], name="manifestblob_unique_position"
            )
        ]
        indexes = [models.Index(fields=["blob", "manifest"], name="manifestblob_by_blob")]


class Tag(models.Model):
    repository = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="tags")
    name = models.CharField(max_length=128)
    manifest = models.ForeignKey(Manifest, on_delete=models.CASCADE, related_name="tags")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["repository", "name"], name="tag_unique_name")
        ]

    def __str__(self) -> str:
        return self.name


class SyncRun(models.Model):
    """One sync, closed with its summary as it ends, or by the workers if its process
    stopped first (`sync.service.settle_interrupted_syncs`)."""

    registry = models.ForeignKey(
        Registry, on_delete=models.CASCADE, related_name="sync_runs", default=default_registry
    )
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    succeeded = models.BooleanField(default=False)
    summary = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-started_at"]
        get_latest_by = "started_at"
        indexes = [
            models.Index(fields=["registry", "-started_at"], name="syncrun_by_registry"),
            # The workers look for interrupted syncs every few seconds.
            models.Index(fields=["id"], condition=Q(finished_at=None), name="syncrun_running"),
        ]


class Deletion(models.Model):
    """One deletion operation: a person's "Delete forever", a `delete_images` run, or one
    repository of a retention run. Its records say what went, manifest by manifest."""

    class State(models.TextChoices):
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        PARTIAL = "partial", "Partly done"
        STALE = "stale", "Plan changed: nothing deleted"
        FAILED = "failed", "Failed"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    username = models.CharField(max_length=150)
    # The registry by name: the history outlives a registry taken out of the configuration.
    registry = models.CharField(max_length=40, default="default")
    repository = models.CharField(max_length=255)
    selected = models.JSONField(default=list, blank=True)
    fingerprint = models.CharField(max_length=64)
    # The retention run this deletion is one repository of: settling an interrupted run
    # reads what went from its deletions' records.
    retention_run = models.ForeignKey(
        "RetentionRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="deletions"
    )
    # The deletion job that ran it: a job is never run again once one of its DELETEs may
    # have gone out, and its recovery reads what went from here.
    job = models.ForeignKey(
        "Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="deletions"
    )
    state = models.CharField(max_length=16, choices=State.choices, default=State.RUNNING)
    message = models.TextField(blank=True)
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    reclaimed_bytes = models.BigIntegerField(default=0)
    # What it deleted although a live in-use report named it (SPEC §13), on the explicit
    # override of `username`: [{"digest", "in_use": [{"source", "where"}]}].
    in_use_override = models.JSONField(default=list, blank=True)
    # The registry frees `reclaimed_bytes` when its garbage collector runs. One blob the
    # deletion freed (its largest layer or config) is asked for after each full sync: once
    # the registry no longer has it, the collector has run (`storage.note_collections`).
    probe_digest = models.CharField(max_length=160, blank=True)
    collected_at = models.DateTimeField(
        null=True, blank=True, help_text="When hubimages saw the garbage collector had run."
    )

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [
            models.Index(fields=["repository", "-started_at"], name="operation_by_repository"),
            models.Index(fields=["collected_at", "finished_at"], name="operation_by_collection"),
            # The workers look for interrupted deletions every few seconds.
            models.Index(
                fields=["repository"], condition=Q(state="running"), name="operation_running"
            ),
        ]

    @property
    def name(self) -> str:
        """What every page, the CSV and the API call it: "Deletion #12", its own number
        (the job that ran it is "Job #N · Deletion", another number)."""
        return f"Deletion #{self.pk}"


class DeletionRecord(models.Model):
    """One manifest of a deletion: written PENDING before its DELETE is sent and DONE or
    FAILED after, so a worker that dies mid-way leaves an exact history."""

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        DONE = "done", "Deleted"
        FAILED = "failed", "Failed"
        # Deleted, then put back from the Trash (`restored_at`, `restored_by`).
        RESTORED = "restored", "Restored"

    operation = models.ForeignKey(
        Deletion, null=True, blank=True, on_delete=models.CASCADE, related_name="records"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    username = models.CharField(max_length=150)
    deleted_at = models.DateTimeField(auto_now_add=True)
    # The registry by name: the history outlives a registry taken out of the configuration.
    registry = models.CharField(max_length=40, default="default")
    repository = models.CharField(max_length=255)
    digest = models.CharField(max_length=160)
    kind = models.CharField(max_length=16)
    tags = models.JSONField(default=list, blank=True)
    size = models.BigIntegerField(default=0)
    reclaimed_bytes = models.BigIntegerField(default=0)
    state = models.CharField(max_length=16, choices=State.choices, default=State.DONE)
    message = models.CharField(max_length=512, blank=True)
    restored_at = models.DateTimeField(null=True, blank=True)
    restored_by = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["-deleted_at", "-id"]
        indexes = [
            models.Index(fields=["-deleted_at", "-id"], name="deletion_by_time"),
            models.Index(fields=["repository", "-deleted_at"], name="deletion_by_repository"),
        ]


class KeptManifest(models.Model):
    """A deleted manifest as it was, kept so the Trash can give it back until the garbage
    collector runs (SPEC §12): its exact bytes and media type, and its Last pushed and
    Last pulled. Created with its record's PENDING state, in the same transaction, before
    the DELETE is sent: no DELETE goes out without it. Its registry, repository, digest,
    kind and tags are its record's. Forgotten after TRASH_KEEP_DAYS.

    `state` is what the last check found (HEADs of the blobs it references, never a
    guess); whether it was restored is its record's state."""

    class State(models.TextChoices):
        UNCHECKED = "unchecked", "Not checked yet"
        RESTORABLE = "restorable", "Restorable"
        PARTLY_LOST = "partly_lost", "Partly lost"
        LOST = "lost", "Lost"

    record = models.OneToOneField(
        DeletionRecord, on_delete=models.CASCADE, primary_key=True, related_name="kept"
    )
    media_type = models.CharField(max_length=255)
    body = models.BinaryField()
    pushed_at = models.DateTimeField(null=True, blank=True)
    pushed_at_estimated = models.BooleanField(default=True)
    pushed_at_source = models.CharField(
        max_length=10, choices=PushedFrom.choices, default=PushedFrom.BUILD
    )
    last_pulled_at = models.DateTimeField(null=True, blank=True)
    first_seen_at = models.DateTimeField(null=True, blank=True)
    # The blobs the deletion freed that were credited to this manifest ([digest, size,
    # role], as `DeletionRecord.reclaimed_bytes` counts them): a restore takes back those it
    # brings back into use from "deleted, awaiting collection".
    freed = models.JSONField(default=list, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.UNCHECKED)
    checked_at = models.DateTimeField(null=True, blank=True)
    # What the last check found missing: blobs, or child manifests of an index.
    missing = models.JSONField(default=list, blank=True)
    # The last restore's word on it: why it failed.
    message = models.CharField(max_length=512, blank=True)
    # The tags the last restore left naming another manifest ([{"tag", "now"}]): shown, and
    # moved back only when someone asks (`move_tags`).
    conflicts = models.JSONField(default=list, blank=True)


class RegistryEvent(models.Model):
    """A registry notification, kept so a redelivered event changes nothing."""

    class State(models.TextChoices):
        RECEIVED = "received", "Received"  # waits for the worker (pushes, deferred deletes)
        APPLIED = "applied", "Applied"
        IGNORED = "ignored", "Ignored"
        # A pull of a manifest not stored yet: applied when its push is stored.
        WAITING = "waiting", "Waiting for manifest"
        FAILED = "failed", "Failed"

    registry = models.ForeignKey(
        Registry, on_delete=models.CASCADE, related_name="events", default=default_registry
    )
    event_id = models.CharField(max_length=128)
    action = models.CharField(max_length=16)
    repository = models.CharField(max_length=255)
    digest = models.CharField(max_length=160, blank=True)
    tag = models.CharField(max_length=128, blank=True)
    media_type = models.CharField(max_length=255, blank=True)
    occurred_at = models.DateTimeField()
    user_agent = models.CharField(max_length=512, blank=True)
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.RECEIVED)
    message = models.CharField(max_length=512, blank=True, help_text="What happened, for people.")
    attempts = models.PositiveIntegerField(default=0)
    # A worker claims RECEIVED events before working on them; a claim that outlives its
    # lease (the worker died) may be taken by another.
    claimed_until = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["processed_at"], name="event_by_processed"),
            models.Index(
                fields=["registry", "repository", "digest", "action"], name="event_by_manifest"
            ),
            models.Index(fields=["state", "id"], name="event_by_state"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["registry", "event_id"], name="event_unique_id")
        ]


class Lease(models.Model):
    """A named lock that expires unless its holder renews it: a repository's (sync and
    delete take it), the full sync's, a running record's. A row exists while someone holds
    the name; its id is the lease's generation, the fencing token a holder checks before
    each DELETE. A holder that dies leaves nothing that needs a person: its lease runs out
    and anyone may take it over. See `hubimages.lib.leases`."""

    name = models.CharField(max_length=300, unique=True)
    owner = models.CharField(max_length=200, blank=True)
    acquired_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)


class Job(models.Model):
    """A task someone (or the schedule) started, as people follow it: its progress, its
    outcome, and why it failed. The queue itself is django-tasks-db's; `task_id` points at
    the current attempt there."""

    class Kind(models.TextChoices):
        SYNC = "sync", "Full sync"
        SYNC_REPOSITORY = "sync_repository", "Repository sync"
        DELETION = "deletion", "Deletion"
        RETENTION = "retention", "Retention run"
        RESTORE = "restore", "Restore from the Trash"
        TRASH_CHECK = "trash_check", "Trash check"

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    kind = models.CharField(max_length=32, choices=Kind.choices)
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    started_by = models.CharField(max_length=150, help_text="A username, or 'schedule'.")
    registry = models.CharField(max_length=40, blank=True)
    repository = models.CharField(max_length=255, blank=True)
    params = models.JSONField(default=dict, blank=True)
    progress = models.CharField(max_length=500, blank=True)
    outcome = models.JSONField(default=dict, blank=True)
    message = models.TextField(blank=True, help_text="Why it failed or retries, for people.")
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=3)
    task_id = models.CharField(max_length=64, blank=True)
    worker_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["state", "kind"], name="job_by_state"),
            models.Index(fields=["-created_at", "-id"], name="job_by_time"),
        ]

    @property
    def finished(self) -> bool:
        return self.state in (self.State.SUCCEEDED, self.State.FAILED)

    @property
    def name(self) -> str:
        """ "Job #2 · Deletion": a job's own number, never a deletion's ("Deletion #1", the
        number History, the Trash and the CSV give what the job deleted)."""
        return f"Job #{self.pk} · {self.get_kind_display()}"

    @property
    def started_by_label(self) -> str:
        """Who started it; for a retention run, who and the policy, as the deletions it
        makes are recorded ("alice · policy nightly", "scheduled · policy nightly")."""
        if self.kind != self.Kind.RETENTION:
            return self.started_by
        who = "scheduled" if self.params.get("scheduled") else self.started_by or "someone"
        return f"{who} · policy {self.params.get('policy', '')}"


class WorkerHeartbeat(models.Model):
    """A `db_worker` process says it is alive; a task it was running while its heartbeat
    stopped is recovered by the other workers (`hubimages.jobs.worker.recover`)."""

    worker_id = models.CharField(max_length=64, unique=True)
    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    beat_at = models.DateTimeField(db_index=True)


class Schedule(models.Model):
    """When a periodic job is next due; workers claim it with a conditional UPDATE, so one
    of them, on whichever host, starts it."""

    name = models.CharField(max_length=64, unique=True)
    next_run_at = models.DateTimeField()


def all_registries() -> list[str]:
    return ["*"]


class RetentionPolicy(models.Model):
    """A stored retention policy (SPEC §8), its fields those of the policy's JSON.

    `rules` holds the rules as written (checked by `retention.parse_policy` before saving);
    `next_run_at` is when its schedule is next due (None: no schedule), kept by
    `retention.save_policy` and `retention.run_due_policies`."""

    name = models.CharField(max_length=100, unique=True)
    # Registry names the policy covers (globs, `!` excludes; SPEC §11), beside `repositories`.
    registries = models.JSONField(default=all_registries)
    repositories = models.JSONField(default=list)
    rules = models.JSONField(default=list)
    max_delete_fraction = models.FloatField(default=0.5)
    schedule_hours = models.PositiveIntegerField(
        null=True, blank=True, help_text="Run every this many hours; empty: no schedule."
    )
    enabled = models.BooleanField(default=True, help_text="Off: the schedule is paused.")
    next_run_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "retention policies"
        indexes = [models.Index(fields=["enabled", "next_run_at"], name="policy_by_next_run")]

    def __str__(self) -> str:
        return self.name


class RetentionRun(models.Model):
    """One run of a policy, manual or scheduled: what it deleted and freed, and per
    repository what happened (`repositories`: a list of {"repository", "selected",
    "deleted", "tags", "reclaimed_bytes", "note"}). Its deletions are in DeletionRecord
    under the name of who started it and the policy, "alice · policy nightly" or
    "scheduled · policy nightly" (`retention.runs.run_by`; before: `policy:<name>`).
    Written as the run starts ("running") and settled as it ends, or by the workers if its
    process stopped (`retention.runs`)."""

    class Trigger(models.TextChoices):
        MANUAL = "manual", "Run now"
        SCHEDULED = "scheduled", "Schedule"
        COMMAND = "command", "Command line"

    class Outcome(models.TextChoices):
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        INCOMPLETE = "incomplete", "Incomplete"
        CHANGED = "changed", "Plan changed: nothing deleted"
        BUSY = "busy", "Busy: nothing deleted"
        FAILED = "failed", "Failed: nothing deleted"
        # A required in-use source's report is out of date (SPEC §13).
        BLOCKED = "blocked", "Blocked: nothing deleted"

    policy = models.ForeignKey(
        RetentionPolicy, null=True, blank=True, on_delete=models.SET_NULL, related_name="runs"
    )
    policy_name = models.CharField(max_length=100)
    trigger = models.CharField(max_length=16, choices=Trigger.choices)
    started_by = models.CharField(max_length=150, blank=True)
    started_at = models.DateTimeField(help_text="The run's `now`, fixed at its start.")
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    message = models.TextField(blank=True)
    manifests_deleted = models.PositiveIntegerField(default=0)
    tags_deleted = models.PositiveIntegerField(default=0)
    reclaimed_bytes = models.BigIntegerField(default=0)
    planned_bytes = models.BigIntegerField(default=0, help_text="The dry run's total.")
    repositories = models.JSONField(default=list, blank=True)
    job = models.ForeignKey(
        "Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="retention_runs"
    )

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [
            models.Index(fields=["policy", "-started_at"], name="run_by_policy"),
            # The workers look for interrupted runs every few seconds.
            models.Index(fields=["id"], condition=Q(outcome="running"), name="run_running"),
        ]


class ApiToken(models.Model):
    """A personal access token for the HTTP API (SPEC §9). Only its SHA-256 is stored: the
    token is 256 random bits, so a slow password hash would add nothing but latency, and a
    leaked table gives no usable token. `prefix` (its first characters) lets people tell
    their tokens apart."""

    class Scope(models.TextChoices):
        READ = "read", "Read"
        READ_DELETE = "read+delete", "Read and delete"
        # Sends in-use reports (SPEC §13), and does nothing else: not even read.
        REPORT = "report", "Report what runs"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100)
    scope = models.CharField(max_length=16, choices=Scope.choices)
    prefix = models.CharField(max_length=16)
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class ApiTokenFailure(models.Model):
    """Unknown tokens counted under one key, so guessing is rate-limited like sign-ins
    (`hubimages.accounts.tokens`): `address:<client address>` or `prefix:<the token's first
    characters>`. After `LOGIN_FAILURE_LIMIT` failures within `LOGIN_COOLOFF_MINUTES`,
    unknown tokens under that key are refused until `locked_until`."""

    key = models.CharField(max_length=80, unique=True)
    failures = models.PositiveIntegerField(default=0)
    first_failed_at = models.DateTimeField()
    locked_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["first_failed_at"], name="token_failure_by_time")]


class StorageSample(models.Model):
    """The registry's stored bytes at the end of a successful full sync, or after a
    deletion, retention run or restore that changed them: the Storage page's "over time"
    chart (kept a year)."""

    registry = models.ForeignKey(
        Registry, on_delete=models.CASCADE, related_name="samples", default=default_registry
    )
    at = models.DateTimeField(db_index=True)
    stored_bytes = models.BigIntegerField()

    class Meta:
        ordering = ["at"]


class StorageFigures(models.Model):
    """The Storage page's figures as last computed, and the key of the state they describe
    (`storage.state_key`): one row, shared by every web and worker process on any host."""

    registry = models.OneToOneField(Registry, on_delete=models.CASCADE, related_name="figures")
    key = models.CharField(max_length=64)
    computed_at = models.DateTimeField()
    figures = models.JSONField(default=dict)


class InUseSource(models.Model):
    """Something that reports what runs (SPEC §13): a cluster, a CI system. Each report
    replaces its references whole (`inuse.reports.replace`). The report is live while
    `received_at` (the database's clock) plus `ttl_seconds` is ahead of the database's
    clock; a `required` source whose report is no longer live stops retention runs on the
    registries its references name."""

    name = models.CharField(max_length=100, unique=True)
    required = models.BooleanField(default=False)
    ttl_seconds = models.PositiveIntegerField()
    received_at = models.DateTimeField()
    reported_by = models.CharField(max_length=150, blank=True)
    # The references kept (the report's images on registries hubimages serves), those on
    # other registries, and the tags that named nothing hubimages knows (up to 100).
    size = models.PositiveIntegerField(default=0)
    ignored = models.PositiveIntegerField(default=0)
    unresolved = models.JSONField(default=list, blank=True)
    # The names of the registries its references name: those it stops retention on when
    # it is required and out of date.
    registries = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class InUseReference(models.Model):
    """One image a source's report says runs, `where` (untrusted text). Matched by
    (registry, digest): a runtime reports whichever repository name it pulled a digest
    under first, so the digest, not the name, says what runs."""

    source = models.ForeignKey(InUseSource, on_delete=models.CASCADE, related_name="references")
    registry = models.ForeignKey(Registry, on_delete=models.CASCADE, related_name="+")
    repository = models.CharField(max_length=255)
    digest = models.CharField(max_length=160)
    tag = models.CharField(max_length=128, blank=True)
    where = models.CharField(max_length=300, blank=True)

    class Meta:
        # Every page counts the places that name its digests, from this index alone.
        indexes = [
            models.Index(fields=["registry", "digest", "source", "where"], name="inuse_by_digest")
        ]


# -- teams, sign-in and audit (SPEC §14) -----------------------------------------------------


class Team(models.Model):
    """People who share rights: its members, the identity provider's groups bound to it,
    and its grants (`hubimages.teams`)."""

    name = models.CharField(max_length=100, unique=True)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, related_name="teams", blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class GroupBinding(models.Model):
    """Whoever the identity provider says is in `group` belongs to the team: bound by name,
    so a group is bound before any of its members has signed in."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="bindings")
    group = models.CharField(max_length=255, db_index=True)

    class Meta:
        ordering = ["group"]
        constraints = [
            models.UniqueConstraint(fields=["team", "group"], name="one_binding_per_group")
        ]


class Grant(models.Model):
    """A role on the repositories a glob names (SPEC §8's globs), in one registry. A
    pattern starting with `!` excludes, from the team's grants of the same role and
    registry, what it names."""

    class Role(models.TextChoices):
        VIEWER = "viewer", "Viewer"
        DELETER = "deleter", "Deleter"
        POLICY_ADMIN = "policy_admin", "Policy admin"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="grants")
    role = models.CharField(max_length=16, choices=Role.choices)
    pattern = models.CharField(max_length=255)
    # The registry's name; a plain string until registries are objects of their own.
    registry = models.CharField(max_length=63, default="default")

    class Meta:
        ordering = ["registry", "role", "pattern"]
        constraints = [
            models.UniqueConstraint(
                fields=["team", "role", "pattern", "registry"], name="one_grant_per_pattern"
            )
        ]


class UserGroup(models.Model):
    """A group the identity provider named for the user at their last sign-in (replaced
    whole at each one)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="identity_groups"
    )
    name = models.CharField(max_length=255, db_index=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["user", "name"], name="one_row_per_group")]


class AuditIsAppendOnly(Exception):
    """Something tried to change or remove an audit entry."""


class AuditQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AuditIsAppendOnly("audit entries are never changed")

    def bulk_update(self, objs, fields, batch_size=None):
        raise AuditIsAppendOnly("audit entries are never changed")

    def delete(self):
        raise AuditIsAppendOnly("audit entries are never deleted")


class AuditEntry(models.Model):
    """Who did what, when, from where (SPEC §14): written once, never changed or deleted
    by the app (its queryset and instances refuse). Names are copied, not referenced, so
    an entry outlives the user, team or policy it names; the time is the database's."""

    class Action(models.TextChoices):
        SIGN_IN = "sign_in", "Signed in"
        SIGN_IN_FAILED = "sign_in_failed", "Failed to sign in"
        TOKEN_CREATED = "token_created", "Created an API token"
        TOKEN_REVOKED = "token_revoked", "Revoked an API token"
        DELETION_STARTED = "deletion_started", "Started a deletion"
        # Written by the Trash (SPEC §12) and In use (§13) features; in_use_override: "delete
        # even though in use", with what a live report said runs, and where.
        RESTORE = "restore", "Started a restore from the Trash"
        IN_USE_OVERRIDE = "in_use_override", "Deleted images in use"
        POLICY_CREATED = "policy_created", "Created a retention policy"
        POLICY_CHANGED = "policy_changed", "Changed a retention policy"
        POLICY_RUN = "policy_run", "Ran a retention policy"
        POLICY_DELETED = "policy_deleted", "Deleted a retention policy"
        TEAM_CREATED = "team_created", "Created a team"
        TEAM_DELETED = "team_deleted", "Deleted a team"
        MEMBER_ADDED = "member_added", "Added a team member"
        MEMBER_REMOVED = "member_removed", "Removed a team member"
        GROUP_BOUND = "group_bound", "Bound a group to a team"
        GROUP_UNBOUND = "group_unbound", "Unbound a group from a team"
        GRANT_ADDED = "grant_added", "Granted a role"
        GRANT_REVOKED = "grant_revoked", "Revoked a grant"

    at = models.DateTimeField(db_default=Now(), db_index=True)
    actor_id = models.BigIntegerField(null=True, blank=True)
    actor = models.CharField(max_length=255, blank=True, db_index=True)
    address = models.CharField(max_length=64, blank=True)
    action = models.CharField(max_length=32, choices=Action.choices, db_index=True)
    target = models.CharField(max_length=255, blank=True)
    details = models.JSONField(default=dict, blank=True)

    objects = AuditQuerySet.as_manager()

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"{self.actor or 'someone'} {self.get_action_display().lower()} {self.target}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AuditIsAppendOnly("audit entries are never changed")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AuditIsAppendOnly("audit entries are never deleted")
