"""Nothing a live in-use report names is deleted (SPEC §13), against a real registry: a
report pins one image of a multi-arch index; the list, the details and `list_images --json`
say where it runs; Preview and delete keeps the index and says why; retention keeps it; an
explicit override deletes it and the history says who chose to; a report that arrives after
the preview stops the deletion; an expired report protects nothing; a required source
whose report is out of date stops the next scheduled run, and the run's record says why."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import timedelta
from io import StringIO
from types import SimpleNamespace

import pytest
from django.core.management import call_command
from django.db.models import F
from django.utils import timezone

from devtools.pusher import random_layer
from devtools.worker import run_tasks
from hubimages.deletion import execution, planning, preview
from hubimages.inuse import reports
from hubimages.jobs import worker as jobs_worker
from hubimages.models import (
    AuditEntry,
    Deletion,
    InUseSource,
    Job,
    Manifest,
    Repository,
    RetentionPolicy,
    RetentionRun,
)
from hubimages.retention import engine, policies, runs
from tests.api_helpers import bearer, post_json

REPO = "team/app"
LIST = f"/r/default/{REPO}/"
PREVIEW = f"{LIST}-/delete/"
EXECUTE = f"{LIST}-/delete/confirm"
DELETE_API = f"/api/v1/repositories/{REPO}/delete-images"
PLACE = "prod/shop/pod/app-7d9f8b6c4-x2kqp"


@pytest.fixture
def app(pusher, sync, registry_url):
    """A multi-arch release (`1.0`: amd64 and arm64) and an old build (`0.9`), both stale;
    a live report of source `prod` (required) says the arm64 image runs."""
    amd = pusher.push_image(REPO, layers=[random_layer(2_000, "amd")])
    arm = pusher.push_image(REPO, layers=[random_layer(1_500, "arm")], architecture="arm64")
    release = pusher.push_index(REPO, tag="1.0", images=[amd, arm])
    old = pusher.push_image(REPO, tag="0.9", layers=[random_layer(1_000, "old")])
    sync()
    long_ago = timezone.now() - timedelta(days=400)
    Manifest.objects.update(pushed_at=long_ago, pushed_at_estimated=False, last_pulled_at=None)
    host = registry_url.split("://", 1)[1]
    report(host, arm.digest, required=True)
    return SimpleNamespace(amd=amd, arm=arm, release=release, old=old, host=host)


def report(host: str, *digests: str, required: bool = False, source: str = "prod") -> None:
    images = [{"reference": f"{host}/{REPO}@{digest}", "where": PLACE} for digest in digests]
    reports.replace(source=source, images=images, ttl_seconds=3600, required=required)


def expire(source: str = "prod") -> None:
    InUseSource.objects.filter(name=source).update(
        received_at=F("received_at") - timedelta(hours=2)
    )


def repository() -> Repository:
    return Repository.objects.select_related("registry").get(name=REPO)


def in_registry(client, *manifests) -> set[str]:
    return {m.digest for m in manifests if client.head_manifest(REPO, m.digest) is not None}


def form_fields(page: str) -> dict[str, list[str]]:
    form = re.search(r'<form class="confirm-delete[^"]*".*?</form>', page, re.S)
    assert form, "no Delete forever form"
    fields: dict[str, list[str]] = {}
    for name, value in re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', form[0]):
        fields.setdefault(name, []).append(value)
    return fields


# -- showing -----------------------------------------------------------------------------------


def test_the_list_the_details_and_list_images_say_where_it_runs(app, deleter_client, viewer):
    page = deleter_client.get(LIST).content.decode()

    release = re.search(
        rf'<tbody class="item" data-digest="{app.release.digest}">.*?</tbody>', page, re.S
    )[0]
    old = re.search(rf'<tbody class="item" data-digest="{app.old.digest}">.*?</tbody>', page, re.S)[
        0
    ]
    badge = (
        '<summary class="badge badge-in-use" title="A live in-use report says it runs">'
        "In use: <bdi>prod</bdi> ×1</summary>"
    )
    assert badge in release  # the index, for its arm64 image
    assert release.count(badge) == 2  # and the image itself, under it
    assert f"<li><bdi>{PLACE}</bdi></li>" in release
    assert "In use" not in old

    detail = deleter_client.get(f"{LIST}-/images/{app.arm.digest}/").content.decode()
    assert badge in detail and PLACE in detail
    # Its sibling is not in use: neither it, nor its index, nor a child of it runs.
    amd = deleter_client.get(f"{LIST}-/images/{app.amd.digest}/").content.decode()
    assert "badge-in-use" not in amd

    out = StringIO()
    call_command("list_images", REPO, "--json", stdout=out)
    items = {item["digest"]: item for item in json.loads(out.getvalue())["results"]}
    assert items[app.release.digest]["in_use"] == [{"source": "prod", "where": PLACE}]
    assert items[app.old.digest]["in_use"] == []

    api = deleter_client.get(f"/api/v1/repositories/{REPO}/images", headers=bearer(viewer, "read"))
    listed = {item["digest"]: item["in_use"] for item in api.json()["results"]}
    assert listed[app.release.digest] == [{"source": "prod", "where": PLACE}]


def test_places_are_untrusted_text_escaped_and_clipped(app, deleter_client):
    place = "<script>alert(1)</script>" + "x" * 400
    reports.replace(
        source="evil",
        images=[{"reference": f"{app.host}/{REPO}@{app.old.digest}", "where": place}],
        ttl_seconds=600,
    )

    page = deleter_client.get(LIST).content.decode()

    assert "<script>alert(1)" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "x" * 100 not in page  # clipped


# -- Preview and delete ------------------------------------------------------------------------


def test_the_preview_keeps_an_index_whose_image_runs_and_says_why(
    app, deleter_client, registry_client
):
    page = deleter_client.post(PREVIEW, {"digest": [app.release.digest, app.old.digest]})
    page = page.content.decode()

    plan = planning.plan_deletion(
        repository=repository(), digests=[app.release.digest, app.old.digest]
    )
    assert [item.digest for item in plan.delete] == [app.old.digest]
    [kept] = plan.keep
    assert (kept.digest, kept.reason) == (app.release.digest, f"in use by prod: {PLACE}")
    listed = re.findall(r'<tr class="delete-item" data-digest="(sha256:\w+)">', page)
    assert listed == [app.old.digest]
    assert f'<li class="kept-item" data-digest="{app.release.digest}">' in page
    assert f"Image index: in use by prod: {PLACE}</li>" in page
    section = re.search(r'<section class="in-use-kept".*?</section>', page, re.S)[0]
    assert "1 item stays: a live in-use report says it runs" in section
    assert 'name="allow_in_use" value="yes" required> Delete even though in use' in section
    assert "allow_in_use" not in form_fields(page)

    # Delete forever deletes the rest; the index and both its images stay.
    response = deleter_client.post(
        EXECUTE, {**form_fields(page), "confirm": "yes", "confirm_active": "yes"}
    )
    assert response.status_code in (200, 303), response.content[:300]
    run_tasks()
    assert in_registry(registry_client, app.release, app.amd, app.arm, app.old) == {
        app.release.digest,
        app.amd.digest,
        app.arm.digest,
    }
    assert Deletion.objects.get().in_use_override == []
    assert not AuditEntry.objects.filter(action="in_use_override").exists()


def test_an_image_that_runs_is_kept_when_selected_alone_and_the_index_too(app):
    plan = planning.plan_deletion(repository=repository(), digests=[app.arm.digest])

    assert plan.delete == () and plan.refused == ()
    assert [(i.digest, i.reason) for i in plan.keep] == [
        (app.arm.digest, f"in use by prod: {PLACE}")
    ]


def test_an_override_deletes_it_and_the_history_says_who_chose_to(
    app, deleter_client, registry_client
):
    page = deleter_client.post(
        PREVIEW, {"digest": [app.release.digest], "allow_in_use": "yes"}
    ).content.decode()

    listed = re.findall(r'<tr class="delete-item" data-digest="(sha256:\w+)">', page)
    assert set(listed) == {app.release.digest, app.amd.digest, app.arm.digest}
    assert "Deleted even though in use" in page
    assert (
        '<input type="checkbox" name="confirm_in_use" value="yes" required> Delete 2 items even '
        "though in use by <bdi>prod</bdi>; the deletion history records that I chose it."
    ) in page
    fields = form_fields(page)
    assert fields["allow_in_use"] == ["yes"]

    # Without the second tick, the server refuses too.
    refused = deleter_client.post(EXECUTE, {**fields, "confirm": "yes"})
    assert refused.status_code == 422
    assert "even though in use" in refused.content.decode()
    assert not Job.objects.exists()

    started = deleter_client.post(
        EXECUTE,
        {**fields, "confirm": "yes", "confirm_in_use": "yes"},
        REMOTE_ADDR="192.0.2.7",
    )
    assert started.status_code in (200, 303)
    job = Job.objects.get()
    assert job.params["allow_in_use"] is True
    # The audit log records the choice with the job, in its transaction: who, from where,
    # what runs and where.
    entry = AuditEntry.objects.get(action="in_use_override")
    assert (entry.actor, entry.address, entry.target) == ("deleter", "192.0.2.7", REPO)
    assert entry.details["job"] == job.pk
    assert {item["digest"]: item["in_use"] for item in entry.details["items"]} == {
        app.release.digest: [{"source": "prod", "where": PLACE}],
        app.arm.digest: [{"source": "prod", "where": PLACE}],
    }
    run_tasks()

    assert in_registry(registry_client, app.release, app.amd, app.arm) == set()
    operation = Deletion.objects.get()
    assert operation.username == "deleter"
    assert {item["digest"] for item in operation.in_use_override} == {
        app.release.digest,
        app.arm.digest,
    }
    assert operation.in_use_override[0]["in_use"] == [{"source": "prod", "where": PLACE}]
    history = deleter_client.get("/history/").content.decode()
    assert "In use, deleted on the override of <bdi>deleter</bdi>" in history
    assert "2 items in use by <bdi>prod</bdi>" in history
    export = deleter_client.get("/history/export.csv")
    lines = list(csv.DictReader(io.StringIO(b"".join(export.streaming_content).decode())))
    by_digest = {line["digest"]: line for line in lines}
    assert by_digest[app.arm.digest]["in_use_override"] == f"prod: {PLACE}"
    assert by_digest[app.amd.digest]["in_use_override"] == ""


def test_a_report_that_arrives_after_the_preview_stops_the_deletion(
    app, deleter_client, registry_client, deleter
):
    page = deleter_client.post(PREVIEW, {"digest": [app.old.digest]}).content.decode()
    fields = form_fields(page)
    report(app.host, app.arm.digest, app.old.digest, required=True)

    response = deleter_client.post(EXECUTE, {**fields, "confirm": "yes"})

    assert response.status_code == 422  # the plan now deletes nothing: a fresh preview
    assert "In use: kept" in response.content.decode()
    assert not Job.objects.exists()
    # Even past the web's check, the worker's own plan differs and nothing goes.
    outcome = execution.execute_deletion(
        repository=repository(),
        digests=[app.old.digest],
        fingerprint=fields["fingerprint"][0],
        user=deleter,
        client=registry_client,
    )
    assert outcome.stale and outcome.deleted == ()
    assert in_registry(registry_client, app.old) == {app.old.digest}


def test_a_new_report_naming_other_places_changes_no_plan(app):
    before = planning.plan_deletion(repository=repository(), digests=[app.release.digest])
    reports.replace(
        source="prod",
        images=[{"reference": f"{app.host}/{REPO}@{app.arm.digest}", "where": "prod/x/pod/new"}],
        ttl_seconds=3600,
    )

    after = planning.plan_deletion(repository=repository(), digests=[app.release.digest])

    assert after.keep[0].reason == "in use by prod: prod/x/pod/new"
    assert after.fingerprint == before.fingerprint


def test_an_expired_report_protects_nothing(app):
    expire()

    plan = planning.plan_deletion(repository=repository(), digests=[app.release.digest])

    assert {item.digest for item in plan.delete} == {
        app.release.digest,
        app.amd.digest,
        app.arm.digest,
    }
    assert plan.keep == ()


def test_the_preview_warns_while_a_required_source_is_out_of_date(app, deleter_client):
    expire()

    page = deleter_client.post(PREVIEW, {"digest": [app.old.digest]}).content.decode()

    warning = re.search(r'<p class="notice in-use-blocking".*?</p>', page, re.S)[0]
    assert "The required in-use source prod last reported 2\xa0h ago" in warning
    assert "longer ago than its time to live (1 hour)" in warning
    assert "Retention deletes nothing on <bdi>default</bdi> until it reports again." in warning


# -- the API -----------------------------------------------------------------------------------


def test_the_apis_dry_run_flags_what_runs_and_deleting_it_needs_allow_in_use(
    app, client, deleter, registry_client
):
    token = bearer(deleter)
    kept = post_json(client, DELETE_API, {"digests": [app.release.digest]}, headers=token).json()
    assert kept["delete"] == []
    assert kept["keep"] == [
        {
            "digest": app.release.digest,
            "reason": f"in use by prod: {PLACE}",
            "in_use": [{"source": "prod", "where": PLACE}],
        }
    ]

    body = {"digests": [app.release.digest], "allow_in_use": True}
    plan = post_json(client, DELETE_API, body, headers=token).json()
    flags = {item["digest"]: item["in_use"] for item in plan["delete"]}
    assert flags == {
        app.release.digest: [{"source": "prod", "where": PLACE}],
        app.amd.digest: [],  # goes with its index; not in use itself
        app.arm.digest: [{"source": "prod", "where": PLACE}],
    }
    # The dry run without the override is another plan: its fingerprint deletes nothing.
    wrong = {"digests": [app.release.digest], "dry_run": False}
    response = post_json(
        client, DELETE_API, {**wrong, "fingerprint": kept["fingerprint"]}, headers=token
    )
    assert response.status_code == 422  # the plan deletes nothing
    response = post_json(
        client,
        DELETE_API,
        {**body, "dry_run": False, "fingerprint": plan["fingerprint"]},
        headers=token,
    )
    assert response.status_code == 202, response.content
    entry = AuditEntry.objects.get(action="in_use_override")
    assert (entry.actor, entry.target) == ("deleter", REPO)
    assert {item["digest"] for item in entry.details["items"]} == {
        app.release.digest,
        app.arm.digest,
    }
    run_tasks()
    assert in_registry(registry_client, app.release, app.arm) == set()
    assert Deletion.objects.get().in_use_override[0]["in_use"][0]["source"] == "prod"


def test_the_api_asks_allow_active_for_what_the_ui_asks_a_second_tick_for(
    app, client, deleter, registry_client
):
    Manifest.objects.filter(digest=app.old.digest).update(last_pulled_at=timezone.now())
    token = bearer(deleter)
    plan = post_json(client, DELETE_API, {"digests": [app.old.digest]}, headers=token).json()
    assert plan["delete"][0]["active"] is True
    run = {"digests": [app.old.digest], "dry_run": False, "fingerprint": plan["fingerprint"]}

    refused = post_json(client, DELETE_API, run, headers=token)

    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "confirmation_required"
    assert not Job.objects.exists()
    started = post_json(client, DELETE_API, {**run, "allow_active": True}, headers=token)
    assert started.status_code == 202
    run_tasks()
    assert in_registry(registry_client, app.old) == set()


# -- retention ---------------------------------------------------------------------------------


def keep_nothing(**fields) -> policies.Policy:
    return policies.parse_policy(
        {"name": "sweep", "rules": [{"keep": "always", "tags": ["none"]}], **fields}
    )


def test_retention_never_selects_what_runs_and_its_dry_run_says_why(app, registry_client):
    dry = engine.dry_run(keep_nothing())

    [repo] = dry.repositories
    assert repo.selected == (app.old.digest,)
    assert {item.digest: item.reason for item in repo.kept} == {
        app.release.digest: f"in use by prod: {PLACE}"
    }
    result = runs.run(
        policy=dry.policy,
        now=dry.now,
        fingerprint=dry.fingerprint,
        client_for=lambda registry: registry_client,
        trigger=RetentionRun.Trigger.MANUAL,
        started_by="tester",
    )
    assert result.record.outcome == RetentionRun.Outcome.DONE
    assert in_registry(registry_client, app.release, app.amd, app.arm, app.old) == {
        app.release.digest,
        app.amd.digest,
        app.arm.digest,
    }


def test_a_required_source_out_of_date_stops_the_next_scheduled_run_and_says_why(
    app, registry_client
):
    now = timezone.now()
    row = policies.save_policy(keep_nothing(schedule={"every_hours": 24}))
    RetentionPolicy.objects.filter(pk=row.pk).update(next_run_at=now - timedelta(minutes=1))
    expire()

    started = [job for job in jobs_worker.schedule_due(now) if job.kind == Job.Kind.RETENTION]
    run_tasks()

    record = RetentionRun.objects.get()
    assert (record.trigger, record.outcome) == ("scheduled", RetentionRun.Outcome.BLOCKED)
    assert record.message.startswith(
        "Nothing was deleted: the required in-use source prod last reported 2\xa0h ago, longer "
        "ago than its time to live (1 hour): what it runs now is unknown. Retention deletes "
        "nothing on registry default until it reports again."
    )
    assert record.manifests_deleted == 0
    job = Job.objects.get(pk=started[0].pk)
    assert (job.state, job.message) == ("failed", record.message)
    assert in_registry(registry_client, app.old, app.release) == {
        app.old.digest,
        app.release.digest,
    }

    # The source reports again: the next run goes ahead, and still keeps what runs.
    report(app.host, app.arm.digest, required=True)
    dry = engine.dry_run(keep_nothing())
    assert dry.blocked == ()
    result = runs.run_scheduled(
        RetentionPolicy.objects.get(), dry.now, client_for=lambda r: registry_client
    )
    assert result.record.outcome == RetentionRun.Outcome.DONE
    assert in_registry(registry_client, app.old, app.release) == {app.release.digest}


def test_a_source_that_is_not_required_never_stops_retention(app, registry_client):
    report(app.host, app.arm.digest, required=False)
    expire()

    dry = engine.dry_run(keep_nothing())

    assert dry.blocked == ()
    assert set(dry.repositories[0].selected) == {app.old.digest, app.release.digest}


def test_the_dry_run_page_says_a_run_would_delete_nothing(app, deleter_client):
    policies.save_policy(keep_nothing())
    expire()

    page = deleter_client.get("/retention/policies/sweep/").content.decode()

    assert "A run would delete nothing now: the required in-use source prod" in page


def test_the_guard_rails_say_recently_pulled_never_in_use(app):
    Manifest.objects.filter(digest=app.old.digest).update(last_pulled_at=timezone.now())
    plan = planning.plan_deletion(repository=repository(), digests=[app.old.digest])

    guard = preview.guard_rails(plan)[app.old.digest]

    assert guard.pulled_at and guard.active
    assert preview.flags(plan)[app.old.digest]["in_use"] == []


# -- what it costs -----------------------------------------------------------------------------


def test_a_page_of_rows_costs_two_queries_and_one_without_a_live_report(app):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from hubimages.inuse import matching
    from hubimages.inventory import lists

    def cost() -> int:
        repo = repository()
        rows = list(lists.with_details(lists.top_level(repo)))
        with CaptureQueriesContext(connection) as queries:
            matching.annotate(repo.registry_id, rows)
        return len(queries)

    assert cost() == 2
    expire()
    assert cost() == 1
    InUseSource.objects.all().delete()
    assert cost() == 1


def test_a_plan_asks_for_the_live_sources_once_and_nothing_more_when_none_is_live(app):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def cost() -> int:
        with CaptureQueriesContext(connection) as queries:
            planning.plan_deletion(repository=repository(), digests=[app.release.digest])
        return len(queries)

    expire()
    expired = cost()
    InUseSource.objects.all().delete()
    assert cost() == expired
