"""The Storage page in a real browser (Debian's chromium): the charts draw, the table sorts
in place and the chart follows, without JavaScript too, on a laptop and on a phone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from devtools.pusher import random_layer
from hubimages.deletion import execution, planning
from hubimages.models import Manifest, Repository, StorageSample
from hubimages.storage import figures as storage_figures

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


@pytest.fixture
def lived_in(pusher, sync, registry_client):
    """Four repositories grown over seven full syncs, a day apart: a shared base layer,
    a multi-arch release, old builds gone stale, an untagged rebuild; one stale build
    deleted, waiting for the garbage collector."""
    base = random_layer(400_000, "base")
    stale = []
    for step in range(5):
        for name, size in (("shop/api", 300_000), ("shop/web", 200_000), ("tools/ci", 90_000)):
            image = pusher.push_image(
                name, tag=f"1.{step}", layers=[base, random_layer(size, f"{name}-{step}")]
            )
            if step < 2:
                stale.append(image.digest)
        if step == 3:
            amd = pusher.push_image("shop/api", layers=[base, random_layer(250_000, "amd")])
            arm = pusher.push_image(
                "shop/api", layers=[random_layer(240_000, "arm")], architecture="arm64"
            )
            pusher.push_index("shop/api", tag="2.0", images=[amd, arm], attestations=True)
        sync()
    pusher.push_image("legacy/batch", tag="nightly", layers=[random_layer(700_000, "n1")])
    sync()
    pusher.push_image("legacy/batch", tag="nightly", layers=[random_layer(650_000, "n2")])
    Manifest.objects.filter(digest__in=stale).update(pushed_at=LONG_AGO)
    sync()
    now = timezone.now()
    for days_ago, sample in enumerate(StorageSample.objects.order_by("-at")):
        StorageSample.objects.filter(pk=sample.pk).update(at=now - timedelta(days=days_ago))
    ci = Repository.objects.get(name="tools/ci")
    oldest = Manifest.objects.get(repository=ci, tags__name="1.0").digest
    plan = planning.plan_deletion(repository=ci, digests=[oldest])
    execution.execute_deletion(
        repository=ci,
        digests=[oldest],
        fingerprint=plan.fingerprint,
        user=None,
        client=registry_client,
        username="ci-cleanup",
    )
    storage_figures.record_change()  # what the worker that ran the deletion does then
    storage_figures.refresh()  # and the figures it made out of date


def test_the_storage_page_draws_its_charts_and_sorts_in_place(lived_in, signed_in_page):
    page = signed_in_page()
    errors: list[str] = []
    page.on(
        "console",
        lambda message: errors.append(message.text) if message.type == "error" else None,
    )
    page.set_viewport_size({"width": 1366, "height": 900})
    page.goto("/?sort=-reclaimable")
    expect(page.locator("tr.totals")).to_contain_text("All 4 repositories")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "repositories.png", full_page=True)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Storage").click()

    expect(page.get_by_role("heading", name="Storage", level=1)).to_be_visible()
    chart = page.get_by_role("img", name="Storage by repository")
    expect(chart).to_be_visible()
    assert chart.bounding_box()["width"] > 1000  # the page's width, not a thumbnail
    table = page.locator("table.storage-table")
    expect(table.locator("tbody th")).to_have_text(
        ["shop/api", "shop/web", "legacy/batch", "tools/ci"]
    )
    expect(page.get_by_role("img", name="Stored bytes over time")).to_be_visible()
    waiting = page.locator(".storage-figure").filter(has_text="waiting for garbage collection")
    expect(waiting).to_contain_text("from 1 deletion")

    table.get_by_role("link", name="Reclaimable (stale)").click()
    expect(page).to_have_url("/storage/?sort=-reclaimable")
    expect(table.locator("tbody th")).to_have_text(
        ["shop/api", "shop/web", "tools/ci", "legacy/batch"]
    )
    expect(page.locator(".bar-label")).to_have_text(
        ["shop/api", "shop/web", "tools/ci", "legacy/batch"]
    )
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "storage.png", full_page=True)
    page.screenshot(path=ARTIFACTS / "storage-top.png")

    page.get_by_text("The same as a table").click()
    rows = page.get_by_role("table", name="Stored bytes over time").locator("tbody tr")
    expect(rows).to_have_count(8)  # seven full syncs and the deletion
    stored = [
        int(title.split()[0].replace(",", ""))
        for title in rows.locator(".col-size").evaluate_all("cells => cells.map(c => c.title)")
    ]
    assert stored[-1] < stored[-2]  # the line drops right after the deletion
    assert errors == []


def test_without_javascript_the_table_sorts_by_loading_the_page(lived_in, signed_in_page):
    page = signed_in_page(javascript=False)
    page.goto("/storage/")

    page.locator("table.storage-table").get_by_role("link", name="Untagged").click()

    expect(page).to_have_url("/storage/?sort=-untagged")
    expect(page.locator("table.storage-table tbody th").first).to_have_text("legacy/batch")
    expect(page.locator(".bar-label").first).to_have_text("legacy/batch")


def test_on_a_phone_the_charts_fit_the_screen(lived_in, browser, signed_in_page):
    page = signed_in_page()
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto("/storage/")

    for name in ("Storage by repository", "Stored bytes over time"):
        box = page.get_by_role("img", name=name).bounding_box()
        assert 300 < box["width"] <= 390
    line = page.locator("polyline.history-line").get_attribute("points").split()
    heights = [float(point.split(",")[1]) for point in line]
    assert len(heights) == 8 and heights[-1] > heights[-2]  # the deletion's point, lower
    label = page.locator(".bar-label").first.bounding_box()
    assert label["height"] >= 12  # text keeps its size however narrow the chart
    table = page.locator("table.storage-table")
    assert table.bounding_box()["x"] >= 0
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "storage-phone.png", full_page=True)


def test_the_deletion_history_opens_an_operation_and_leads_to_garbage_collection(
    lived_in, signed_in_page
):
    page = signed_in_page()
    page.set_viewport_size({"width": 1366, "height": 900})
    page.goto("/history/")

    operation = page.locator("tbody.operation").first
    expect(operation.locator("tr.row")).to_contain_text("ci-cleanup")
    expect(operation.locator("tr.row")).to_contain_text("waiting for GC")
    expect(operation.locator("tr.record")).to_be_hidden()
    operation.get_by_text("1 manifest").click()
    expect(operation.locator("tr.record")).to_be_visible()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "deletion-history.png", full_page=True)

    page.get_by_role("link", name="how to run it").click()
    expect(page).to_have_url("/storage/#garbage-collection")
    heading = page.get_by_role("heading", name="Freeing the space: garbage collection")
    expect(heading).to_be_visible()
