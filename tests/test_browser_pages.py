"""The pages in a real browser (Debian's chromium), with and without JavaScript: search
as you type, filter, sort, opening an index, Back, the details panel, the selection."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from devtools.pusher import random_layer
from hubimages.lib.formatting import short_digest
from hubimages.models import Manifest

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
REPO = "acme/web"
LIST = f"/r/default/{REPO}/"
ROWS = '#rows input[name="digest"]'


@pytest.fixture
def web(pusher, sync):
    """A repository that looks lived-in: a multi-arch release with attestations, older
    single-arch builds (two of them stale), pulled at various times."""
    base = random_layer(40_000, "base")
    amd = pusher.push_image(REPO, layers=[base, random_layer(90_000, "amd")])
    arm = pusher.push_image(
        REPO, layers=[base, random_layer(85_000, "arm")], architecture="arm64", variant="v8"
    )
    release = pusher.push_index(REPO, tag="2.4.1", images=[amd, arm], attestations=True)
    pusher.tag(REPO, "latest", release)
    builds = {
        version: pusher.push_image(
            REPO, tag=version, layers=[base, random_layer(20_000 * (i + 1), version)]
        )
        for i, version in enumerate(["2.4.0", "2.3.2", "2.2.0", "1.9.7", "legacy-1.0"])
    }
    sync()
    now = timezone.now()
    times = {
        release.digest: (timedelta(days=2), timedelta(hours=3)),
        builds["2.4.0"].digest: (timedelta(days=20), timedelta(days=4)),
        builds["2.3.2"].digest: (timedelta(days=75), None),
        builds["2.2.0"].digest: (timedelta(days=140), timedelta(days=30)),
        builds["1.9.7"].digest: (timedelta(days=260), timedelta(days=230)),
        builds["legacy-1.0"].digest: (timedelta(days=400), None),
    }
    children = [child.digest for child in release.children]
    Manifest.objects.filter(digest__in=children).update(
        pushed_at=now - timedelta(days=2), pushed_at_estimated=False
    )
    Manifest.objects.filter(digest=amd.digest).update(last_pulled_at=now - timedelta(hours=3))
    for digest, (pushed, pulled) in times.items():
        Manifest.objects.filter(digest=digest).update(
            pushed_at=now - pushed,
            pushed_at_estimated=False,
            last_pulled_at=now - pulled if pulled else None,
        )
    return SimpleNamespace(release=release, amd=amd, arm=arm, builds=builds)


def short(manifest) -> str:
    return short_digest(manifest.digest)


def select_box(page, manifest):
    """A row's check box; its name says the row's tags, then its kind and short digest."""
    return page.get_by_role("checkbox", name=re.compile(re.escape(short(manifest))))


def test_the_list_narrows_sorts_opens_and_goes_back_without_page_loads(
    web, signed_in_page, live_server, pusher, sync
):
    page = signed_in_page()
    page.set_viewport_size({"width": 1360, "height": 900})
    page.goto(LIST)
    expect(page.locator(ROWS)).to_have_count(6)
    page.evaluate("window.noPageLoadSince = true")

    # Search as you type (debounced), the URL following.
    page.get_by_label("Search").press_sequentially("2.3", delay=40)
    expect(page.locator(ROWS)).to_have_count(1)
    expect(page).to_have_url(f"{live_server.url}{LIST}?search=2.3")  # defaults left out
    page.get_by_label("Search").fill("")
    page.get_by_label("Search").dispatch_event("input")
    expect(page.locator(ROWS)).to_have_count(6)

    # Filter by.
    page.get_by_label("Filter by").select_option(label="Image index")
    expect(page.locator(ROWS)).to_have_count(1)
    assert "filter=index" in page.url
    page.get_by_label("Filter by").select_option(label="All")
    expect(page.locator(ROWS)).to_have_count(6)

    # Sort by size: biggest first, then reversed.
    size = page.locator("table.list-main > thead th.col-size")
    size.get_by_role("link", name="Size").click()
    expect(size).to_have_attribute("aria-sort", "descending")
    assert page.locator(ROWS).first.get_attribute("value") == web.release.digest
    size.get_by_role("link", name="Size").click()
    expect(size).to_have_attribute("aria-sort", "ascending")
    assert page.locator(ROWS).last.get_attribute("value") == web.release.digest
    assert "sort=size" in page.url

    # Back restores the previous view (biggest first), Forward the next one.
    page.go_back()
    expect(size).to_have_attribute("aria-sort", "descending")
    assert page.locator(ROWS).first.get_attribute("value") == web.release.digest
    assert "sort=-size" in page.url
    page.go_forward()
    expect(size).to_have_attribute("aria-sort", "ascending")

    # An index opens in place onto its images and attestations.
    children = page.locator("details.children").first
    children.locator("summary").click()
    expect(children.get_by_text(short(web.arm))).to_be_visible()
    expect(children.get_by_text("linux/arm64/v8")).to_be_visible()
    expect(children.get_by_role("cell", name="Attestation")).to_have_count(2)

    # A digest opens the details as a panel over the list.
    page.get_by_role("link", name=short(web.builds["2.4.0"])).click()
    panel = page.locator("dialog.panel")
    expect(panel).to_be_visible()
    expect(panel.get_by_role("heading", name="Layers (2)")).to_be_visible()
    panel.get_by_role("button", name="Close").click()
    expect(panel).to_have_count(0)

    # Selecting counts, and "Preview and delete" wakes up.
    button = page.get_by_role("button", name="Preview and delete")
    expect(button).to_be_disabled()
    select_box(page, web.release).check()
    expect(page.locator("#selected-count")).to_have_text("1")
    expect(button).to_be_enabled()
    page.get_by_label("Select all on this page").check()
    expect(page.locator("#selected-count")).to_have_text("6")
    page.get_by_label("Select all on this page").uncheck()
    expect(button).to_be_disabled()

    # Live refresh: a new push shows up when the window regains focus (or within 5 s),
    # unless something is selected or opened.
    children.locator("summary").click()
    pusher.push_image(REPO, tag="2.5.0-rc1", layers=[random_layer(1000, "rc")])
    sync()
    select_box(page, web.release).check()
    page.evaluate("window.dispatchEvent(new Event('focus'))")
    page.wait_for_timeout(300)
    expect(page.locator(ROWS)).to_have_count(6)
    select_box(page, web.release).uncheck()
    page.evaluate("window.dispatchEvent(new Event('focus'))")
    expect(page.locator(ROWS)).to_have_count(7)
    expect(page.locator("#rows").get_by_text("2.5.0-rc1")).to_be_visible()

    assert page.evaluate("window.noPageLoadSince") is True
    save_screenshots(page)


def save_screenshots(page) -> None:
    """The default view with the release opened and two rows ticked, as a test artifact
    (the README's pictures: `python -m devtools.screenshots`)."""
    page.goto(LIST)
    page.locator("details.children").first.locator("summary").click()
    for row in (1, 2):  # a selection, to show what deleting it would free
        page.locator(ROWS).nth(row).check()
        expect(page.locator("#selected-count")).to_have_text(str(row))
    page.mouse.move(0, 0)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "image-management.png", full_page=True)
    page.screenshot(path=ARTIFACTS / "screenshot.png")
    assert (ARTIFACTS / "screenshot.png").stat().st_size < 300_000


def test_the_same_flows_work_with_javascript_off(web, signed_in_page, live_server):
    page = signed_in_page(javascript=False)
    page.goto("/")
    page.get_by_label("Search").fill("web")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name=REPO).click()
    expect(page.locator(ROWS)).to_have_count(6)

    page.get_by_label("Search").fill("legacy")
    page.get_by_label("Search").press("Enter")
    expect(page.locator(ROWS)).to_have_count(1)
    assert "search=legacy" in page.url

    page.get_by_label("Search").fill("")
    page.get_by_label("Filter by").select_option(label="Image")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator(ROWS)).to_have_count(5)

    page.get_by_role("link", name="Last pulled").click()
    last_pulled = page.locator("table.list-main > thead th.col-last_pulled")
    expect(last_pulled).to_have_attribute("aria-sort", "descending")
    assert page.locator(ROWS).first.get_attribute("value") == web.builds["2.4.0"].digest
    assert page.locator(ROWS).last.get_attribute("value") in {
        web.builds["2.3.2"].digest,
        web.builds["legacy-1.0"].digest,
    }  # never pulled: last

    page.go_back()
    expect(last_pulled).to_have_attribute("aria-sort", "none")
    expect(page.get_by_label("Filter by")).to_have_value("image")

    page.get_by_label("Filter by").select_option(label="All")
    page.get_by_role("button", name="Apply").click()
    children = page.locator("details.children").first
    children.locator("summary").click()
    expect(children.get_by_text("linux/arm64/v8")).to_be_visible()

    page.get_by_role("link", name=short(web.amd)).click()
    expect(page.get_by_role("heading", name=f"Image {short(web.amd)}")).to_be_visible()
    expect(page.get_by_text("Part of")).to_be_visible()


def test_no_page_breaks_the_content_security_policy_and_sync_now_shows_its_progress(
    web, signed_in_page, worker_thread
):
    """Chromium enforces the CSP: htmx must work without eval and no inline script may run.
    An admin's "Sync now" then follows its job in place until the summary."""
    page = signed_in_page()
    violations: list[str] = []
    page.on(
        "console",
        lambda message: (
            violations.append(message.text)
            if "Content Security Policy" in message.text or "Refused to" in message.text
            else None
        ),
    )

    page.goto("/")
    page.get_by_role("button", name="Sync everything now").click()
    status = page.locator("#job-status")
    expect(status.locator(".job-state")).to_have_text("Succeeded", timeout=30_000)
    expect(status).to_contain_text("1 repository synced")
    assert page.url.endswith("/")  # no page load

    page.goto(LIST)
    page.get_by_label("Search").fill("2.4")  # htmx, under the CSP
    expect(page.locator(ROWS)).to_have_count(2)
    select_box(page, web.builds["2.4.0"]).check()
    page.get_by_role("button", name="Preview and delete").click()
    expect(page.locator("dialog.panel")).to_be_visible()
    page.goto("/jobs/")
    expect(page.get_by_role("link", name=re.compile(r"^Job #\d+ · Full sync$"))).to_be_visible()
    page.goto("/history/")

    assert violations == []
