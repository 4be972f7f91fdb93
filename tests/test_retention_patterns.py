"""A policy's patterns cannot hold a process (issue 18, item 14): a `group_by` with nested
quantifiers is refused when saved, and every match of a policy's patterns is bounded in
time and leaves the interpreter lock to other threads, in a web request as in a worker."""

from __future__ import annotations

import re
import threading
import time
from datetime import timedelta

import pytest
import requests
from django.utils import timezone

from hubimages.jobs import queue
from hubimages.models import DeletionRecord, Job, Repository, RetentionPolicy, RetentionRun
from hubimages.retention import engine, policies
from tests.api_helpers import bearer, post_json
from tests.builders import finish, manifest
from tests.conftest import PASSWORD
from tests.test_retention_views import editor_fields

REPO = "team/app"
NESTED = "^(a+)+$"  # the pattern: 2^31 ways to fail on TAG_31 in Python's `re`
OVERLAPPING = "^(a|aa)+$"  # no nested quantifier, still exponential in `re` and `regex`
TAG_31 = "a" * 31 + "-1"
TAG_50 = "a" * 50 + "-1"
TOO_SLOW = f"this pattern takes over {policies.MATCH_SECONDS:g} s on"


def latest_by(group_by: str) -> dict:
    return {
        "name": "groups",
        "repositories": [REPO],
        "rules": [{"keep": "latest_pushed", "count": 1, "tags": ["*"], "group_by": group_by}],
    }


def store_as_before(group_by: str) -> RetentionPolicy:
    """A policy saved before these checks existed (written straight to its row)."""
    data = latest_by(group_by)
    return RetentionPolicy.objects.create(
        name=data["name"], repositories=data["repositories"], rules=data["rules"]
    )


@pytest.fixture
def repository(db):
    """Items tagged with long runs of `a`, and an ordinary one."""
    repository = Repository.objects.create(name=REPO)
    now = timezone.now()
    for n, tag in enumerate((TAG_31, TAG_50, "main-1")):
        manifest(repository, tag, pushed_at=now - timedelta(days=n), tags=[tag])
    finish(repository)
    return repository


def field_errors(page: str, field_id: str) -> list[str]:
    block = re.search(
        rf'<span class="field-errors" id="{field_id}-errors">(.*?)</span></span>', page, re.S
    )
    return re.findall(r'<span class="field-error">([^<]*)</span>', block[0]) if block else []


def test_a_group_by_with_nested_quantifiers_is_refused_when_saved(client, deleter, deleter_client):
    response = deleter_client.post("/retention/new/save", editor_fields(latest_by(NESTED)))

    assert response.status_code == 422
    [message] = field_errors(response.content.decode(), "rule-0-group_by")
    assert message.startswith("a repeated group that repeats inside, such as (a+)+")
    api = post_json(
        client, "/api/v1/retention-policies", latest_by(NESTED), headers=bearer(deleter)
    )
    assert api.status_code == 422
    assert [f["field"] for f in api.json()["error"]["fields"]] == ["rules[0].group_by"]
    assert not RetentionPolicy.objects.exists()


@pytest.mark.parametrize(
    ("pattern", "nested"),
    [
        ("^(a+)+$", True),
        ("(a*b)*", True),
        ("((ab)+c){2,9}", True),
        ("(?:x+)*y", True),
        ("^(main|pr-[0-9]+)-", False),
        ("^v(\\d+)\\.", False),
        ("(a|aa)+", False),
        ("([+*]+)x", False),
        ("(a{1,3})+", False),
    ],
)
def test_nested_quantifiers_are_told_from_single_ones(pattern, nested):
    assert policies.nested_quantifier(pattern) is nested


def test_a_policy_saved_before_the_check_still_reads_and_runs_bounded(db, repository):
    nested = policies.policy_of(store_as_before(NESTED))

    result = engine.dry_run(nested)  # `regex` finds no catastrophe in this one

    # No tag matches it: they all share the ungrouped group, which keeps the newest.
    kept = result.repositories[0].kept
    assert [k.reasons for k in kept] == [("rule 1: latest 1 of the ungrouped items",)]
    RetentionPolicy.objects.all().delete()
    overlapping = policies.policy_of(store_as_before(OVERLAPPING))
    with pytest.raises(policies.PatternTooSlow) as slow:
        engine.dry_run(overlapping)
    [error] = slow.value.errors
    assert error.field == "rules[0].group_by"
    assert error.message.startswith(TOO_SLOW)


def test_a_slow_match_leaves_the_interpreter_to_other_threads(db, repository):
    """A worker's heartbeat is a thread of the process running the plan."""
    policy = policies.policy_of(store_as_before(OVERLAPPING))
    beats = []
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.is_set():
            beats.append(time.monotonic())
            time.sleep(0.005)

    thread = threading.Thread(target=heartbeat)
    with pytest.raises(policies.PatternTooSlow):
        thread.start()
        time.sleep(0.05)
        started = len(beats)
        engine.dry_run(policy)
    stop.set()
    thread.join()
    assert len(beats) - started >= 5


def test_the_api_dry_run_of_a_catastrophic_pattern_is_a_422_naming_it(client, deleter, repository):
    store_as_before(OVERLAPPING)

    response = client.post("/api/v1/retention-policies/groups/dry-run", headers=bearer(deleter))

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "pattern_too_slow"
    assert error["fields"][0]["field"] == "rules[0].group_by"
    assert TOO_SLOW in error["fields"][0]["message"]


def test_the_retention_page_says_when_a_policys_patterns_take_too_long(
    db, repository, viewer_client, monkeypatch
):
    store_as_before("^(main)-")
    monkeypatch.setattr(policies, "EVALUATION_SECONDS", 0.0)

    page = viewer_client.get("/retention/").content.decode()

    assert "its patterns take too long to tell which repositories" in page


# -- the real processes ---------------------------------------------------------------------------


def test_the_live_dry_run_of_a_catastrophic_pattern_answers_at_once_with_a_clear_error(
    live, repository, django_user_model
):
    django_user_model.objects.create_superuser("editor", password=PASSWORD)
    url = live.start_web()
    web = live.signed_in("editor", PASSWORD)
    htmx = {"HX-Request": "true"}

    def preview(group_by: str) -> str:
        fields = editor_fields(latest_by(group_by))
        answer = web.post(f"{url}/retention/preview", data=fields, headers=htmx, timeout=60)
        assert answer.status_code == 200, answer.text[:300]
        return answer.text

    nested = preview(NESTED)
    overlapping = preview(OVERLAPPING)

    assert "Rule 1, group by: a repeated group that repeats inside" in nested
    assert f"Rule 1, group by: {TOO_SLOW}" in overlapping.replace("&quot;", '"')
    assert requests.get(f"{url}/healthz", timeout=10).status_code == 200


def test_a_retention_job_with_a_catastrophic_pattern_fails_once_and_says_why(live, repository):
    row = store_as_before(OVERLAPPING)
    live.env["REGISTRY_URL"] = "http://127.0.0.1:9"  # never reached: nothing is decided
    live.env["WORKER_LEASE_SECONDS"] = "3"
    for _ in range(2):
        live.start_worker()
    job = queue.start_retention(
        policy=row.name, now=timezone.now(), fingerprint=None, started_by="test", scheduled=True
    )

    deadline = time.monotonic() + 90
    while Job.objects.get(pk=job.pk).state != Job.State.FAILED:
        assert time.monotonic() < deadline, "the job did not end"
        time.sleep(0.2)

    job.refresh_from_db()
    assert TOO_SLOW in job.message and "rules[0].group_by" in job.message
    [record] = RetentionRun.objects.all()
    assert record.outcome == RetentionRun.Outcome.FAILED and TOO_SLOW in record.message
    assert job.attempts == 1 and not DeletionRecord.objects.exists()
