"""Retention policies over the API (SPEC §8–9), against a real registry: list, read, create,
replace, delete, dry-run and run in the policy JSON, each refusal in the error shape."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from io import StringIO

import pytest
from django.core.management import call_command

from devtools.worker import run_tasks
from hubimages.models import ApiToken, Job, Repository, RetentionPolicy, RetentionRun
from tests import builders
from tests.api_helpers import (
    API,
    REPO,
    assert_error,
    bearer,
    documented,
    post_json,
    push_stock,
    put_json,
)

POLICIES = f"{API}/retention-policies"
POLICY = {
    "name": "ci-cleanup",
    "registries": ["*"],
    "repositories": ["org/**", "!org/golden"],
    "rules": [
        {"keep": "always", "tags": ["latest", "edge", "main", "2.*"]},
        {"keep": "latest_pushed", "count": 1, "tags": [], "untagged": True},
    ],
    "max_delete_fraction": 0.5,
    "schedule": None,
    "enabled": True,
}


@pytest.fixture
def stock(pusher, sync):
    return push_stock(pusher, sync)


@pytest.fixture
def admin_token(deleter):
    return bearer(deleter)


@pytest.fixture
def stored(client, admin_token):
    response = post_json(client, POLICIES, POLICY, headers=admin_token)
    assert response.status_code == 201
    return response


def test_a_policy_is_created_in_the_policy_json_and_read_back_as_written(stored, client, viewer):
    assert stored["Location"] == f"{POLICIES}/ci-cleanup"
    assert stored.json() == POLICY
    row = RetentionPolicy.objects.get()
    assert row.rules == POLICY["rules"] and row.repositories == POLICY["repositories"]
    reader = bearer(viewer, ApiToken.Scope.READ)  # reading needs no delete permission
    assert client.get(stored["Location"], headers=reader).json() == POLICY
    listing = client.get(POLICIES, headers=reader).json()
    assert listing == {"count": 1, "next": None, "previous": None, "results": [POLICY]}
    out = StringIO()
    call_command("retention_policy", "export", "ci-cleanup", stdout=out)
    assert json.loads(out.getvalue()) == POLICY  # what the command line exports


def test_a_minimal_policy_gets_the_defaults_and_keeps_its_rules_as_written(client, admin_token):
    minimal = {"name": "short", "rules": [{"keep": "latest_pushed", "count": 3}]}

    response = post_json(client, POLICIES, minimal, headers=admin_token)

    assert response.json() == {
        "name": "short",
        "registries": ["*"],
        "repositories": ["**"],
        "rules": [{"keep": "latest_pushed", "count": 3}],
        "max_delete_fraction": 0.5,
        "schedule": None,
        "enabled": True,
    }


def test_a_policy_is_replaced_whole_and_may_be_renamed(stored, client, admin_token):
    replacement = {**POLICY, "name": "nightly", "schedule": {"every_hours": 24}}

    response = put_json(client, stored["Location"], replacement, headers=admin_token)

    assert response.status_code == 200 and response.json() == replacement
    assert list(RetentionPolicy.objects.values_list("name", "schedule_hours")) == [("nightly", 24)]
    assert_error(client.get(stored["Location"], headers=admin_token), 404, "not_found")


def test_a_policy_is_deleted_and_its_runs_stay(stored, client, admin_token):
    RetentionRun.objects.create(
        policy=RetentionPolicy.objects.get(),
        policy_name="ci-cleanup",
        trigger=RetentionRun.Trigger.MANUAL,
        started_at="2026-01-01T00:00:00Z",
        outcome=RetentionRun.Outcome.DONE,
    )

    response = client.delete(stored["Location"], headers=admin_token)

    assert response.status_code == 204 and response.content == b""
    assert not RetentionPolicy.objects.exists()
    assert RetentionRun.objects.get().policy_name == "ci-cleanup"
    assert_error(client.delete(stored["Location"], headers=admin_token), 404, "not_found")


def test_an_invalid_policy_is_refused_with_each_problem_named(client, admin_token):
    broken = {
        "name": "bad name!",
        "rules": [{"keep": "latest_pushed"}, {"keep": "forever"}],
        "colour": "red",
    }

    response = post_json(client, POLICIES, broken, headers=admin_token)

    body = assert_error(response, 422, "invalid_policy")
    fields = {problem["field"] for problem in body["error"]["fields"]}
    assert fields == {"colour", "name", "rules[0].count", "rules[1].keep"}
    assert not RetentionPolicy.objects.exists()
    not_json = client.post(POLICIES, "{", content_type="application/json", headers=admin_token)
    assert_error(not_json, 400, "bad_request")
    too_big = post_json(client, POLICIES, {**POLICY, "pad": "x" * 100_000}, headers=admin_token)
    assert_error(too_big, 400, "bad_request")


ALWAYS = {"keep": "always"}


@pytest.mark.parametrize(
    "policy",
    [
        {"name": "x", "rules": []},
        {"name": "bad name", "rules": [ALWAYS]},
        {"name": "x", "repositories": [], "rules": [ALWAYS]},
        {"name": "x", "repositories": ["!org/golden"], "rules": [ALWAYS]},
        {"name": "x", "repositories": ["Org/*"], "rules": [ALWAYS]},
        {"name": "x", "rules": [{"keep": "latest_pushed"}]},
        {"name": "x", "rules": [{"keep": "latest_pushed", "count": 0}]},
        {"name": "x", "rules": [{"keep": "pulled_within", "days": 1_000_001}]},
        {"name": "x", "rules": [{"keep": "always", "count": 3}]},
        {"name": "x", "rules": [{"keep": "pushed_within", "days": 3, "group_by": "^v"}]},
        {"name": "x", "rules": [{"keep": "latest_pushed", "count": 3, "group_by": ""}]},
        {"name": "x", "rules": [{"keep": "always", "tags": []}]},
        {"name": "x", "rules": [{"keep": "always", "tags": [], "untagged": False}]},
        {"name": "x", "rules": [{"keep": "always", "tags": [""]}]},
        {"name": "x", "rules": [{"keep": "always", "tags": ["v\u0000*"]}]},
        {"name": "x", "rules": [{"keep": "always", "exclude_tags": ["\n"]}]},
        {"name": "x", "rules": [{"keep": "latest_pushed", "count": 1, "group_by": "^(v)\u007f"}]},
        {"name": "x", "rules": [{"keep": "always", "tags": None}]},
        {"name": "x", "rules": [{"keep": "always", "untagged": None}]},
        {"name": "x", "rules": [{"keep": "latest_pushed", "count": 3, "group_by": None}]},
        {"name": "x", "rules": [ALWAYS], "max_delete_fraction": 0},
        {"name": "x", "rules": [ALWAYS], "max_delete_fraction": 1.5},
        {"name": "x", "rules": [ALWAYS], "schedule": {"every_hours": 0}},
        {"name": "x", "rules": [ALWAYS], "enabled": "yes"},
    ],
)
def test_a_policy_the_api_refuses_is_one_its_document_forbids(client, admin_token, policy):
    """A script (or a client generated from the OpenAPI document) learns every rule of a
    policy from the document, not from a 422."""
    assert_error(post_json(client, POLICIES, policy, headers=admin_token), 422, "invalid_policy")

    assert not documented(client, admin_token, "RetentionPolicy").is_valid(policy)


def test_the_policies_the_api_accepts_are_ones_its_document_allows(client, admin_token):
    schema = documented(client, admin_token, "RetentionPolicy")
    for policy in [
        POLICY,
        {"name": "x", "rules": [{"keep": "always", "tags": [], "untagged": True}]},
        {"name": "y", "rules": [{"keep": "latest_pulled", "count": 1, "group_by": "^(v[0-9]+)"}]},
        {"name": "z", "rules": [ALWAYS], "schedule": {"every_hours": 24}, "enabled": False},
    ]:
        response = post_json(client, POLICIES, policy, headers=admin_token)
        assert response.status_code == 201, response.json()
        assert schema.is_valid(policy) and schema.is_valid(response.json())


def test_a_whole_number_written_with_a_decimal_point_is_that_number(client, admin_token):
    """JSON does not tell 2.0 from 2, and the document's integer type accepts both."""
    policy = {
        "name": "decimal",
        "rules": [{"keep": "latest_pushed", "count": 2.0}, {"keep": "pulled_within", "days": 30.0}],
        "schedule": {"every_hours": 24.0},
    }
    assert documented(client, admin_token, "RetentionPolicy").is_valid(policy)

    response = post_json(client, POLICIES, policy, headers=admin_token)

    assert response.status_code == 201, response.json()
    answer = response.json()
    assert answer["rules"] == [
        {"keep": "latest_pushed", "count": 2},
        {"keep": "pulled_within", "days": 30},
    ]
    assert answer["schedule"] == {"every_hours": 24}
    assert isinstance(RetentionPolicy.objects.get().rules[0]["count"], int)
    half = {**policy, "name": "half", "schedule": {"every_hours": 1.5}}
    half = post_json(client, POLICIES, half, headers=admin_token)
    assert_error(half, 422, "invalid_policy")


def test_a_window_reaching_past_the_first_datetime_keeps_every_dated_item(client, admin_token):
    """days may be 1,000,000 (2,700 years): its start is before datetimes begin, and so is
    that of any window before a `now` sent back by hand; neither is a 500."""
    repository = Repository.objects.create(name="team/api")
    builders.manifest(repository, "old", pushed_at=datetime(2015, 1, 1, tzinfo=UTC), tags=["v1"])
    builders.finish(repository)
    forever = {"name": "forever", "rules": [{"keep": "pushed_within", "days": 1_000_000}]}
    post_json(client, POLICIES, forever, headers=admin_token)

    dry_run = post_json(client, f"{POLICIES}/forever/dry-run", {}, headers=admin_token)

    assert dry_run.status_code == 200, dry_run.content[:300]
    assert dry_run.json()["repositories"][0]["selected"] == []
    for now in ["0001-01-01T00:00:01Z", "9999-12-31T23:59:59Z"]:
        sent = {"now": now, "fingerprint": "f" * 64}
        run = post_json(client, f"{POLICIES}/forever/run", sent, headers=admin_token)
        assert_error(run, 409, "plan_changed")


def test_a_second_policy_of_the_same_name_is_a_conflict(stored, client, admin_token):
    again = post_json(client, POLICIES, {**POLICY, "enabled": False}, headers=admin_token)

    body = assert_error(again, 409, "policy_exists")
    assert f"PUT {POLICIES}/ci-cleanup" in body["error"]["message"]
    assert RetentionPolicy.objects.get().enabled is True
    post_json(client, POLICIES, {**POLICY, "name": "other"}, headers=admin_token)
    renamed_onto = put_json(client, f"{POLICIES}/other", POLICY, headers=admin_token)
    assert_error(renamed_onto, 409, "policy_exists")


def test_changing_or_running_policies_needs_the_policy_admin_role_and_scope(
    stored, client, viewer, deleter
):
    for headers, code in (
        (bearer(viewer), "permission_denied"),
        (bearer(deleter, ApiToken.Scope.READ), "insufficient_scope"),
    ):
        assert_error(
            post_json(client, POLICIES, {**POLICY, "name": "x"}, headers=headers), 403, code
        )
        assert_error(put_json(client, stored["Location"], POLICY, headers=headers), 403, code)
        assert_error(client.delete(stored["Location"], headers=headers), 403, code)
        # A dry run reads: whoever sees the policy sees what it would do where they see.
        assert client.post(f"{stored['Location']}/dry-run", headers=headers).status_code == 200
        run = {"now": "2026-01-01T00:00:00Z", "fingerprint": "x"}
        assert_error(
            post_json(client, f"{stored['Location']}/run", run, headers=headers), 403, code
        )
    assert list(RetentionPolicy.objects.values_list("name", flat=True)) == ["ci-cleanup"]


def test_a_dry_run_is_apply_retentions_json_with_its_fingerprint(
    stock, stored, client, admin_token, tmp_path
):
    response = client.post(f"{stored['Location']}/dry-run", headers=admin_token)

    assert response.status_code == 200
    body = response.json()
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(POLICY))
    out = StringIO()
    call_command("apply_retention", str(policy_file), "--dry-run", "--json", stdout=out)
    expected = json.loads(out.getvalue())
    assert {**body, "now": None, "fingerprint": None} == {
        **expected,
        "now": None,
        "fingerprint": None,
    }
    [repository] = body["repositories"]
    assert repository["repository"] == REPO
    assert repository["selected"] == [stock.old.digest]  # the orphan is the latest untagged
    assert body["now"].endswith("Z") and len(body["fingerprint"]) == 64
    assert not Job.objects.exists()


def test_running_the_dry_run_deletes_exactly_it_as_a_job(
    stock, stored, client, admin_token, registry_client
):
    dry_run = client.post(f"{stored['Location']}/dry-run", headers=admin_token).json()

    response = post_json(
        client,
        f"{stored['Location']}/run",
        {"now": dry_run["now"], "fingerprint": dry_run["fingerprint"]},
        headers=admin_token,
    )

    assert response.status_code == 202
    job = Job.objects.get()
    assert response.json() == {"id": job.pk, "url": f"/api/v1/jobs/{job.pk}"}
    assert response["Location"] == response.json()["url"]
    run_tasks()
    done = client.get(response["Location"], headers=admin_token).json()
    assert done["status"] == "succeeded" and done["kind"] == "retention"
    assert done["outcome"]["policy"] == "ci-cleanup" and done["outcome"]["run_outcome"] == "done"
    assert registry_client.head_manifest(REPO, stock.old.digest) is None
    assert registry_client.head_manifest(REPO, stock.orphan.digest) is not None
    assert RetentionRun.objects.get().started_by == "deleter"
    # Named as the pages name it: the job by its own number, who ran the policy and which.
    assert done["name"] == f"Job #{job.pk} · Retention run"
    assert done["started_by_label"] == "deleter · policy ci-cleanup"


def test_running_a_dry_run_that_no_longer_holds_answers_409_with_a_fresh_one(
    stock, stored, client, admin_token, pusher, sync
):
    dry_run = client.post(f"{stored['Location']}/dry-run", headers=admin_token).json()
    pusher.tag(REPO, "2.0-old", stock.old)  # now a rule keeps it
    sync()

    response = post_json(
        client,
        f"{stored['Location']}/run",
        {"now": dry_run["now"], "fingerprint": dry_run["fingerprint"]},
        headers=admin_token,
    )

    body = assert_error(response, 409, "plan_changed")
    assert body["dry_run"]["repositories"][0]["selected"] == []
    assert body["dry_run"]["fingerprint"] != dry_run["fingerprint"]
    assert not Job.objects.exists()


@pytest.mark.parametrize(
    ("run", "field"),
    [
        ({"fingerprint": "x"}, "now"),
        ({"now": "yesterday", "fingerprint": "x"}, "now"),
        ({"now": "2026-01-01T00:00:00", "fingerprint": "x"}, "now"),  # no time zone
        ({"now": "2026-01-01T00:00:00Z"}, "fingerprint"),
        ({"now": "2026-01-01T00:00:00Z", "fingerprint": "x", "force": True}, "force"),
    ],
)
def test_a_bad_run_request_is_refused_with_the_field_named(stored, client, admin_token, run, field):
    response = post_json(client, f"{stored['Location']}/run", run, headers=admin_token)

    body = assert_error(response, 422, "invalid_request")
    assert [problem["field"] for problem in body["error"]["fields"]] == [field]
    assert not Job.objects.exists()


def test_policies_are_listed_by_name_a_page_at_a_time(client, admin_token):
    for name in ("c-policy", "a-policy", "b-policy"):
        post_json(client, POLICIES, {**POLICY, "name": name}, headers=admin_token)

    first = client.get(POLICIES, {"page_size": 2}, headers=admin_token).json()
    second = client.get(first["next"], headers=admin_token).json()

    assert first["count"] == 3
    assert [p["name"] for p in first["results"]] == ["a-policy", "b-policy"]
    assert [p["name"] for p in second["results"]] == ["c-policy"]
    assert second["next"] is None and second["previous"].endswith("page_size=2&page=1")
    assert_error(
        client.get(POLICIES, {"sort": "name"}, headers=admin_token), 422, "invalid_request"
    )
