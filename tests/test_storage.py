"""Storage insights (SPEC §10) against a real registry: each figure is what the plan engine
says, and what the garbage collector then frees; the cache; the history; and noticing
that the garbage collector ran."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from devtools.pusher import random_layer
from devtools.worker import run_tasks
from hubimages.deletion import execution, planning
from hubimages.jobs import queue
from hubimages.models import Deletion, Manifest, Repository, StorageFigures, StorageSample, SyncRun
from hubimages.registries import rows
from hubimages.storage import collection
from hubimages.storage import figures as storage_figures
from hubimages.sync.service import sync_registry

API = "team/api"
WEB = "team/web"
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


def make_stale(*digests: str) -> None:
    """Push times from long ago, written behind the syncs' back: the figures the last sync
    left go too."""
    Manifest.objects.filter(digest__in=digests).update(pushed_at=LONG_AGO, last_pulled_at=None)
    StorageFigures.objects.all().delete()


def command_json(*args: str) -> dict:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return json.loads(out.getvalue())


def stale_digests(repository: str) -> list[str]:
    listing = command_json("list_images", repository, "--status", "stale", "--json")
    return [row["digest"] for row in listing["results"]]


def dry_run_bytes(repository: str, digests: list[str]) -> int:
    plan = command_json("delete_images", repository, *digests, "--dry-run", "--json")
    return plan["reclaimable_bytes"]


@pytest.fixture
def two_teams(pusher, sync):
    """Two repositories. A layer only their stale items share; a layer a stale item of one
    shares with an active item of the other; a multi-arch index whose stale build keeps an
    image another index still uses; an untagged rebuild."""
    only_stale = random_layer(50_000, "only-stale")  # stale api/old + stale web/old
    with_active = random_layer(30_000, "with-active")  # stale api/old + active web/new
    old = pusher.push_image(API, tag="old", layers=[only_stale, with_active])
    amd = pusher.push_image(API, layers=[random_layer(8_000, "amd")])
    arm = pusher.push_image(API, layers=[random_layer(9_000, "arm")], architecture="arm64")
    release = pusher.push_index(API, tag="1.0", images=[amd, arm], attestations=True)
    pusher.push_index(API, tag="stable", images=[arm])
    first = pusher.push_image(API, tag="nightly", layers=[random_layer(4_000, "nightly-1")])
    web_old = pusher.push_image(WEB, tag="old", layers=[only_stale, random_layer(2_000, "w")])
    web_new = pusher.push_image(WEB, tag="new", layers=[with_active])
    sync()
    pusher.push_image(API, tag="nightly", layers=[random_layer(4_500, "nightly-2")])
    sync()  # the first nightly stays, untagged
    make_stale(old.digest, release.digest, web_old.digest)
    return SimpleNamespace(
        old=old,
        release=release,
        amd=amd,
        arm=arm,
        first_nightly=first,
        web_old=web_old,
        web_new=web_new,
        only_stale=len(only_stale),
    )


def by_name(figures: dict) -> dict[str, dict]:
    return {row["name"]: row for row in figures["repositories"]}


def test_figures_have_the_shape_of_the_storage_api(two_teams):
    figures = storage_figures.figures()

    assert list(figures) == [
        "registry",
        "stored_bytes",
        "stale_reclaimable_bytes",
        "untagged_bytes",
        "complete",
        "repositories",
        "history",
    ]
    assert [list(row) for row in figures["repositories"]] == [
        ["name", "stored_bytes", "stale_reclaimable_bytes", "untagged_bytes"]
    ] * 2
    assert [row["name"] for row in figures["repositories"]] == [API, WEB]
    assert [list(point) for point in figures["history"]] == [["at", "stored_bytes"]] * 2
    json.dumps(figures)  # as the API sends it


def test_a_repositorys_stale_figure_is_what_delete_images_dry_run_reports(two_teams):
    figures = by_name(storage_figures.figures())

    for name in (API, WEB):
        digests = stale_digests(name)
        assert digests  # each repository has stale items
        assert figures[name]["stale_reclaimable_bytes"] == dry_run_bytes(name, digests)
    assert sorted(stale_digests(API)) == sorted([two_teams.old.digest, two_teams.release.digest])
    # The stale index takes its amd64 image; its arm64 image stays in "stable".
    api_plan = planning.plan_deletion(
        repository=Repository.objects.get(name=API), digests=stale_digests(API)
    )
    assert two_teams.amd.digest in {item.digest for item in api_plan.delete}
    assert two_teams.arm.digest in {item.digest for item in api_plan.keep}


def test_the_registrys_stale_figure_counts_a_layer_only_stale_items_of_two_repositories_share(
    two_teams,
):
    figures = storage_figures.figures()
    rows = by_name(figures)

    together = planning.plan_deletions(
        {Repository.objects.get(name=name): stale_digests(name) for name in (API, WEB)}
    )
    assert figures["stale_reclaimable_bytes"] == together.reclaimable_bytes
    # The layer the two stale items share is in neither repository's figure, but in the total;
    # the one an active item still uses is in none.
    separate = rows[API]["stale_reclaimable_bytes"] + rows[WEB]["stale_reclaimable_bytes"]
    assert figures["stale_reclaimable_bytes"] == separate + two_teams.only_stale


def test_the_untagged_figure_is_the_plan_of_the_untagged_items(two_teams):
    figures = storage_figures.figures()
    untagged = command_json("list_images", API, "--filter", "untagged", "--json")["results"]

    assert [row["digest"] for row in untagged] == [two_teams.first_nightly.digest]
    expected = dry_run_bytes(API, [two_teams.first_nightly.digest])
    assert expected == two_teams.first_nightly.size + two_teams.first_nightly.config_size + 4_000
    assert by_name(figures)[API]["untagged_bytes"] == expected
    assert by_name(figures)[WEB]["untagged_bytes"] == 0
    assert figures["untagged_bytes"] == expected


def test_stored_bytes_are_the_registrys_blobs_each_counted_once(two_teams, registry_server):
    figures = storage_figures.figures()

    assert figures["stored_bytes"] == registry_server.blob_bytes_on_disk()
    rows = by_name(figures)
    # Each repository counts what it uses; the shared layers make the sum larger.
    assert rows[API]["stored_bytes"] + rows[WEB]["stored_bytes"] > figures["stored_bytes"]


def test_the_garbage_collector_frees_exactly_the_registrys_stale_figure(
    two_teams, registry_server, registry_client
):
    registry_server.garbage_collect()
    before = registry_server.blob_bytes_on_disk()
    expected = storage_figures.figures()["stale_reclaimable_bytes"]

    for name in (API, WEB):
        repository = Repository.objects.get(name=name)
        digests = stale_digests(name)
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
    registry_server.garbage_collect()

    assert before - registry_server.blob_bytes_on_disk() == expected


def test_the_largest_items_and_the_most_shared_layers(two_teams):
    document = storage_figures.compute()

    largest = document["largest"]
    sizes = [item["size"] for item in largest]
    assert sizes == sorted(sizes, reverse=True)
    assert largest[0]["digest"] == two_teams.old.digest
    assert largest[0] | {"last_pushed": None} == {
        "repository": API,
        "digest": two_teams.old.digest,
        "kind": "image",
        "tags": ["old"],
        "size": two_teams.old.config_size + 80_000,
        "last_pushed": None,
        "stale": True,
        "status": "stale",
    }
    shared = {layer["size"]: layer for layer in document["shared_layers"]}
    assert shared[50_000] | {"digest": ""} == {
        "digest": "",
        "size": 50_000,
        "manifests": 2,
        "repositories": 2,
        "repository_names": [API, WEB],
        "more_repositories": 0,
        "saved_bytes": 50_000,
    }
    assert 8_000 not in shared  # used by one image only


# -- the cache -----------------------------------------------------------------------------------


def test_figures_are_computed_once_per_state_and_anew_after_a_sync(two_teams, pusher, sync):
    assert storage_figures.refresh() is True
    again = storage_figures.kept().document
    assert storage_figures.refresh() is False  # the same state: nothing to compute

    pusher.push_image(WEB, tag="big", layers=[random_layer(70_000, "big")])
    assert storage_figures.refresh() is False  # events aside, the registry is read by syncs

    sync(WEB)  # a repository's sync is enough
    assert storage_figures.outdated()
    assert storage_figures.refresh() is True
    after = storage_figures.kept().document
    assert after["stored_bytes"] > again["stored_bytes"]
    assert by_name(after)[WEB]["stored_bytes"] >= by_name(again)[WEB]["stored_bytes"] + 70_000
    assert StorageFigures.objects.count() == 1


def test_a_full_sync_job_leaves_the_figures_ready(two_teams, registry_url):
    queue.start_sync(started_by="schedule")
    run_tasks()  # the sync, then the figures it made out of date

    registry = rows.get()
    with CaptureQueriesContext(connection) as queries:
        kept = storage_figures.kept(registry)
    assert kept.current and len(queries) == 5


def test_a_deletion_shows_in_the_figures_at_once(two_teams, registry_client):
    before = storage_figures.figures()
    repository = Repository.objects.get(name=WEB)
    plan = planning.plan_deletion(repository=repository, digests=[two_teams.web_old.digest])
    execution.execute_deletion(
        repository=repository,
        digests=[two_teams.web_old.digest],
        fingerprint=plan.fingerprint,
        user=None,
        client=registry_client,
        username="test",
    )

    after = storage_figures.figures()
    assert by_name(after)[WEB]["stale_reclaimable_bytes"] == 0
    assert after["stored_bytes"] == before["stored_bytes"] - plan.reclaimable_bytes


def test_a_change_of_day_or_of_the_stale_setting_computes_anew(two_teams, settings):
    key = storage_figures.state_key()

    settings.STALE_AFTER_MONTHS = 120
    assert storage_figures.state_key() != key
    assert storage_figures.figures()["stale_reclaimable_bytes"] == 0


# -- history -------------------------------------------------------------------------------------


def test_each_successful_full_sync_adds_one_point(pusher, sync, registry_client):
    pusher.push_image(API, tag="1", layers=[random_layer(10_000, "one")])
    sync()
    pusher.push_image(API, tag="2", layers=[random_layer(20_000, "two")])
    sync()
    sync(API)  # one repository's sync is no point of the registry's history

    points = storage_figures.figures()["history"]
    assert len(points) == 2 == StorageSample.objects.count()
    assert points[1]["stored_bytes"] - points[0]["stored_bytes"] > 20_000
    assert points[1]["stored_bytes"] == storage_figures.figures()["stored_bytes"]
    assert points[0]["at"] < points[1]["at"] and points[1]["at"].endswith("Z")

    registry_client.base_url = "http://127.0.0.1:9"  # nothing listens there
    assert not sync_registry(registry_client).succeeded
    assert StorageSample.objects.count() == 2


def test_the_history_shows_at_most_120_points_of_the_last_90_days(db):
    now = timezone.now()
    StorageSample.objects.create(at=now - timedelta(days=91), stored_bytes=1)
    StorageSample.objects.bulk_create(
        StorageSample(at=now - timedelta(minutes=15 * n), stored_bytes=n) for n in range(1000)
    )

    points = storage_figures.history(now)

    assert len(points) == 120
    assert points[0]["stored_bytes"] == 999 and points[-1]["stored_bytes"] == 0


def test_points_older_than_a_year_are_forgotten(db):
    now = timezone.now()
    StorageSample.objects.create(at=now - timedelta(days=400), stored_bytes=1)
    StorageSample.objects.create(at=now - timedelta(days=300), stored_bytes=2)

    storage_figures.record_sample(now)

    assert list(StorageSample.objects.values_list("stored_bytes", flat=True)) == [2, 0]
    assert {sample.registry.name for sample in StorageSample.objects.all()} == {"default"}


# -- garbage collection ---------------------------------------------------------------------------


def delete(name: str, digests: list[str], client) -> Deletion:
    repository = Repository.objects.get(name=name)
    plan = planning.plan_deletion(repository=repository, digests=digests)
    outcome = execution.execute_deletion(
        repository=repository,
        digests=digests,
        fingerprint=plan.fingerprint,
        user=None,
        client=client,
        username="test",
    )
    return Deletion.objects.get(pk=outcome.operation_id)


def test_what_waits_for_the_garbage_collector_is_known_until_it_runs(
    two_teams, registry_server, registry_client, sync
):
    first = delete(WEB, [two_teams.web_old.digest], registry_client)
    second = delete(API, [two_teams.old.digest], registry_client)
    assert first.probe_digest and second.probe_digest

    waiting = collection.waiting_for_collection()
    assert waiting == collection.Waiting(first.reclaimed_bytes + second.reclaimed_bytes, 2)
    assert waiting.bytes > 0

    sync()  # the registry still has the blobs: nothing collected
    assert collection.waiting_for_collection() == waiting

    registry_server.garbage_collect()
    third = delete(API, [two_teams.release.digest], registry_client)
    sync()

    assert collection.waiting_for_collection() == collection.Waiting(third.reclaimed_bytes, 1)
    assert Deletion.objects.filter(collected_at__isnull=False).count() == 2


def test_deletions_from_before_the_upgrade_are_not_counted_as_waiting(db):
    from importlib import import_module

    from django.apps import apps

    done = Deletion.objects.create(username="old", repository=API, fingerprint="x")
    Deletion.objects.filter(pk=done.pk).update(finished_at=timezone.now(), reclaimed_bytes=10)
    migration = import_module("hubimages.migrations.0009_storage_insights")

    migration.untracked_deletions_count_as_collected(apps, None)

    assert collection.waiting_for_collection() == collection.Waiting(0, 0)


def test_a_sync_run_in_progress_is_no_state_to_cache_figures_for(two_teams):
    key = storage_figures.state_key()
    run = SyncRun.objects.create(started_at=timezone.now())
    during = storage_figures.state_key()
    SyncRun.objects.filter(pk=run.pk).update(finished_at=timezone.now(), succeeded=True)

    assert len({key, during, storage_figures.state_key()}) == 3
