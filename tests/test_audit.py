"""The audit log (SPEC §14): append-only, written where things happen (sign-ins, tokens,
deletions started, retention policies, team changes: tests/test_teams.py), and its page
with filters and CSV/JSON exports, for administrators only."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from devtools.pusher import random_layer
from hubimages.deletion import planning
from hubimages.jobs import queue
from hubimages.lib import audit
from hubimages.lib.audit import Action, Actor
from hubimages.models import AuditEntry, AuditIsAppendOnly, Job, Repository, RetentionPolicy
from hubimages.retention import policies
from tests.api_helpers import bearer, post_json, put_json
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db
POLICY = {"name": "ci", "repositories": ["acme/*"], "rules": [{"keep": "always", "tags": ["v*"]}]}


def actions() -> list[str]:
    return list(AuditEntry.objects.order_by("id").values_list("action", flat=True))


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_user("auditor", password=PASSWORD, is_staff=True)


# -- append-only ---------------------------------------------------------------------------


def test_the_orm_refuses_to_change_or_delete_an_entry():
    entry = audit.record(Action.SIGN_IN, by=Actor(name="alice", address="192.0.2.7"))
    with pytest.raises(AuditIsAppendOnly):
        AuditEntry.objects.filter(pk=entry.pk).update(actor="mallory")
    with pytest.raises(AuditIsAppendOnly):
        AuditEntry.objects.all().delete()
    entry.actor = "mallory"
    with pytest.raises(AuditIsAppendOnly):
        entry.save()
    with pytest.raises(AuditIsAppendOnly):
        entry.delete()
    with pytest.raises(AuditIsAppendOnly):
        AuditEntry.objects.bulk_update([entry], ["actor"])
    stored = AuditEntry.objects.get()
    assert (stored.actor, stored.address, stored.action) == ("alice", "192.0.2.7", "sign_in")


def test_an_entry_outlives_the_user_it_names(django_user_model):
    user = django_user_model.objects.create_user("leaver")
    audit.record(Action.SIGN_IN, by=Actor.of_user(user))
    user_id = user.pk
    user.delete()
    entry = AuditEntry.objects.get()
    assert (entry.actor, entry.actor_id) == ("leaver", user_id)


def test_the_time_is_the_databases():
    entry = audit.record(Action.SIGN_IN, by=Actor(name="alice"))
    with connection.cursor() as cursor:
        cursor.execute("SELECT CURRENT_TIMESTAMP")
        (database_now,) = cursor.fetchone()
    stored = AuditEntry.objects.get(pk=entry.pk).at
    if isinstance(database_now, str):  # SQLite answers text, in UTC
        database_now = timezone.datetime.fromisoformat(database_now).replace(tzinfo=timezone.UTC)
    assert abs(stored - database_now) < timedelta(minutes=1)


def test_an_unknown_action_is_refused():
    with pytest.raises(ValueError, match="unknown audit action"):
        audit.record("launched_missiles", by=Actor(name="x"))


# -- signing in ----------------------------------------------------------------------------


def test_a_sign_in_and_a_failed_one_are_recorded_with_the_address(client, django_user_model):
    django_user_model.objects.create_user("alice", password=PASSWORD)
    client.post(
        "/accounts/login/", {"username": "alice", "password": "wrong"}, REMOTE_ADDR="198.51.100.4"
    )
    client.post(
        "/accounts/login/", {"username": "alice", "password": PASSWORD}, REMOTE_ADDR="198.51.100.5"
    )
    failed, signed_in = AuditEntry.objects.order_by("id")
    assert (failed.action, failed.actor, failed.actor_id, failed.address) == (
        "sign_in_failed",
        "alice",
        None,
        "198.51.100.4",
    )
    assert (signed_in.action, signed_in.actor, signed_in.address) == (
        "sign_in",
        "alice",
        "198.51.100.5",
    )
    assert signed_in.details == {"method": "password"}


# -- tokens --------------------------------------------------------------------------------


def test_creating_and_revoking_a_token_on_its_page_is_recorded(client, django_user_model):
    user = django_user_model.objects.create_user("alice", password=PASSWORD)
    client.force_login(user)
    client.post(
        "/account/api-tokens/",
        {"name": "ci", "scope": "read", "expires_in_days": "30"},
        REMOTE_ADDR="203.0.113.9",
    )
    row = user.api_tokens.get()
    client.post(f"/account/api-tokens/{row.pk}/revoke", REMOTE_ADDR="203.0.113.9")
    client.post(f"/account/api-tokens/{row.pk}/revoke", REMOTE_ADDR="203.0.113.9")  # again
    created, revoked = AuditEntry.objects.exclude(action="sign_in").order_by("id")
    assert (created.action, created.actor, created.address, created.target) == (
        "token_created",
        "alice",
        "203.0.113.9",
        row.prefix,
    )
    assert created.details["scope"] == "read" and created.details["name"] == "ci"
    assert "token_hash" not in json.dumps(created.details)
    assert (revoked.action, revoked.target, revoked.details["owner"]) == (
        "token_revoked",
        row.prefix,
        "alice",
    )


# -- deletions and policies ----------------------------------------------------------------


@pytest.fixture
def old_image(pusher, sync):
    image = pusher.push_image("acme/shop", tag="old", layers=[random_layer(1_000, "old")])
    sync()
    return image


def test_starting_a_deletion_on_the_page_and_through_the_api_is_recorded(
    old_image, deleter, deleter_client, client
):
    repository = Repository.objects.get(name="acme/shop")
    plan = planning.plan_deletion(repository=repository, digests=[old_image.digest])
    form = {
        "digest": old_image.digest,
        "fingerprint": plan.fingerprint,
        "confirm": "yes",
        "confirm_active": "yes",
    }
    deleter_client.post("/r/default/acme/shop/-/delete/confirm", form, REMOTE_ADDR="192.0.2.1")
    api = post_json(
        client,
        "/api/v1/repositories/acme/shop/delete-images",
        {"digests": [old_image.digest], "dry_run": False, "fingerprint": plan.fingerprint},
        headers=bearer(deleter),
        REMOTE_ADDR="192.0.2.2",
    )
    assert api.status_code == 202
    web, through_api = AuditEntry.objects.filter(action="deletion_started").order_by("id")
    jobs = list(Job.objects.filter(kind="deletion").order_by("id"))
    for entry, job, address in ((web, jobs[0], "192.0.2.1"), (through_api, jobs[1], "192.0.2.2")):
        assert (entry.actor, entry.address, entry.target) == ("deleter", address, "acme/shop")
        assert entry.details == {
            "job": job.pk,
            "digests": [old_image.digest],
            "fingerprint": plan.fingerprint,
        }


def test_a_job_and_its_audit_entry_are_written_together_or_not_at_all(monkeypatch, deleter):
    repository = Repository.objects.create(name="acme/shop")

    def broken(*args, **kwargs):
        raise RuntimeError("the audit table is gone")

    monkeypatch.setattr(audit, "record", broken)
    with pytest.raises(RuntimeError):
        queue.start_deletion(
            repository=repository, digests=["sha256:ab"], fingerprint="f", user=deleter
        )
    assert not Job.objects.exists()


def test_a_scheduled_retention_run_is_recorded_as_the_schedules():
    queue.start_retention(
        policy="nightly",
        now=timezone.now(),
        fingerprint=None,
        started_by="schedule",
        scheduled=True,
    )
    entry = AuditEntry.objects.get()
    assert (entry.action, entry.actor, entry.target, entry.details["scheduled"]) == (
        "policy_run",
        "schedule",
        "nightly",
        True,
    )


def test_policies_created_changed_run_and_deleted_on_the_pages_are_recorded(
    old_image, deleter_client
):
    from tests.test_retention_views import editor_fields, run_form

    deleter_client.post("/retention/new/save", editor_fields(POLICY), REMOTE_ADDR="192.0.2.3")
    changed = {**POLICY, "repositories": ["acme/**"]}
    deleter_client.post(
        "/retention/policies/ci/save", editor_fields(changed), REMOTE_ADDR="192.0.2.3"
    )
    page = deleter_client.get("/retention/policies/ci/").content.decode()
    deleter_client.post(
        "/retention/policies/ci/run", {**run_form(page), "confirm": "yes"}, REMOTE_ADDR="192.0.2.3"
    )
    deleter_client.post("/retention/policies/ci/delete", REMOTE_ADDR="192.0.2.3")
    entries = list(AuditEntry.objects.exclude(action="sign_in").order_by("id"))
    assert [(e.action, e.actor, e.address, e.target) for e in entries] == [
        (action, "deleter", "192.0.2.3", "ci")
        for action in ("policy_created", "policy_changed", "policy_run", "policy_deleted")
    ]
    assert entries[1].details["policy"]["repositories"] == ["acme/**"]
    assert entries[2].details["job"] == Job.objects.get(kind="retention").pk
    assert not RetentionPolicy.objects.exists()


def test_policies_changed_through_the_api_are_recorded(client, deleter):
    headers = bearer(deleter)
    post_json(client, "/api/v1/retention-policies", POLICY, headers=headers)
    put_json(client, "/api/v1/retention-policies/ci", {**POLICY, "name": "ci2"}, headers=headers)
    client.delete("/api/v1/retention-policies/ci2", headers=headers)
    entries = list(AuditEntry.objects.order_by("id"))
    assert [(e.action, e.target) for e in entries] == [
        ("token_created", entries[0].target),
        ("policy_created", "ci"),
        ("policy_changed", "ci2"),
        ("policy_deleted", "ci2"),
    ]
    assert entries[2].details["renamed_from"] == "ci"


def test_a_policy_saved_without_naming_who_is_still_recorded():
    policies.save_policy(policies.parse_policy(POLICY))
    assert actions() == ["policy_created"]


# -- the page ------------------------------------------------------------------------------


def test_the_audit_page_is_for_administrators_only(client, viewer_client, staff):
    assert client.get("/audit/")["Location"].startswith("/accounts/login/")
    for url in ("/audit/", "/audit/export.csv", "/audit/export.json"):
        assert viewer_client.get(url).status_code == 403
    assert b'href="/audit/"' not in viewer_client.get("/").content
    client.force_login(staff)
    assert b'href="/audit/"' in client.get("/").content
    assert client.get("/audit/").status_code == 200
    assert client.post("/audit/").status_code == 405


@pytest.fixture
def history(staff):
    """Entries of three kinds by two people over three days."""
    for who, action in (
        ("alice", Action.SIGN_IN),
        ("bob", Action.SIGN_IN_FAILED),
        ("alice", Action.TOKEN_CREATED),
        ("bob", Action.SIGN_IN),
    ):
        audit.record(action, by=Actor(name=who, address="192.0.2.10"), target="=cmd|calc")
    # Dated entries cannot be changed through the app: write their times with SQL.
    ids = list(AuditEntry.objects.order_by("id").values_list("id", flat=True))
    days = {ids[0]: "2026-03-01 10:00:00", ids[1]: "2026-03-02 23:59:00"}
    days |= {ids[2]: "2026-03-03 00:00:00", ids[3]: "2026-03-03 12:00:00"}
    table = AuditEntry._meta.db_table
    with connection.cursor() as cursor:
        for pk, at in days.items():
            cursor.execute(f"UPDATE {table} SET at = %s WHERE id = %s", [f"{at}+00:00", pk])


def shown(response) -> list[tuple[str, str]]:
    import re

    page = response.content.decode()
    rows = re.findall(
        r'<tr class="audit-entry" data-action="(\w+)">\s*<td>.*?</td>\s*<td>(\w+)</td>', page, re.S
    )
    return rows


def test_the_page_filters_by_who_action_and_days(client, staff, history):
    client.force_login(staff)
    everything = shown(client.get("/audit/"))
    assert everything[:4] == [
        ("sign_in", "auditor"),  # the staff's own sign-in, just now
        ("sign_in", "bob"),
        ("token_created", "alice"),
        ("sign_in_failed", "bob"),
    ]
    assert shown(client.get("/audit/?who=ALICE")) == [
        ("token_created", "alice"),
        ("sign_in", "alice"),
    ]
    assert shown(client.get("/audit/?action=sign_in&until=2026-03-03")) == [
        ("sign_in", "bob"),
        ("sign_in", "alice"),
    ]
    assert shown(client.get("/audit/?since=2026-03-02&until=2026-03-02")) == [
        ("sign_in_failed", "bob")
    ]
    # Junk is no filter, never a 500.
    junk = client.get("/audit/?action=DROP+TABLE&since=yesterday&until=2026-13-45&page=x")
    assert junk.status_code == 200 and len(shown(junk)) == 5


def test_the_page_works_as_a_partial_for_htmx(client, staff, history):
    client.force_login(staff)
    partial = client.get("/audit/?who=bob", headers={"HX-Request": "true"})
    body = partial.content.decode()
    assert body.lstrip().startswith('<section id="entries"') and "<html" not in body
    assert partial["Vary"].count("HX-Request") == 1


def test_the_exports_hold_the_filtered_entries_as_csv_and_json(client, staff, history):
    client.force_login(staff)
    page = client.get("/audit/?who=alice").content.decode()
    assert 'href="/audit/export.csv?who=alice"' in page
    assert 'href="/audit/export.json?who=alice"' in page
    response = client.get("/audit/export.csv?who=alice")
    assert response["Content-Type"].startswith("text/csv")
    lines = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert lines[0] == ["at", "who", "address", "action", "target", "details"]
    assert [(line[1], line[3], line[4]) for line in lines[1:]] == [
        ("alice", "token_created", "'=cmd|calc"),  # a formula to a spreadsheet: quoted
        ("alice", "sign_in", "'=cmd|calc"),
    ]
    assert lines[2][0] == "2026-03-01T10:00:00Z"
    exported = json.loads(
        b"".join(client.get("/audit/export.json?action=sign_in").streaming_content)
    )
    assert [(e["who"], e["action"], e["address"]) for e in exported["entries"]] == [
        ("auditor", "sign_in", ""),  # force_login's request has no address
        ("bob", "sign_in", "192.0.2.10"),
        ("alice", "sign_in", "192.0.2.10"),
    ]
    assert exported["entries"][1]["target"] == "=cmd|calc"  # JSON keeps it as it is
    empty = json.loads(b"".join(client.get("/audit/export.json?who=nobody").streaming_content))
    assert empty == {"entries": []}
