"""The Retention pages (SPEC §8), against a real registry: the list of policies, the editor
with its dry run (live for htmx, whole for a Preview without JavaScript), per-field
messages, Run now pinned to the previewed plan, import and export, and who may do what."""

from __future__ import annotations

import html
import json
import re
from datetime import datetime, timedelta
from html.parser import HTMLParser
from types import SimpleNamespace

import pytest
from django.utils import timezone

from devtools.pusher import random_layer
from devtools.worker import run_tasks
from hubimages.lib import leases
from hubimages.models import (
    Deletion,
    DeletionRecord,
    Job,
    Manifest,
    PushedFrom,
    Repository,
    RetentionPolicy,
    RetentionRun,
)
from hubimages.retention import engine, policies, runs
from hubimages.retention import form as retention_form
from hubimages.web import deletion, retention
from tests.builders import finish, manifest

REPO = "acme/shop"
LIST = "/retention/"
EDITOR = "/retention/policies/ci/"
RUN = f"{EDITOR}run"
PREVIEW = "/retention/preview"
HTMX = {"HX-Request": "true"}
POLICY = {
    "name": "ci",
    "registries": ["*"],
    "repositories": ["acme/*"],
    "rules": [
        {"keep": "always", "tags": ["v*"]},
        {"keep": "latest_pushed", "count": 1, "tags": ["main-*"], "group_by": "^(main)-"},
    ],
}


@pytest.fixture
def shop(pusher, sync):
    """A release index, three main builds (main-3 also `latest`), the newest pulled a day
    ago, and an old build pulled two days ago."""
    now = timezone.now()
    amd = pusher.push_image(REPO, layers=[random_layer(2_000, "amd")])
    release = pusher.push_index(REPO, tag="v1.0", images=[amd], attestations=True)
    mains = [
        pusher.push_image(REPO, tag=f"main-{i}", layers=[random_layer(1_000 + i, f"m{i}")])
        for i in (1, 2, 3)
    ]
    pusher.tag(REPO, "latest", mains[0])
    sync()
    for days, image in ((3, mains[0]), (2, mains[1]), (1, mains[2]), (9, release)):
        Manifest.objects.filter(digest=image.digest).update(
            pushed_at=now - timedelta(days=days), pushed_at_estimated=False
        )
    # Two days, an hour and a few minutes: the page's `now` is in whole seconds and may be
    # earlier than this one when the pushes and the sync above take less than a second.
    Manifest.objects.filter(digest=mains[0].digest).update(
        last_pulled_at=now - timedelta(days=2, hours=1, minutes=5)
    )
    return SimpleNamespace(release=release, amd=amd, mains=mains)


@pytest.fixture
def ci(db):
    return policies.save_policy(policies.parse_policy(POLICY))


def run_form(page: str) -> dict[str, str]:
    form = re.search(r'<form class="confirm-delete run-now".*?</form>', page, re.S)
    assert form, "no Run now form"
    return {
        name: html.unescape(value)
        for name, value in re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', form[0])
        if name != "csrfmiddlewaretoken"
    }


def editor_fields(policy: dict) -> dict:
    """The editor's fields for `policy`, as a browser would send them."""
    fields = {
        "name": policy["name"],
        "repositories": "\n".join(policy.get("repositories", ["**"])),
        "max_delete_fraction": "0.5",
        "schedule_hours": "",
        "enabled": "on",
    }
    for i, rule in enumerate([*policy["rules"], {"keep": ""}]):
        fields[f"rule-{i}-keep"] = rule["keep"]
        fields[f"rule-{i}-number"] = str(rule.get("count", rule.get("days", "")))
        fields[f"rule-{i}-tags"] = " ".join(rule.get("tags", ["*"]))
        fields[f"rule-{i}-exclude_tags"] = " ".join(rule.get("exclude_tags", []))
        fields[f"rule-{i}-group_by"] = rule.get("group_by", "")
        if rule.get("untagged"):
            fields[f"rule-{i}-untagged"] = "on"
    return fields


def delete_items(page: str) -> list[str]:
    return re.findall(r'<tr class="delete-item" data-digest="(sha256:\w+)">', page)


# -- the list of policies ---------------------------------------------------------------------


def test_the_retention_page_lists_what_each_policy_covers_its_last_run_and_next_run(
    db, viewer_client
):
    for name in ("acme/shop", "acme/web", "other/tool"):
        Repository.objects.create(name=name)
    now = timezone.now()
    ci = policies.save_policy(
        policies.parse_policy({**POLICY, "schedule": {"every_hours": 6}}), now=now
    )
    policies.save_policy(
        policies.parse_policy({**POLICY, "name": "manual", "repositories": ["**"]})
    )
    RetentionRun.objects.create(
        policy=ci,
        policy_name="ci",
        trigger="scheduled",
        started_at=now - timedelta(hours=7),
        outcome="done",
        manifests_deleted=4,
        reclaimed_bytes=12_345,
    )
    RetentionRun.objects.create(
        policy=ci,
        policy_name="ci",
        trigger="manual",
        started_at=now - timedelta(days=3),
        outcome="done",
        reclaimed_bytes=999,
    )

    page = viewer_client.get(LIST).content.decode()

    ci_row = re.search(r'<tr class="policy" data-policy="ci">.*?</tr>', page, re.S)[0]
    assert "<code>acme/*</code>" in ci_row and "2 repositories now" in ci_row
    assert "<li>keep always — tags v*</li>" in ci_row
    assert "<li>keep latest 1 of each group of ^(main)- — tags main-*</li>" in ci_row
    assert "7\xa0h ago" in ci_row and "(schedule)" in ci_row
    assert "4 manifests deleted" in ci_row and 'title="12,345 bytes">12.3 kB' in ci_row
    assert re.search(r"in 5\xa0hours|in 6\xa0hours", ci_row) and "(every 6 h)" in ci_row
    manual_row = re.search(r'data-policy="manual">.*?</tr>', page, re.S)[0]
    assert "3 repositories now" in manual_row
    assert "never" in manual_row and "no schedule" in manual_row
    assert 'href="/retention/policies/ci/export.json"' in ci_row
    assert "New policy" not in page and "Import a policy" not in page  # a viewer


def test_the_retention_page_needs_the_same_few_queries_for_many_policies_and_runs(
    db, deleter_client, django_assert_max_num_queries
):
    def add(count: int) -> int:
        for _ in range(count):
            row = policies.save_policy(
                policies.parse_policy({**POLICY, "name": f"p{RetentionPolicy.objects.count()}"})
            )
            for days in range(3):
                RetentionRun.objects.create(
                    policy=row,
                    policy_name=row.name,
                    trigger="manual",
                    started_at=timezone.now() - timedelta(days=days),
                    outcome="done",
                )
        # session, user, policies with their last run, runs, repository names, permissions
        # (2), last sync
        with django_assert_max_num_queries(8) as captured:
            assert deleter_client.get(LIST).status_code == 200
        return len(captured)

    assert add(1) == add(12)


# -- the editor and its dry run -----------------------------------------------------------------


def test_the_editor_shows_per_repository_what_goes_what_stays_and_by_which_rule(
    shop, ci, deleter_client
):
    page = deleter_client.get(EDITOR).content.decode()

    # As of the page's own `now` (the fingerprint holds it: a second later is another plan).
    shown_now = datetime.fromisoformat(run_form(page)["now"])
    dry = engine.dry_run(policies.policy_of(ci), now=shown_now)
    repo = dry.repositories[0]
    assert delete_items(page) == [item.digest for item in repo.plan.delete]
    assert set(delete_items(page)) == {shop.mains[0].digest, shop.mains[1].digest}
    assert f'data-bytes="{dry.reclaimable_bytes}">' in page
    assert re.search(
        rf'data-digest="{shop.mains[2].digest}">.*?<span class="reason">kept by rule 2: '
        r"latest 1 of group main</span>",
        page,
    )
    assert re.search(
        rf'data-digest="{shop.release.digest}">.*?<span class="reason">kept by rule 1: always',
        page,
    )
    assert "2 of 4 items go" in page
    assert "The tag <code>latest</code> goes: no rule keeps it." in page
    assert (
        '<span class="badge badge-warn recently-pulled">recently pulled: 2\xa0d 1\xa0h ago</span>'
        in page
    )
    assert f'<input type="hidden" name="fingerprint" value="{dry.fingerprint}">' in page
    assert "As of <time" in page
    assert "A scheduled run would stop" not in page  # 2 of 4 is not more than half
    assert "unknown-dated" not in page

    # An item nothing dates (SPEC §2): the dry run says how it was dated, in one sentence.
    Manifest.objects.filter(digest=shop.release.digest).update(
        pushed_at_estimated=True, pushed_at_source=PushedFrom.FIRST_SEEN
    )
    page = deleter_client.get(EDITOR).content.decode()
    assert (
        '<p class="note unknown-dated">1 covered item is Unknown: no push or pull was '
        "seen and no plausible build time dates it, so its Last pushed is when hubimages first "
        "saw it and the rules count its age from then.</p>"
    ) in page


def test_the_editor_needs_as_many_queries_for_a_big_repository_as_for_a_small_one(
    db, deleter_client, django_assert_max_num_queries
):
    now = timezone.now()

    def fill(name: str, count: int) -> None:
        repo = Repository.objects.create(name=name)
        for i in range(count):
            tags = [f"main-{i}"] if i % 3 else [f"v{i}"]
            manifest(
                repo,
                f"{name}{i}",
                pushed_at=now - timedelta(hours=i),
                tags=tags,
                last_pulled_at=now - timedelta(days=i) if i % 2 else None,
            )
        finish(repo)

    fill("small/app", 6)
    fill("big/app", 120)

    def queries(pattern: str) -> int:
        policies.save_policy(
            policies.parse_policy({**POLICY, "name": pattern[:3], "repositories": [pattern]})
        )
        with django_assert_max_num_queries(20) as captured:
            response = deleter_client.get(f"/retention/policies/{pattern[:3]}/")
        assert response.status_code == 200 and len(delete_items(response.content.decode())) > 2
        return len(captured)

    assert queries("small/*") == queries("big/*")


def test_the_live_preview_answers_only_the_dry_run_to_htmx(shop, ci, deleter_client):
    draft = {**POLICY, "rules": [{"keep": "latest_pushed", "count": 1}]}
    fields = editor_fields(draft)

    response = deleter_client.post(PREVIEW, {**fields, "original": "ci"}, headers=HTMX)

    page = response.content.decode()
    assert page.lstrip().startswith('<section id="dry-run"')
    assert "<html" not in page and 'id="policy-form"' not in page
    assert "HX-Request" in response["Vary"]
    plan = engine.dry_run(policies.parse_policy(draft)).repositories[0].plan
    assert delete_items(page) == [item.digest for item in plan.delete]
    assert {shop.release.digest, shop.amd.digest} < set(delete_items(page))  # its image too
    assert "kept by rule 1: latest 1" in page
    assert "A scheduled run would stop in <strong>acme/shop</strong> (3 of 4 items)" in page
    assert '<span class="badge badge-warn">not saved</span>' in page
    assert "Save the policy to run it." in page and "run-now" not in page
    assert RetentionPolicy.objects.get().rules == ci.rules  # a preview saves nothing


def test_the_preview_button_draws_the_whole_editor_with_the_rules_as_they_stand(
    shop, ci, deleter_client
):
    fields = editor_fields(POLICY)
    fields["rule-2-keep"] = "pushed_within"  # a row added with "Add rule", filled
    fields["rule-2-number"] = "30"

    page = deleter_client.post(PREVIEW, {**fields, "original": "ci"}).content.decode()

    assert 'id="policy-form"' in page and "<html" in page
    assert "<legend>Rule 3</legend>" in page
    assert 'name="rule-2-keep"' in page and 'name="rule-3-keep"' not in page  # no empty row
    assert "kept by rule 3: pushed within 30 days" in page
    assert delete_items(page) == []


def test_add_rule_draws_the_editor_again_with_an_empty_rule_to_fill_before_saving(
    db, deleter_client
):
    fields = editor_fields({"name": "fresh", "rules": [{"keep": "always", "tags": ["v*"]}]})

    answer = deleter_client.post(PREVIEW, {**fields, "add_rule": "yes"}, headers=HTMX)

    page = answer.content.decode()
    assert page.lstrip().startswith('<div class="retention-editor" id="retention-editor">')
    assert "<html" not in page and 'id="dry-run"' in page  # the editor and its dry run
    assert "<legend>Rule 1</legend>" in page
    assert '<legend>Rule 2 <span class="muted">(new)</span></legend>' in page
    assert '<select id="rule-1-keep" name="rule-1-keep" autofocus>' in page
    assert '<p class="visually-hidden" role="status">Rule 2 added.</p>' in page
    assert not RetentionPolicy.objects.exists()  # nothing saved
    # Without JavaScript, the whole page.
    whole = deleter_client.post(PREVIEW, {**fields, "add_rule": "yes"}).content.decode()
    assert "<html" in whole and '<legend>Rule 2 <span class="muted">(new)</span></legend>' in whole


def test_remove_rule_takes_out_that_rule_and_the_others_renumber(shop, ci, deleter_client):
    fields = editor_fields(
        {**POLICY, "rules": [*POLICY["rules"], {"keep": "always", "tags": ["x"]}]}
    )

    answer = deleter_client.post(
        PREVIEW, {**fields, "original": "ci", "remove_rule": "0"}, headers=HTMX
    )

    page = answer.content.decode()
    assert page.lstrip().startswith('<div class="retention-editor" id="retention-editor">')
    assert '<p class="visually-hidden" role="status">Rule 1 removed.</p>' in page
    assert 'name="rule-1-keep"' in page and 'name="rule-2-keep"' not in page
    assert 'id="rule-0-group_by" name="rule-0-group_by" value="^(main)-"' in page
    assert "kept by rule 1: latest 1 of group main" in page
    assert re.search(r'<button type="submit" class="button" name="add_rule"[^>]* autofocus', page)
    assert RetentionPolicy.objects.get().rules == ci.rules  # nothing saved until Save
    # The last rule removed leaves one empty row to fill.
    only = editor_fields({"name": "one", "rules": [{"keep": "always"}]})
    page = deleter_client.post(PREVIEW, {**only, "remove_rule": "0"}).content.decode()
    assert '<legend>Rule 1 <span class="muted">(new)</span></legend>' in page
    assert 'name="rule-1-keep"' not in page and "remove_rule" not in page


def test_a_rule_emptied_in_the_middle_goes_and_the_others_renumber(shop, ci, deleter_client):
    fields = editor_fields(
        {**POLICY, "rules": [*POLICY["rules"], {"keep": "always", "tags": ["x"]}]}
    )
    fields["rule-0-keep"] = ""

    page = deleter_client.post(PREVIEW, {**fields, "original": "ci"}).content.decode()

    assert 'name="rule-1-keep"' in page and 'name="rule-2-keep"' not in page
    assert 'id="rule-0-group_by" name="rule-0-group_by" value="^(main)-"' in page
    assert "kept by rule 1: latest 1 of group main" in page


def test_an_unchanged_policy_in_the_editor_can_run_as_it_was_saved(shop, ci, deleter_client):
    page = deleter_client.post(
        PREVIEW, {**editor_fields(POLICY), "original": "ci"}, headers=HTMX
    ).content.decode()

    assert "not saved" not in page
    form = run_form(page)
    saved = engine.dry_run(policies.policy_of(ci), now=datetime.fromisoformat(form["now"]))
    assert form["fingerprint"] == saved.fingerprint


def test_each_problem_is_shown_next_to_its_field_and_nothing_is_saved(db, deleter_client):
    fields = editor_fields(
        {
            "name": "bad name",
            "rules": [
                {"keep": "latest_pushed", "group_by": "^(main"},
                {"keep": "pushed_within", "days": 0},
            ],
        }
    )

    response = deleter_client.post("/retention/new/save", fields)

    assert response.status_code == 422
    page = response.content.decode()

    def errors(field_id: str) -> list[str]:
        block = re.search(
            rf'<span class="field-errors" id="{field_id}-errors">(.*?)</span></span>', page, re.S
        )
        return re.findall(r'<span class="field-error">([^<]*)</span>', block[0]) if block else []

    assert errors("policy-name") == [
        "use 1 to 100 letters, digits, &#x27;.&#x27;, &#x27;_&#x27; and &#x27;-&#x27;, "
        "starting with a letter or digit"
    ]
    assert errors("rule-0-number") == ["required with keep latest_pushed: a number ≥ 1"]
    assert errors("rule-0-group_by") == [
        "not a valid regular expression: missing ), unterminated subpattern at position 1"
    ]
    assert errors("rule-1-number") == ["a whole number from 1 to 1,000,000"]
    assert 'id="rule-0-number" name="rule-0-number" aria-invalid="true"' in page
    assert "Rule 2, N: a whole number from 1 to 1,000,000" in page  # the dry run's place
    assert not RetentionPolicy.objects.exists()


def test_saving_stores_the_policy_json_and_opens_its_page(db, deleter_client):
    fields = editor_fields(POLICY)
    fields.update({"schedule_hours": "12", "max_delete_fraction": "0.25"})

    response = deleter_client.post("/retention/new/save", fields)

    assert response.status_code == 303 and response["Location"] == EDITOR
    row = RetentionPolicy.objects.get()
    assert policies.policy_of(row).as_json() == {
        **POLICY,
        "rules": [
            {"keep": "always", "tags": ["v*"]},
            {"keep": "latest_pushed", "count": 1, "tags": ["main-*"], "group_by": "^(main)-"},
        ],
        "max_delete_fraction": 0.25,
        "schedule": {"every_hours": 12},
        "enabled": True,
    }
    page = deleter_client.get(response["Location"]).content.decode()
    assert "Saved policy ci." in page
    again = deleter_client.post("/retention/new/save", fields)
    assert again.status_code == 422
    assert "a policy named ci exists already: choose another name" in again.content.decode()


def test_editing_renames_and_replaces_rules_in_place(ci, deleter_client):
    fields = editor_fields({**POLICY, "name": "ci-2", "rules": [{"keep": "always"}]})

    response = deleter_client.post(f"{EDITOR}save", fields)

    assert response["Location"] == "/retention/policies/ci-2/"
    row = RetentionPolicy.objects.get()
    assert (row.pk, row.name, row.rules) == (ci.pk, "ci-2", [{"keep": "always", "tags": ["*"]}])


# -- Run now ------------------------------------------------------------------------------------


def follow_job(web, response) -> str:
    """A worker runs the job Run now started; then its page, as a browser would show it."""
    assert response.status_code == 303 and response["Location"].startswith("/jobs/")
    run_tasks()
    return web.get(response["Location"]).content.decode()


def test_run_now_deletes_exactly_the_previewed_plan_then_shows_a_fresh_preview(
    shop, ci, deleter, deleter_client, registry_client
):
    page = deleter_client.get(EDITOR).content.decode()
    dry = engine.dry_run(policies.policy_of(ci))

    response = deleter_client.post(RUN, {**run_form(page), "confirm": "yes"})

    job = Job.objects.get()
    assert (job.kind, job.state, job.user, job.params["policy"]) == (
        "retention",
        "queued",
        deleter,
        "ci",
    )
    assert not DeletionRecord.objects.exists()  # the request only started the job
    outcome = follow_job(deleter_client, response)
    assert "Succeeded" in outcome and "Deleted 2 manifests and 3 tags;" in outcome
    assert f'href="{EDITOR}">Back to policy ci</a>' in outcome
    gone = {item.digest for item in dry.repositories[0].plan.delete}
    assert gone == {shop.mains[0].digest, shop.mains[1].digest}
    assert {r.digest for r in DeletionRecord.objects.all()} == gone
    assert {(r.username, r.user) for r in DeletionRecord.objects.all()} == {
        ("deleter · policy ci", deleter)
    }
    # The job page names who pressed Run now and the policy, and the deletion it made by
    # the name History and its CSV give it.
    made = Deletion.objects.get()
    assert "started by deleter · policy ci" in outcome
    assert f">Deletion #{made.pk}</a> of <code>{REPO}</code>" in outcome
    assert f'href="/history/{made.pk}/export.csv" download' in outcome
    jobs = deleter_client.get("/jobs/").content.decode()
    assert f">Job #{job.pk} · Retention run</a>" in jobs and "deleter · policy ci" in jobs
    for image in shop.mains:
        expected = image.digest not in gone
        assert (registry_client.head_manifest(REPO, image.digest) is not None) is expected
    record = RetentionRun.objects.get()
    assert (record.trigger, record.started_by, record.outcome) == ("manual", "deleter", "done")
    after = deleter_client.get(EDITOR).content.decode()
    assert "0 of 2 items go" in after and delete_items(after) == []
    assert "run-now" not in after  # nothing left to run
    assert '<tr class="run" data-outcome="done">' in after


def test_run_now_with_htmx_follows_the_job_in_a_dialog_then_returns_to_the_policy(
    shop, ci, deleter_client
):
    page = deleter_client.get(EDITOR).content.decode()
    htmx = {"HX-Request": "true"}

    started = deleter_client.post(RUN, {**run_form(page), "confirm": "yes"}, headers=htmx)

    job = Job.objects.get()
    assert started.content.decode().lstrip().startswith('<dialog class="panel"')
    run_tasks()
    done = deleter_client.get(f"/jobs/{job.pk}/", {"in": "dialog"}, headers=htmx)
    assert done["HX-Redirect"] == EDITOR
    assert "Deleted 2 manifests and 3 tags;" in deleter_client.get(EDITOR).content.decode()


def test_run_now_with_a_preview_the_registry_outdated_deletes_nothing(
    shop, ci, deleter_client, pusher, registry_client
):
    form = run_form(deleter_client.get(EDITOR).content.decode())
    newer = pusher.push_image(REPO, tag="main-4", layers=[random_layer(500, "m4")])

    outcome = follow_job(deleter_client, deleter_client.post(RUN, {**form, "confirm": "yes"}))

    assert Job.objects.get().state == "failed"
    assert runs.CHANGED_MESSAGE in html.unescape(outcome)
    assert f'<a href="{EDITOR}">See the fresh preview of ci</a>' in outcome
    fresh = deleter_client.get(EDITOR).content.decode()
    assert run_form(fresh)["fingerprint"] != form["fingerprint"]
    assert shop.mains[2].digest in delete_items(fresh)  # main-4 is the newest now
    assert not DeletionRecord.objects.exists()
    assert all(registry_client.head_manifest(REPO, m.digest) for m in (*shop.mains, newer))
    assert RetentionRun.objects.get().outcome == "changed"


def test_a_plan_that_already_differs_in_the_database_starts_no_job(
    shop, ci, deleter_client, pusher, sync
):
    form = run_form(deleter_client.get(EDITOR).content.decode())
    pusher.push_image(REPO, tag="main-4", layers=[random_layer(500, "m4")])
    sync()

    response = deleter_client.post(RUN, {**form, "confirm": "yes"})

    assert response.status_code == 409
    assert retention.CHANGED in response.content.decode()
    assert not Job.objects.exists() and not RetentionRun.objects.exists()


def test_run_now_while_someone_else_holds_a_repository_deletes_nothing_and_retries(
    shop, ci, deleter_client
):
    form = run_form(deleter_client.get(EDITOR).content.decode())
    held = leases.acquire(leases.repository_lease_name(REPO), owner="sync")

    outcome = follow_job(deleter_client, deleter_client.post(RUN, {**form, "confirm": "yes"}))

    job = Job.objects.get()
    assert job.state == "queued" and "attempt 1 of 3 failed: Nothing was deleted" in job.message
    assert f"repository {REPO} is busy" in html.unescape(outcome)
    assert not DeletionRecord.objects.exists()
    assert RetentionRun.objects.get().outcome == "busy"
    leases.release(held)


def test_a_preview_time_that_is_not_one_gets_a_fresh_preview(shop, ci, deleter_client):
    form = run_form(deleter_client.get(EDITOR).content.decode())

    for junk in ("yesterday", "2026-13-45T99:00:00Z", "2026-03-01T10:00:00"):
        response = deleter_client.post(RUN, {**form, "now": junk, "confirm": "yes"})
        assert response.status_code == 409, junk
    assert not DeletionRecord.objects.exists() and not RetentionRun.objects.exists()


def test_run_now_needs_the_box_ticked(shop, ci, deleter_client):
    form = run_form(deleter_client.get(EDITOR).content.decode())

    response = deleter_client.post(RUN, form)

    assert response.status_code == 422
    assert deletion.UNCONFIRMED in response.content.decode()
    assert not DeletionRecord.objects.exists() and not RetentionRun.objects.exists()


# -- import, export, delete, permissions ---------------------------------------------------------


def test_a_policy_imported_on_the_page_exports_as_the_same_json(db, deleter_client):
    response = deleter_client.post("/retention/import", {"policy": json.dumps(POLICY)})

    assert response.status_code == 303 and response["Location"] == EDITOR
    exported = deleter_client.get(f"{EDITOR}export.json")
    assert exported["Content-Type"] == "application/json"
    assert exported["Content-Disposition"] == 'attachment; filename="ci.json"'
    assert json.loads(exported.content) == {
        **POLICY,
        "max_delete_fraction": 0.5,
        "schedule": None,
        "enabled": True,
    }


def test_an_import_with_problems_lists_them_and_stores_nothing(db, deleter_client):
    bad = {"name": "ci", "rules": [{"keep": "latest_pushed", "count": 0, "sort": "desc"}]}

    response = deleter_client.post("/retention/import", {"policy": json.dumps(bad)})

    assert response.status_code == 422
    page = response.content.decode()
    assert "<li>rules[0].sort: unknown field; a rule has keep, count, days, tags" in page
    assert "<li>rules[0].count: a whole number from 1 to 1,000,000</li>" in page
    assert not RetentionPolicy.objects.exists()


def test_an_uploaded_file_replaces_a_policy_only_when_asked(ci, deleter_client, tmp_path):
    path = tmp_path / "ci.json"
    path.write_text(json.dumps({**POLICY, "enabled": False}))

    with path.open("rb") as upload:
        refused = deleter_client.post("/retention/import", {"file": upload})
    with path.open("rb") as upload:
        replaced = deleter_client.post("/retention/import", {"file": upload, "replace": "yes"})

    assert refused.status_code == 422
    assert "a policy named ci exists already: tick “Replace” to replace it" in (
        refused.content.decode()
    )
    assert replaced.status_code == 303
    assert RetentionPolicy.objects.get(pk=ci.pk).enabled is False


def test_deleting_a_policy_keeps_its_runs_on_record(ci, deleter_client):
    RetentionRun.objects.create(
        policy=ci, policy_name="ci", trigger="manual", started_at=timezone.now(), outcome="done"
    )

    response = deleter_client.post(f"{EDITOR}delete")

    assert response.status_code == 303 and response["Location"] == LIST
    assert not RetentionPolicy.objects.exists()
    assert RetentionRun.objects.get().policy_name == "ci"


def test_viewers_may_look_but_neither_edit_nor_run(shop, ci, viewer_client):
    page = viewer_client.get(EDITOR).content.decode()
    assert "<fieldset disabled>" in page and "run-now" not in page and "Save policy" not in page
    assert delete_items(page)  # the dry run, read-only

    assert viewer_client.get("/retention/new/").status_code == 403
    for url in (
        PREVIEW,
        "/retention/new/save",
        f"{EDITOR}save",
        RUN,
        f"{EDITOR}delete",
        "/retention/import",
    ):
        assert viewer_client.post(url, editor_fields(POLICY)).status_code == 403, url
    assert RetentionPolicy.objects.get().rules == ci.rules


def test_what_changes_anything_is_post_only_and_needs_the_csrf_token(
    shop, ci, deleter, client_factory
):
    strict = client_factory(deleter, enforce_csrf_checks=True)
    form = run_form(strict.get(EDITOR).content.decode())

    for url in (
        RUN,
        f"{EDITOR}save",
        f"{EDITOR}delete",
        "/retention/import",
        PREVIEW,
        "/retention/new/save",
    ):
        assert strict.get(url).status_code == 405, url
    response = strict.post(RUN, {**form, "confirm": "yes"})

    assert response.status_code == 403 and b"CSRF" in response.content
    assert not DeletionRecord.objects.exists()


def test_the_header_links_to_the_retention_page(db, viewer_client):
    page = viewer_client.get("/").content.decode()

    assert '<a href="/retention/">Retention</a>' in page
    assert '<a href="/retention/" aria-current="page">Retention</a>' in (
        viewer_client.get(LIST).content.decode()
    )


def test_an_unknown_policy_is_a_404(db, viewer_client):
    assert viewer_client.get("/retention/policies/nope/").status_code == 404


# -- what the editor can show -------------------------------------------------------------------


class _FormFields(HTMLParser):
    """The fields a browser would send for the form `form_id` of a page, as they stand."""

    def __init__(self, form_id: str) -> None:
        super().__init__()
        self.form_id = form_id
        self.inside = False
        self.fields: list[tuple[str, str]] = []
        self._select: str | None = None
        self._textarea: str | None = None
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "form":
            self.inside = a.get("id") == self.form_id
        if not self.inside or "name" not in a and tag != "option":
            return
        if tag == "input":
            if a.get("type") == "checkbox" and "checked" not in a:
                return
            if a.get("type") == "submit":
                return
            default = "on" if a.get("type") == "checkbox" else ""
            self.fields.append((a["name"], a.get("value") or default))
        elif tag == "select":
            self._select = a["name"]
        elif tag == "option" and self._select and "selected" in a:
            self.fields.append((self._select, a.get("value", "")))
        elif tag == "textarea":
            self._textarea, self._text = a["name"], ""

    def handle_data(self, data: str) -> None:
        if self._textarea:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.inside = False
        elif tag == "select":
            self._select = None
        elif tag == "textarea" and self._textarea:
            self.fields.append((self._textarea, self._text))
            self._textarea = None


def form_fields(page: str, form_id: str = "policy-form") -> dict[str, str]:
    parser = _FormFields(form_id)
    parser.feed(page)
    return {name: value for name, value in parser.fields if name != "csrfmiddlewaretoken"}


def test_a_policy_of_sixty_rules_opened_and_saved_unchanged_keeps_all_sixty(db, deleter_client):
    rules = [{"keep": "always", "tags": [f"keep-{n}"]} for n in range(60)]
    policies.save_policy(policies.parse_policy({"name": "many", "rules": rules}))
    editor = "/retention/policies/many/"

    page = deleter_client.get(editor).content.decode()
    response = deleter_client.post(f"{editor}save", form_fields(page))

    assert response.status_code == 303
    assert RetentionPolicy.objects.get(name="many").rules == rules


def test_more_rules_than_the_editor_handles_are_refused_never_cut(db, deleter_client):
    limit = retention_form.EDITOR_MAX_RULES
    rules = [{"keep": "always", "tags": [f"keep-{n}"]} for n in range(limit + 1)]
    policies.save_policy(policies.parse_policy({"name": "huge", "rules": rules}))
    editor = "/retention/policies/huge/"

    page = deleter_client.get(editor).content.decode()
    response = deleter_client.post(f"{editor}save", form_fields(page))

    assert f'name="rule-{limit}-keep"' in page  # every rule shown
    assert response.status_code == 422
    message = f"the editor handles up to {limit} rules; this policy has {limit + 1}"
    assert message in html.unescape(response.content.decode())
    assert len(RetentionPolicy.objects.get(name="huge").rules) == limit + 1
