"""Active, Unknown or Stale (SPEC §2): one rule, for a top-level row in Python and in SQL,
and through the cascade to an index's images and attestations and a subject's referrers."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from django.apps import apps as django_apps
from django.utils import timezone

from hubimages.deletion import planning, preview
from hubimages.inventory import lists, status
from hubimages.models import Manifest, PushedFrom, Repository
from tests.builders import finish, manifest

NOW = datetime(2026, 8, 31, 12, 0, tzinfo=UTC)
LONG_AGO = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.fixture
def at_now(monkeypatch, settings):
    settings.STALE_AFTER_MONTHS = 6
    monkeypatch.setattr(status, "timezone", SimpleNamespace(now=lambda: NOW))


def undated(row: Manifest, first_seen: datetime) -> None:
    """As a sync stores what has no plausible build time: Last pushed is first seen."""
    Manifest.objects.filter(pk=row.pk).update(
        pushed_at=first_seen,
        first_seen_at=first_seen,
        pushed_at_estimated=True,
        pushed_at_source=PushedFrom.FIRST_SEEN,
    )


def test_an_index_gives_its_images_and_attestations_its_status(db, at_now):
    repo = Repository.objects.create(name="cascade/index")
    # Built long ago, pushed in one index now: the images are as active as `latest`.
    amd = manifest(repo, "amd", pushed_at=LONG_AGO)
    arm = manifest(repo, "arm", pushed_at=LONG_AGO, architecture="arm64")
    attestation = manifest(repo, "att", pushed_at=LONG_AGO, kind=Manifest.Kind.ATTESTATION)
    latest = manifest(
        repo, "latest", pushed_at=NOW, kind=Manifest.Kind.INDEX, children=[amd, arm, attestation]
    )
    # And the other way: a stale index's images are stale, however recently first seen.
    fresh = manifest(repo, "fresh", pushed_at=NOW)
    undated(fresh, NOW)
    old = manifest(repo, "old", pushed_at=LONG_AGO, kind=Manifest.Kind.INDEX, children=[fresh])
    finish(repo)

    found = status.statuses([amd.pk, arm.pk, attestation.pk, latest.pk, fresh.pk, old.pk])

    assert found == {
        amd.pk: "active",
        arm.pk: "active",
        attestation.pk: "active",
        latest.pk: "active",
        fresh.pk: "stale",
        old.pk: "stale",
    }
    # Each alone (the image details page) says the same.
    arm.refresh_from_db()
    assert status.status_of(arm) == "active" and status.own_status(arm) == "stale"


def test_an_image_two_indexes_share_takes_the_most_alive_of_them(db, at_now):
    repo = Repository.objects.create(name="cascade/shared")
    shared = manifest(repo, "shared", pushed_at=LONG_AGO)
    manifest(repo, "stale", pushed_at=LONG_AGO, kind=Manifest.Kind.INDEX, children=[shared])
    unknown = manifest(repo, "unknown", pushed_at=NOW, kind=Manifest.Kind.INDEX, children=[shared])
    undated(unknown, NOW - timedelta(days=2))
    finish(repo)

    assert status.statuses([shared.pk]) == {shared.pk: "unknown"}
    assert status.resolve([shared.pk])[shared.pk] == ("unknown", NOW - timedelta(days=2))


def test_a_signature_is_as_stale_as_the_image_it_signs_so_deleting_it_needs_no_active_tick(
    db, at_now
):
    """The issue's reproduction: cosign's signature has no build time and was first seen
    minutes ago, yet it goes with a stale image."""
    repo = Repository.objects.create(name="cascade/signed")
    image = manifest(repo, "image", pushed_at=LONG_AGO, tags=["1.0"])
    signature = manifest(repo, "sig", pushed_at=NOW, kind=Manifest.Kind.ARTIFACT)
    undated(signature, NOW - timedelta(minutes=3))
    Manifest.objects.filter(pk=signature.pk).update(subject_digest=image.digest)
    active = manifest(repo, "active", pushed_at=NOW, tags=["2.0"])
    finish(repo)

    assert status.statuses([signature.pk, image.pk]) == {signature.pk: "stale", image.pk: "stale"}
    plan = planning.plan_deletion(repository=repo, digests=[image.digest])
    assert {item.digest for item in plan.delete} == {image.digest, signature.digest}
    assert not preview.needs_active_confirmation(plan, NOW)
    assert preview.flags(plan, NOW)[signature.digest]["active"] is False
    # Deleting an active item still takes the tick.
    assert preview.needs_active_confirmation(
        planning.plan_deletion(repository=repo, digests=[active.digest]), NOW
    )


def test_an_undated_item_is_unknown_until_watched_stale_after_months_then_stale(db, at_now):
    """In Python and in SQL alike, the list's filters and the rows' badges agree; a pull
    dates it (Active), and so does a push event or a plausible build time."""
    repo = Repository.objects.create(name="unknown/watched")
    rows = {
        name: manifest(repo, name, pushed_at=NOW)
        for name in ("new", "edge", "old", "pulled", "pushed", "built")
    }
    finish(repo)
    undated(rows["new"], NOW - timedelta(days=1))
    undated(rows["edge"], datetime(2026, 2, 28, 12, 0, tzinfo=UTC))  # six months, to the second
    undated(rows["old"], datetime(2026, 2, 28, 11, 59, tzinfo=UTC))
    undated(rows["pulled"], NOW - timedelta(days=1))
    Manifest.objects.filter(pk=rows["pulled"].pk).update(last_pulled_at=NOW)
    Manifest.objects.filter(pk=rows["built"].pk).update(pushed_at_source=PushedFrom.BUILD)
    expected = {
        "new": "unknown",
        "edge": "unknown",
        "old": "stale",
        "pulled": "active",
        "pushed": "active",
        "built": "active",
    }

    for name, row in rows.items():
        row.refresh_from_db()
        assert status.status_of(row) == expected[name], name
    for state in ("active", "unknown", "stale"):
        listed = lists.top_level(repo, lists.ListQuery(status=state))
        names = {name for name, row in rows.items() if row in listed}
        assert names == {name for name, want in expected.items() if want == state}, state
    # A `now` within STALE_AFTER_MONTHS of the first datetime: nothing is stale, no error.
    first = datetime(1, 1, 1, 0, 0, 1, tzinfo=UTC)
    assert status.stale_cutoff(first) == datetime.min.replace(tzinfo=UTC)
    assert status.status_from(first, PushedFrom.EVENT, None, first) == "active"


def test_the_migration_dates_existing_rows_as_honestly_as_they_tell(db):
    repo = Repository.objects.create(name="unknown/migrated")
    seen = timezone.now() - timedelta(days=3)
    event = manifest(repo, "event", pushed_at=seen - timedelta(days=1))
    built = manifest(repo, "built", pushed_at=seen - timedelta(days=30))
    first_seen = manifest(repo, "first-seen", pushed_at=seen)
    Manifest.objects.filter(pk__in=[built.pk, first_seen.pk]).update(
        pushed_at_estimated=True, first_seen_at=seen
    )
    Manifest.objects.filter(repository=repo).update(pushed_at_source=PushedFrom.BUILD)

    migration = importlib.import_module("hubimages.migrations.0025_status")
    migration.fill_sources(django_apps, None)

    sources = dict(Manifest.objects.filter(repository=repo).values_list("pk", "pushed_at_source"))
    assert sources == {event.pk: "event", built.pk: "build", first_seen.pk: "first_seen"}


def test_the_preview_says_which_items_it_asks_a_second_tick_for_are_undated(db, deleter_client):
    """Unknown items are not stale, so deleting them takes the second tick; the preview
    says they are undated rather than calling them pushed or pulled lately."""
    now = timezone.now()
    repo = Repository.objects.create(name="cascade/ticks")
    dated = manifest(repo, "dated", pushed_at=now - timedelta(days=3), tags=["1.0"])
    never = manifest(repo, "never", pushed_at=now, tags=["2.0"])
    undated(never, now - timedelta(days=1))
    finish(repo)
    url = f"/r/{repo.registry.name}/{repo.name}/-/delete/"

    both = deleter_client.post(url, {"digest": [dated.digest, never.digest]}).content.decode()
    only_undated = deleter_client.post(url, {"digest": [never.digest]}).content.decode()
    only_dated = deleter_client.post(url, {"digest": [dated.digest]}).content.decode()

    assert (
        "Also delete 2 active items: pushed or pulled in the last 6 months, and 1 not dated "
        "yet (Unknown: no push, pull or build time seen" in both
    )
    assert "Also delete 1 active item: 1 not dated yet (Unknown" in only_undated
    assert "pushed or pulled in the last" not in only_undated
    assert "Also delete 1 active item: pushed or pulled in the last 6 months." in only_dated
    assert "not dated yet" not in only_dated


def test_the_last_pushed_tooltip_names_what_estimated_it(db, viewer_client):
    """An estimated Last pushed says whether a build time or only the first sight of it
    dates the item, in the list and in the search across repositories."""
    now = timezone.now()
    repo = Repository.objects.create(name="cascade/tooltips")
    built = manifest(repo, "built", pushed_at=now - timedelta(days=40), tags=["v-built"])
    Manifest.objects.filter(pk=built.pk).update(
        pushed_at_estimated=True, pushed_at_source=PushedFrom.BUILD
    )
    seen = manifest(repo, "seen", pushed_at=now, tags=["v-seen"])
    undated(seen, now - timedelta(days=2))
    finish(repo)

    for page in (
        viewer_client.get(f"/r/{repo.registry.name}/{repo.name}/").content.decode(),
        viewer_client.get("/search/", {"q": "v-"}).content.decode(),
    ):
        assert "estimated from the image's build time\"" in page
        assert "estimated from when hubimages first saw it: nothing dates it yet" in page
        assert "build time or when it was first seen" not in page
