"""The retention editor in a real browser (Debian's chromium): the dry run follows the fields
as you type, without a page load; Save, then Run now deletes what the preview showed and
a fresh preview follows. Without JavaScript, the Preview button does the same."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from devtools.pusher import random_layer
from hubimages.lib.formatting import human_size
from hubimages.models import DeletionRecord, Manifest, RetentionPolicy, RetentionRun
from hubimages.retention import engine, policies

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
REPO = "acme/app"
DELETED = "#dry-run tr.delete-item"


@pytest.fixture
def app(pusher, sync):
    """A release and four main builds, one day apart (main-4 newest)."""
    now = timezone.now()
    release = pusher.push_image(REPO, tag="v1.0", layers=[random_layer(30_000, "v1")])
    mains = [
        pusher.push_image(REPO, tag=f"main-{i}", layers=[random_layer(10_000 * i, f"m{i}")])
        for i in (1, 2, 3, 4)
    ]
    sync()
    for days, image in enumerate(reversed([release, *mains]), start=1):
        Manifest.objects.filter(digest=image.digest).update(
            pushed_at=now - timedelta(days=days), pushed_at_estimated=False
        )
    return SimpleNamespace(release=release, mains=mains)


def expected(policy: dict) -> engine.DryRun:
    return engine.dry_run(policies.parse_policy(policy))


def test_the_dry_run_follows_the_editor_as_you_type_and_run_now_deletes_it(
    app, signed_in_page, live_server, worker_thread
):
    page = signed_in_page()
    page.set_viewport_size({"width": 1360, "height": 1000})
    page.goto("/retention/new/")
    page.evaluate("window.noPageLoadSince = true")
    dry_run = page.locator("#dry-run")

    page.get_by_label("Name").press_sequentially("ci", delay=30)
    expect(dry_run).to_contain_text("Rules: add at least one rule")
    page.locator("#rule-0-keep").select_option(label="latest N pushed")
    expect(dry_run).to_contain_text("Rule 1, N: required with keep latest_pushed")
    page.locator("#rule-0-number").fill("2")
    expect(page.locator(DELETED)).to_have_count(3)  # v1.0, main-1, main-2
    expect(dry_run).to_contain_text("kept by rule 1: latest 2")

    page.locator("#rule-0-tags").fill("main-*")  # v1.0 leaves the scope: nothing keeps it
    page.locator("#rule-0-group_by").fill("^(main")
    expect(dry_run).to_contain_text("Rule 1, group by: not a valid regular expression")
    page.locator("#rule-0-group_by").fill("^(main)-")
    expect(dry_run).to_contain_text("kept by rule 1: latest 2 of group main")
    page.locator("#rule-0-number").fill("1")
    policy = {
        "name": "ci",
        "rules": [
            {"keep": "latest_pushed", "count": 1, "tags": ["main-*"], "group_by": "^(main)-"}
        ],
    }
    plan = expected(policy)
    expect(page.locator(DELETED)).to_have_count(plan.manifest_count)
    expect(page.locator(DELETED)).to_have_count(4)
    reclaimable = dry_run.locator("strong.reclaimable")
    expect(reclaimable).to_have_attribute("data-bytes", str(plan.reclaimable_bytes))
    expect(reclaimable).to_have_text(human_size(plan.reclaimable_bytes))
    expect(dry_run).to_contain_text("not saved")
    expect(dry_run).to_contain_text("Save the policy to run it.")
    assert page.evaluate("window.noPageLoadSince") is True
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "retention-editor.png", full_page=True)

    page.get_by_role("button", name="Save policy").click()
    expect(page.locator(".message-success")).to_have_text("Saved policy ci.")
    assert RetentionPolicy.objects.get().rules == policy["rules"]
    page.get_by_label("I understand that 4 manifests").check()
    page.get_by_role("button", name="Run now").click()

    # A dialog follows the job the worker runs, then the policy comes back with a message.
    expect(page.locator(".message-success")).to_contain_text(
        "Deleted 4 manifests and 4 tags;", timeout=30_000
    )
    expect(page.locator(DELETED)).to_have_count(0)
    expect(dry_run).to_contain_text("0 of 1 item go")
    page.locator("tr.run details summary").click()
    page.screenshot(path=ARTIFACTS / "retention-after-run.png", full_page=True)
    person = RetentionRun.objects.get().started_by
    assert {r.username for r in DeletionRecord.objects.all()} == {f"{person} · policy ci"}
    assert DeletionRecord.objects.count() == 4
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Deletion history").click()
    expect(page.locator("tbody.operation tr.row").first).to_contain_text(f"{person} · policy ci")


def test_with_javascript_off_the_preview_button_shows_the_dry_run(
    app, signed_in_page, worker_thread
):
    page = signed_in_page(javascript=False)
    page.goto("/retention/")
    page.get_by_role("link", name="New policy").click()

    page.get_by_label("Name").fill("releases")
    page.locator("#rule-0-keep").select_option(label="always")
    page.locator("#rule-0-tags").fill("v*")
    page.get_by_role("button", name="Preview").click()

    plan = expected({"name": "releases", "rules": [{"keep": "always", "tags": ["v*"]}]})
    expect(page.locator(DELETED)).to_have_count(4)
    assert {page.locator(DELETED).nth(i).get_attribute("data-digest") for i in range(4)} == {
        item.digest for item in plan.repositories[0].plan.delete
    }
    expect(page.locator("#dry-run")).to_contain_text("kept by rule 1: always")
    expect(page.locator("#rule-1-keep")).to_have_count(0)
    page.get_by_role("button", name="Add rule").click()  # without JavaScript: the page again
    expect(page.locator("#rule-1-keep")).to_have_value("")
    expect(page.locator("#rule-1-keep")).to_be_focused()

    page.get_by_role("button", name="Save policy").click()
    expect(page.locator(".message-success")).to_have_text("Saved policy releases.")
    page.get_by_label("I understand that").check()
    page.get_by_role("button", name="Run now").click()

    # The job's page reloads itself until the worker is done.
    expect(page.locator(".job-state")).to_have_text("Succeeded", timeout=30_000)
    expect(page.locator(".job")).to_contain_text("Deleted 4 manifests")
    page.get_by_role("link", name="Back to policy releases").click()
    expect(page.locator(DELETED)).to_have_count(0)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Retention").click()
    row = page.locator('tr.policy[data-policy="releases"]')
    expect(row).to_contain_text("4 manifests deleted")
    expect(row.locator(".freed")).to_have_text(human_size(plan.reclaimable_bytes))
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "retention.png", full_page=True)
