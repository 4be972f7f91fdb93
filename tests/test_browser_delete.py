"""Preview and delete in a real browser (Debian's chromium), with and without JavaScript:
select two items, preview, check what goes and the bytes, confirm, Delete forever, see the
list without them and the deletion history with them."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from playwright.sync_api import expect

from devtools.pusher import random_layer
from hubimages.deletion import planning
from hubimages.lib.formatting import human_size, short_digest
from hubimages.models import DeletionRecord, Repository

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

REPO = "acme/store"
LIST = f"/r/default/{REPO}/"
ROWS = '#rows input[name="digest"]'


@pytest.fixture
def store(pusher, sync):
    """A multi-arch release with an attestation, an old build sharing a layer with the
    current one."""
    base = random_layer(30_000, "base")
    amd = pusher.push_image(REPO, layers=[base, random_layer(40_000, "amd")])
    arm = pusher.push_image(REPO, layers=[base, random_layer(35_000, "arm")], architecture="arm64")
    release = pusher.push_index(REPO, tag="3.0", images=[amd, arm], attestations=[amd])
    old = pusher.push_image(REPO, tag="2.9", layers=[base, random_layer(20_000, "old")])
    current = pusher.push_image(REPO, tag="3.1", layers=[base, random_layer(25_000, "cur")])
    sync()
    return SimpleNamespace(release=release, old=old, current=current)


def select_box(page, manifest):
    """A row's check box; its name says the row's tags, then its kind and short digest."""
    return page.get_by_role("checkbox", name=re.compile(re.escape(short_digest(manifest.digest))))


def plan_for(*manifests) -> planning.DeletionPlan:
    return planning.plan_deletion(
        repository=Repository.objects.get(name=REPO), digests=[m.digest for m in manifests]
    )


def check_preview(scope, plan: planning.DeletionPlan) -> None:
    """The listed manifests and the reclaimable bytes are the planner's, to the byte."""
    items = scope.locator("tr.delete-item")
    expect(items).to_have_count(len(plan.delete))
    assert {items.nth(i).get_attribute("data-digest") for i in range(len(plan.delete))} == {
        item.digest for item in plan.delete
    }
    reclaimable = scope.locator("strong.reclaimable")
    expect(reclaimable).to_have_text(human_size(plan.reclaimable_bytes))
    expect(reclaimable).to_have_attribute("data-bytes", str(plan.reclaimable_bytes))
    expect(reclaimable).to_have_attribute("title", f"{plan.reclaimable_bytes:,} bytes")


def deleted_message(plan: planning.DeletionPlan) -> str:
    return (
        f"Deleted {plan.manifest_count} manifests and {plan.tag_count} tags; "
        f"{human_size(plan.reclaimable_bytes)}"
    )


def check_deleted(page, store, plan: planning.DeletionPlan) -> None:
    """On the list: the rows gone; then the history lists them."""
    expect(page.locator(ROWS)).to_have_count(1)
    assert page.locator(ROWS).first.get_attribute("value") == store.current.digest

    page.get_by_role("link", name="Deletion history", exact=True).click()
    records = page.locator("tr.record")
    expect(records).to_have_count(plan.manifest_count)
    assert {records.nth(i).get_attribute("data-digest") for i in range(plan.manifest_count)} == {
        item.digest for item in plan.delete
    }
    expect(page.locator("tbody.operation tr.row").first).to_contain_text("admin")
    assert DeletionRecord.objects.count() == plan.manifest_count


def test_select_preview_and_delete_forever_in_a_dialog(store, signed_in_page, worker_thread):
    page = signed_in_page()
    page.goto(LIST)
    expect(page.locator(ROWS)).to_have_count(3)
    plan = plan_for(store.release, store.old)

    select_box(page, store.release).check()
    select_box(page, store.old).check()
    page.get_by_role("button", name="Preview and delete").click()

    dialog = page.locator("dialog.panel")
    expect(dialog).to_be_visible()
    assert page.url.endswith(LIST)  # a dialog over the list, no page load
    check_preview(dialog, plan)
    delete = dialog.get_by_role("button", name="Delete forever")
    delete.click()  # not confirmed yet: the browser holds the form back
    expect(dialog).to_be_visible()
    assert DeletionRecord.objects.count() == 0
    dialog.get_by_label("I understand that").check()
    delete.click()  # freshly pushed, the items are active: a second tick is needed too
    expect(dialog).to_be_visible()
    assert DeletionRecord.objects.count() == 0
    dialog.get_by_label("Also delete").check()
    delete.click()

    # The dialog follows the job the worker runs, then the list comes back with a message.
    expect(page.locator(".message-success")).to_contain_text(deleted_message(plan), timeout=20_000)
    assert page.url.endswith(LIST)
    check_deleted(page, store, plan)


def test_select_preview_and_delete_forever_with_javascript_off(
    store, signed_in_page, worker_thread
):
    page = signed_in_page(javascript=False)
    page.goto(LIST)
    plan = plan_for(store.release, store.old)

    select_box(page, store.release).check()
    select_box(page, store.old).check()
    page.get_by_role("button", name="Preview and delete").click()

    expect(page.get_by_role("heading", name=f"Preview and delete {REPO}")).to_be_visible()
    assert page.url.endswith("/-/delete/")  # the selection went by POST
    check_preview(page, plan)
    page.get_by_label("I understand that").check()
    page.get_by_label("Also delete").check()
    page.get_by_role("button", name="Delete forever").click()

    # The job's page reloads itself (no JavaScript needed) until the worker is done.
    expect(page.get_by_role("heading", name=f"Deletion {REPO}")).to_be_visible()
    expect(page.locator(".job-state")).to_have_text("Succeeded", timeout=20_000)
    expect(page.locator(".delete-outcome")).to_contain_text(deleted_message(plan))
    page.get_by_role("link", name=f"Back to {REPO}").click()
    check_deleted(page, store, plan)
