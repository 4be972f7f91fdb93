"""The list's derived columns and counts after a change of a few manifests (issue 18, item
6): a registry delete notification, a deletion, stored pushes. Each recomputes only what
it touched, and the result is exactly what a full `rollups.refresh` would give; and what it
writes does not grow with the repository."""

from __future__ import annotations

import json
import random
from contextlib import contextmanager
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from devtools.pusher import random_layer
from devtools.worker import run_tasks
from hubimages.deletion import execution, planning
from hubimages.models import Manifest, Repository, Tag
from hubimages.registries import rows as registry_rows
from hubimages.sync import rollups
from tests.builders import digest_for, finish, manifest
from tests.test_events import TOKEN, URL, registry_event

REPO = "team/app"
DERIVED = ("is_top_level", "is_tagged", "total_size", "pushed_at", "subject_id")


def derived(name: str) -> tuple[dict, dict]:
    """Every manifest's derived columns, and the stored counts per filter."""
    repository = Repository.objects.get(name=name)
    rows = {
        digest: values
        for digest, *values in Manifest.objects.filter(repository=repository)
        .order_by("digest")
        .values_list("digest", *DERIVED)
    }
    return rows, repository.list_counts


def assert_as_refresh_computes(name: str) -> None:
    incremental = derived(name)
    rollups.refresh(Repository.objects.get(name=name))
    assert incremental == derived(name)


def notify(client, *events_: dict) -> None:
    response = client.post(
        URL,
        data=json.dumps({"events": list(events_)}),
        content_type="application/vnd.docker.distribution.events.v1+json",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert response.status_code == 200, response.content


@pytest.fixture
def events_on(settings):
    settings.REGISTRY_EVENTS_TOKEN = TOKEN


def build(repository: Repository, seed: str, *, images: int = 30) -> None:
    """Indexes sharing children, attestations, referrers linked to their subjects, tagged
    and untagged images, estimated push times; plus `images` unrelated images."""
    now = timezone.now()
    kinds = Manifest.Kind
    shared = manifest(repository, f"{seed}-shared", pushed_at=now, size=700)
    for n in range(4):
        amd = manifest(repository, f"{seed}-amd-{n}", pushed_at=now, size=100 + n)
        arm = manifest(repository, f"{seed}-arm-{n}", pushed_at=now, size=200 + n)
        proof = manifest(repository, f"{seed}-proof-{n}", pushed_at=now, kind=kinds.ATTESTATION)
        manifest(
            repository,
            f"{seed}-index-{n}",
            pushed_at=now - timedelta(days=n),
            kind=kinds.INDEX,
            tags=[f"{seed}-v{n}"] if n % 2 else [],
            children=[amd, arm, proof] + ([shared] if n < 2 else []),
        )
        signature = manifest(repository, f"{seed}-sig-{n}", pushed_at=now, kind=kinds.ARTIFACT)
        Manifest.objects.filter(pk=signature.pk).update(subject_digest=amd.digest)
    for n in range(images):
        manifest(
            repository,
            f"{seed}-image-{n}",
            pushed_at=now - timedelta(days=n),
            tags=[f"{seed}-b{n}"] if n % 3 else [],
        )
    # Push times not seen, to be estimated from the children (indexes) and the index
    # (attestations), as a first sync leaves them.
    Manifest.objects.filter(
        repository=repository, kind__in=(kinds.INDEX, kinds.ATTESTATION)
    ).update(pushed_at_estimated=True, created_at=None)
    Manifest.objects.filter(repository=repository, kind=kinds.IMAGE).update(created_at=now)


def delete_event(repository: str, seed: str) -> dict:
    return registry_event("delete", repository, digest=digest_for(seed))


def test_delete_notifications_keep_every_column_and_count_as_refresh_would(db, client, events_on):
    repository = Repository.objects.create(name=REPO)
    build(repository, "r")
    finish(repository)
    order = [f"r-{what}-{n}" for what in ("index", "amd", "sig", "proof", "arm") for n in range(4)]
    order += ["r-shared", *(f"r-image-{n}" for n in range(0, 30, 4))]
    random.Random(18).shuffle(order)

    for seed in order:
        notify(client, delete_event(REPO, seed))
        assert_as_refresh_computes(REPO)
    for n in range(1, 30, 3):  # tags only
        notify(client, registry_event("delete", REPO, tag=f"r-b{n}"))
        assert_as_refresh_computes(REPO)
    assert Manifest.objects.filter(repository=repository).count() < 60


def test_a_repository_never_counted_is_counted_at_its_first_change(db, client, events_on):
    repository = Repository.objects.create(name=REPO)
    build(repository, "r", images=5)
    rollups.refresh(repository)
    Repository.objects.filter(pk=repository.pk).update(list_counts={})

    notify(client, delete_event(REPO, "r-image-0"))

    assert_as_refresh_computes(REPO)


@contextmanager
def rows_written():
    """Rows inserted, updated or deleted by the statements run in the block."""
    written = [0]

    def count(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if sql.lstrip().upper().startswith(("UPDATE", "DELETE", "INSERT")):
            written[0] += max(context["cursor"].rowcount, 0)
        return result

    with connection.execute_wrapper(count):
        yield written


def test_a_delete_notification_writes_as_much_in_a_big_repository_as_in_a_small_one(
    db, client, events_on
):
    written = {}
    registry_rows.ensure_rows()  # the configured registry's row, written once before
    for name, unrelated in (("small/app", 20), ("big/app", 600)):
        repository = Repository.objects.create(name=name)
        build(repository, name, images=unrelated)
        finish(repository)
        with rows_written() as rows:
            notify(client, delete_event(name, f"{name}-index-1"))
            notify(client, registry_event("delete", name, tag=f"{name}-b1"))
        written[name] = rows[0]
        assert_as_refresh_computes(name)

    assert written["big/app"] == written["small/app"]


# -- through the registry: stored pushes and deletions ---------------------------------------


def test_stored_pushes_and_deletions_keep_every_column_and_count_as_refresh_would(
    pusher, sync, registry_client, client, events_on, settings
):
    settings.REGISTRY_URL = registry_client.base_url
    base = random_layer(3_000, "base")
    amd = pusher.push_image(REPO, layers=[base, random_layer(1_000, "amd")])
    arm = pusher.push_image(REPO, layers=[base, random_layer(1_100, "arm")], architecture="arm64")
    release = pusher.push_index(REPO, tag="1.0", images=[amd, arm], attestations=True)
    signed = pusher.push_image(REPO, tag="edge", layers=[random_layer(900, "edge")])
    pusher.push_cosign_signature(REPO, signed)
    sync()
    assert_as_refresh_computes(REPO)

    # Pushed and notified: an index over an image already stored, a moved tag, a
    # signature whose subject arrives after it.
    later = pusher.push_image(REPO, layers=[random_layer(800, "later")])
    again = pusher.push_index(REPO, tag="2.0", images=[arm, later])
    moved = pusher.push_image(REPO, tag="edge", layers=[random_layer(950, "edge-2")])
    subject = pusher.push_image(REPO, layers=[random_layer(700, "subject")])
    signature = pusher.push_cosign_signature(REPO, subject)
    cosign_tag = subject.digest.replace(":", "-") + ".sig"
    for pushed, tag in ((signature, cosign_tag), (later, None), (again, "2.0"), (moved, "edge")):
        notify(client, registry_event("push", REPO, digest=pushed.digest, tag=tag))
        run_tasks()
        assert_as_refresh_computes(REPO)
    notify(client, registry_event("push", REPO, digest=subject.digest))
    run_tasks()
    assert_as_refresh_computes(REPO)
    assert Manifest.objects.get(digest=signature.digest).subject.digest == subject.digest

    repository = Repository.objects.get(name=REPO)
    for digests in ([release.digest], [signed.digest], [again.digest, subject.digest]):
        plan = planning.plan_deletion(repository=repository, digests=digests)
        outcome = execution.execute_deletion(
            repository=repository,
            digests=digests,
            fingerprint=plan.fingerprint,
            user=None,
            client=registry_client,
            username="test",
        )
        assert outcome.succeeded
        assert_as_refresh_computes(REPO)
    assert Tag.objects.filter(repository=repository).exists()
