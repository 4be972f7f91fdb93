"""The pages in Debian's chromium (issues 13 and 24), on a laptop (1366×900) and on a phone
(390×844, mobile emulation): what fits the screen, which columns show, axe-core on every
page, touch targets, the running "frees" total against a preview of the same selection, the
guard rails, the keyboard, where the focus lands, the retention editor's rules, the storage
chart's axes, the API reference, and screenshots under test-artifacts/ (or docs/, for the
README: `python -m devtools.screenshots`)."""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from axe_playwright_python.sync_playwright import Axe
from django.utils import timezone
from playwright.sync_api import expect

from devtools.pusher import random_layer
from devtools.worker import run_tasks
from hubimages.accounts import tokens
from hubimages.deletion import planning
from hubimages.jobs import queue
from hubimages.lib.formatting import human_size, short_digest
from hubimages.models import (
    Deletion,
    Job,
    Manifest,
    Repository,
    RetentionPolicy,
    RetentionRun,
    StorageSample,
)
from hubimages.retention import policies

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
REPO = "acme/web"
LIST = f"/r/default/{REPO}/"
ROWS = '#rows input[type="checkbox"][name="digest"]'
LAPTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}


@pytest.fixture
def web(pusher, sync):
    """A signed multi-arch release tagged `latest` and pulled minutes ago, and older builds
    sharing its base layer, two of them stale; a tag long enough to be clipped."""
    base = random_layer(40_000, "base")
    amd = pusher.push_image(REPO, layers=[base, random_layer(90_000, "amd")])
    arm = pusher.push_image(
        REPO, layers=[base, random_layer(85_000, "arm")], architecture="arm64", variant="v8"
    )
    release = pusher.push_index(REPO, tag="2.4.1", images=[amd, arm], attestations=True)
    pusher.tag(REPO, "latest", release)
    signature = pusher.push_cosign_signature(REPO, release)
    builds = {
        version: pusher.push_image(
            REPO, tag=version, layers=[base, random_layer(20_000 * (i + 1), version)]
        )
        for i, version in enumerate(
            ["2.4.0", "2.3.2", "1.9.7", "release-2019-11-04-nightly-build-7781-linux-amd64"]
        )
    }
    sync()
    now = timezone.now()
    ages = {
        "2.4.0": 20,
        "2.3.2": 75,
        "1.9.7": 260,
        "release-2019-11-04-nightly-build-7781-linux-amd64": 430,
    }
    for version, days in ages.items():
        Manifest.objects.filter(digest=builds[version].digest).update(
            pushed_at=now - timedelta(days=days), pushed_at_estimated=False
        )
    Manifest.objects.filter(digest=release.digest).update(
        last_pulled_at=now - timedelta(minutes=3), pushed_at_estimated=False
    )
    return SimpleNamespace(release=release, amd=amd, signature=signature, builds=builds)


def box(page, manifest):
    """A row's check box, found by its digest (its name starts with the row's tags)."""
    return page.get_by_role("checkbox", name=re.compile(re.escape(short_digest(manifest.digest))))


def open_page(signed_in_page, browser, live_server, *, phone: bool):
    """Signed in, at laptop size or as a phone (touch, mobile viewport, 3× pixels)."""
    if not phone:
        page = signed_in_page()
        page.set_viewport_size(LAPTOP)
        return page
    signed_in_page()  # makes the user
    context = browser.new_context(
        base_url=live_server.url,
        viewport=PHONE,
        device_scale_factor=3,
        is_mobile=True,
        has_touch=True,
        user_agent="Mozilla/5.0 (Linux; Android 14; Pixel 8) Mobile",
    )
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.goto("/accounts/login/")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", "correct horse battery staple")
    page.click("button[type=submit]")
    return page


def page_width(page) -> int:
    return page.evaluate("document.documentElement.scrollWidth")


def assert_fits(page, locator) -> None:
    """The element lies wholly inside the viewport."""
    box = locator.bounding_box()
    viewport = page.viewport_size
    assert box is not None
    assert box["x"] >= 0 and box["y"] >= 0, box
    assert box["x"] + box["width"] <= viewport["width"] + 0.5, (box, viewport)
    assert box["y"] + box["height"] <= viewport["height"] + 0.5, (box, viewport)


def axe_problems(page) -> list[str]:
    """axe-core's serious and critical violations on the page as it stands."""
    results = Axe().run(page)
    return [
        f"{violation['id']} ({violation['impact']}): "
        + "; ".join(node["target"][0] for node in violation["nodes"][:3])
        for violation in results.response["violations"]
        if violation["impact"] in ("serious", "critical")
    ]


def assert_within_width(page, locator) -> None:
    """Shown, and not pushed off the side of the screen (nor scrolled out of its table)."""
    expect(locator).to_be_visible()
    box = locator.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= page.viewport_size["width"] + 0.5, box


def sideways_scrolling(page, selector: str) -> list[str]:
    """The elements that scroll sideways (an empty list when none does)."""
    return page.evaluate(
        f"[...document.querySelectorAll({selector!r})]"
        ".filter(element => element.scrollWidth > element.clientWidth + 1)"
        ".map(element => element.className + ' ' + element.scrollWidth + '>' + element.clientWidth)"
    )


SHOWN = ("col-digest", "col-tags", "col-size", "col-last_pushed", "col-last_pulled", "col-status")
PHONE_HIDDEN = ("col-type", "col-platform")  # an index's platforms show in its contents


@pytest.mark.parametrize("phone", [False, True], ids=["laptop", "phone"])
def test_the_list_and_its_dialogs_fit_the_screen_with_the_right_columns(
    web, signed_in_page, browser, live_server, phone
):
    page = open_page(signed_in_page, browser, live_server, phone=phone)
    page.goto(LIST)
    expect(page.locator(ROWS)).to_have_count(5)

    viewport = page.viewport_size["width"]
    assert page_width(page) <= viewport
    assert sideways_scrolling(page, "#rows > form > .table-scroll") == []
    first = page.locator("#rows tr.row").first
    for column in SHOWN:
        assert_within_width(page, first.locator(f"td.{column}"))
    for column in PHONE_HIDDEN:
        if phone:
            expect(first.locator(f"td.{column}")).to_be_hidden()
        else:
            assert_within_width(page, first.locator(f"td.{column}"))
    assert_within_width(page, page.get_by_role("link", name="Last pushed"))
    # The long tag keeps its ending.
    expect(page.locator('#rows .tag[title^="release-"]')).to_have_text(
        re.compile(r"^release-2019.*….*linux-amd64$")
    )
    expect(page.locator('#rows .tag[title$=".sig"]')).to_have_text(
        re.compile(r"^sha256-.*….*\.sig$")
    )

    # The details dialog fits, Close in reach.
    page.get_by_role("link", name=short_digest(web.builds["2.4.0"].digest)).first.click()
    dialog = page.locator("dialog.panel")
    expect(dialog).to_be_visible()
    assert_fits(page, dialog)
    expect(dialog.get_by_role("button", name="Close")).to_be_in_viewport()
    dialog.get_by_role("button", name="Close").click()

    # The preview fits, with Close, the total and Delete forever in reach without scrolling.
    box(page, web.release).check()
    expect(page.locator("#selected-count")).to_have_text("1")
    page.get_by_role("button", name="Preview and delete").click()
    expect(dialog).to_be_visible()
    assert_fits(page, dialog)
    for control in (
        dialog.get_by_role("button", name="Close"),
        dialog.get_by_role("button", name="Delete forever"),
        dialog.locator(".footer-frees"),
    ):
        expect(control).to_be_in_viewport()
    # The selected item's card says what it frees; its manifests open with a click.
    card = dialog.locator("section.delete-group").first
    expect(card.locator(".group-frees")).to_be_visible()
    assert_within_width(page, card.locator(".group-figures"))
    card.locator("details.cascade > summary").click()
    item = dialog.locator("tr.delete-item").first
    for cell in ("td.col-digest", "td.col-size", "td.frees-cell", "td.col-because"):
        assert_within_width(page, item.locator(cell))
    assert sideways_scrolling(page, "dialog.panel, dialog.panel .table-scroll") == []
    assert page_width(page) <= viewport
    name = "phone" if phone else "laptop"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"preview-guard-rails-{name}.png")
    dialog.get_by_role("button", name="Close").click()
    if phone:
        page.goto(LIST)
        page.screenshot(path=ARTIFACTS / "list-phone.png", full_page=True)


def test_the_running_total_equals_a_preview_of_the_same_selection_across_searches(
    web, signed_in_page
):
    page = signed_in_page()
    page.set_viewport_size(LAPTOP)
    page.goto(LIST)
    box(page, web.builds["2.4.0"]).check()
    expect(page.locator("#selected-count")).to_have_text("1")

    # Narrow by search, tick another: the first stays selected, off the page.
    page.get_by_label("Search").fill("1.9")
    expect(page.locator(ROWS)).to_have_count(1)
    assert page.url.endswith(f"{LIST}?search=1.9")  # the search replaced the entry, no defaults
    box(page, web.builds["1.9.7"]).check()
    expect(page.locator("#selected-count")).to_have_text("2")
    page.get_by_label("Search").fill("")
    expect(page.locator(ROWS)).to_have_count(5)
    expect(box(page, web.builds["2.4.0"])).to_be_checked()
    expect(box(page, web.builds["1.9.7"])).to_be_checked()

    repository = Repository.objects.get(name=REPO)
    selected = [web.builds["2.4.0"].digest, web.builds["1.9.7"].digest]
    plan = planning.plan_deletion(repository=repository, digests=selected)
    frees = page.locator("#selection-bar .frees")
    expect(frees).to_have_attribute("data-bytes", str(plan.reclaimable_bytes))
    expect(frees).to_have_text(human_size(plan.reclaimable_bytes))
    expect(page.locator("#selection-bar")).to_contain_text(
        f"2 selected · frees {human_size(plan.reclaimable_bytes)}"
    )

    page.get_by_role("button", name="Preview and delete").click()
    dialog = page.locator("dialog.panel")
    expect(dialog.locator("strong.reclaimable")).to_have_attribute(
        "data-bytes", str(plan.reclaimable_bytes)
    )
    expect(dialog.locator("tr.delete-item")).to_have_count(2)
    dialog.get_by_role("button", name="Close").click()

    # Select all matching, then clear.
    page.get_by_label("Filter by").select_option(label="Image")
    expect(page.locator(ROWS)).to_have_count(4)
    page.get_by_role("button", name="Select all 4 matching").click()
    expect(page.locator("#selected-count")).to_have_text("4")
    page.get_by_role("button", name="Clear selection").click()
    expect(page.locator("#selection-bar")).to_contain_text("Nothing selected")
    expect(page.get_by_role("button", name="Preview and delete")).to_be_disabled()


def test_the_preview_asks_twice_before_deleting_what_is_active(web, signed_in_page):
    page = signed_in_page()
    page.set_viewport_size(LAPTOP)
    page.goto(LIST)
    box(page, web.release).check()
    page.get_by_role("button", name="Preview and delete").click()
    dialog = page.locator("dialog.panel")

    release = dialog.locator(f'tr.delete-item[data-digest="{web.release.digest}"]')
    expect(release.locator(".badge-recent")).to_have_text(
        re.compile(r"recently pulled: 3\smin ago")
    )
    expect(release.locator(".badge-guard")).to_have_text("tag latest")
    signature = dialog.locator(f'tr.delete-item[data-digest="{web.signature.digest}"]')
    expect(signature.locator(".badge-guard")).to_have_text("signature")
    expect(dialog.locator(".guard-rails")).to_contain_text("1 signature will go")
    frees = dialog.locator(f'tr.delete-item[data-digest="{web.amd.digest}"] .shared-note')
    expect(frees.first).to_contain_text(
        re.compile(r"shared with (2\.4\.0|2\.3\.2|1\.9\.7|release-).* more manifests \(not freed\)")
    )

    dialog.get_by_label("I understand that").check()
    dialog.get_by_role("button", name="Delete forever").click()
    expect(dialog).to_be_visible()  # the second box is required too
    assert Manifest.objects.filter(digest=web.release.digest).exists()
    page.mouse.move(0, 0)
    ARTIFACTS.mkdir(exist_ok=True)
    dialog.screenshot(path=ARTIFACTS / "preview-guard-rails.png")


def test_the_keyboard_searches_moves_ticks_and_opens(web, signed_in_page):
    page = signed_in_page()
    page.set_viewport_size(LAPTOP)
    page.goto(LIST)
    expect(page.locator(ROWS)).to_have_count(5)

    page.keyboard.press("/")
    expect(page.get_by_label("Search")).to_be_focused()
    page.keyboard.press("Escape")
    page.locator("h1").click()

    page.keyboard.press("j")
    page.keyboard.press("j")
    current = page.locator("#rows tbody.item.row-current")
    expect(current).to_have_count(1)
    second = page.locator("#rows tbody.item").nth(1)
    expect(second).to_have_class(re.compile("row-current"))
    page.keyboard.press("k")
    expect(page.locator("#rows tbody.item").first).to_have_class(re.compile("row-current"))
    page.keyboard.press("x")
    expect(page.locator(ROWS).first).to_be_checked()
    expect(page.locator("#selected-count")).to_have_text("1")

    page.keyboard.press("Enter")
    dialog = page.locator("dialog.panel")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("heading", level=1)).to_contain_text(
        short_digest(page.locator(ROWS).first.get_attribute("value"))
    )
    page.keyboard.press("Escape")
    expect(dialog).to_have_count(0)

    page.keyboard.press("?")
    shortcuts = page.get_by_role("dialog", name="Keyboard shortcuts")
    expect(shortcuts).to_be_visible()
    expect(shortcuts).to_contain_text("Tick or untick the row")


def test_image_details_delete_opens_the_preview_for_that_item(web, signed_in_page):
    page = signed_in_page()
    page.set_viewport_size(LAPTOP)
    page.goto(LIST)
    page.get_by_role("link", name=short_digest(web.builds["1.9.7"].digest)).click()
    dialog = page.locator("dialog.panel")
    expect(dialog.locator("#pull-command")).to_contain_text(f"/{REPO}@{web.builds['1.9.7'].digest}")
    expect(dialog.get_by_role("button", name="Copy the docker pull command")).to_be_visible()

    dialog.get_by_role("button", name="Delete…").click()

    preview = page.locator("dialog.panel")
    expect(preview.get_by_role("heading", name=f"Preview and delete {REPO}")).to_be_visible()
    expect(preview.locator("tr.delete-item")).to_have_count(1)
    expect(preview.locator("tr.delete-item")).to_have_attribute(
        "data-digest", web.builds["1.9.7"].digest
    )


def test_no_page_has_serious_or_critical_accessibility_violations(
    web, signed_in_page, browser, live_server, worker_thread
):
    page = signed_in_page()
    page.set_viewport_size(LAPTOP)
    problems: dict[str, list[str]] = {}

    def check(name: str) -> None:
        found = axe_problems(page)
        if found:
            problems[name] = found

    detail = f"{LIST}-/images/{web.release.digest}/"
    for url in ("/", LIST, f"{LIST}?search=2.4", detail, "/jobs/", "/history/", "/retention/"):
        page.goto(url)
        check(url)
    page.goto("/retention/new/")
    check("retention editor")

    page.goto(LIST)
    page.locator("details.children").first.locator("summary").click()
    box(page, web.builds["2.3.2"]).check()
    expect(page.locator("#selected-count")).to_have_text("1")
    check("list with an index open and a selection")
    page.keyboard.press("?")
    check("shortcuts")
    page.keyboard.press("Escape")
    page.get_by_role("link", name=short_digest(web.builds["2.4.0"].digest)).click()
    expect(page.locator("dialog.panel")).to_be_visible()
    check("details panel")
    page.locator("dialog.panel").get_by_role("button", name="Close").click()
    page.get_by_role("button", name="Preview and delete").click()
    dialog = page.locator("dialog.panel")
    expect(dialog).to_be_visible()
    check("preview dialog")
    dialog.get_by_label("I understand that").check()
    dialog.get_by_label("Also delete 1 active item").check()
    dialog.get_by_role("button", name="Delete forever").click()
    expect(page.locator(".message-success")).to_be_visible(timeout=20_000)
    check("list after a deletion")
    page.goto(f"/jobs/{Job.objects.latest('pk').pk}/")
    check("job page")

    phone = open_page(signed_in_page, browser, live_server, phone=True)
    phone.goto(LIST)
    found = axe_problems(phone)
    if found:
        problems["list on a phone"] = found
    phone.context.close()

    page.context.clear_cookies()
    page.goto("/accounts/login/")
    check("login")
    assert problems == {}


def contrast(first: str, second: str) -> float:
    """WCAG contrast ratio of two computed `rgb(r, g, b)` colours."""

    def luminance(color: str) -> float:
        channels = [int(v) / 255 for v in re.findall(r"\d+", color)[:3]]
        linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    high, low = sorted((luminance(first), luminance(second)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_the_focus_ring_and_input_borders_stand_out_and_a_disabled_delete_is_no_alarm(
    web, signed_in_page
):
    page = signed_in_page()
    page.set_viewport_size(LAPTOP)
    page.goto(LIST)
    style = "(element, property) => getComputedStyle(element)[property]"
    search = page.get_by_label("Search")
    white = "rgb(255, 255, 255)"

    assert contrast(search.evaluate(style, "borderTopColor"), white) >= 3
    page.locator("h1").click()
    page.keyboard.press("Tab")
    focused = page.locator(":focus-visible")
    expect(focused).to_have_count(1)
    assert contrast(focused.evaluate(style, "outlineColor"), white) >= 3
    assert focused.evaluate(style, "outlineStyle") == "solid"

    button = page.get_by_role("button", name="Preview and delete")
    expect(button).to_be_disabled()
    background = button.evaluate(style, "backgroundColor")
    red, green, blue = (int(v) for v in re.findall(r"\d+", background)[:3])
    assert abs(red - green) < 20 and abs(green - blue) < 20, background  # grey, not red
    assert button.evaluate(style, "opacity") == "1"


# == Issue 24: every page on a laptop and on a phone ============================================

SIZES = pytest.mark.parametrize("phone", [False, True], ids=["laptop", "phone"])
POLICY = "ci-cleanup"
SCREENSHOTS = "HUBIMAGES_SCREENSHOTS"  # a folder: the README's pictures go there (devtools)


@pytest.fixture
def lived_in(web, registry_client, django_user_model):
    """`web`, with what the other pages show: a deletion (history, a job), a sync job, a
    retention policy that would delete something and one that ran, an API token, storage
    figures, and stored bytes at three full syncs seconds apart (one minute on the chart)."""
    admin = django_user_model.objects.create_superuser(
        "admin", password="correct horse battery staple"
    )
    repository = Repository.objects.get(name=REPO)
    gone = [web.builds["1.9.7"].digest]
    plan = planning.plan_deletion(repository=repository, digests=gone)
    deletion = queue.start_deletion(
        repository=repository, digests=gone, fingerprint=plan.fingerprint, user=admin
    )
    StorageSample.objects.all().delete()
    now = timezone.now()
    for seconds, stored in ((40, 610_000), (25, 540_000), (5, 365_000)):
        StorageSample.objects.create(at=now - timedelta(seconds=seconds), stored_bytes=stored)
    sync_job = queue.start_sync(user=admin)  # a fourth point, then the figures
    run_tasks()
    policy = {
        "name": POLICY,
        "repositories": ["acme/**"],
        "rules": [{"keep": "always", "tags": ["2.4.*", "latest"]}],
    }
    policies.save_policy(policies.parse_policy(policy))
    kept = policies.save_policy(
        policies.parse_policy(
            {"name": "keep-everything", "rules": [{"keep": "always", "untagged": True}]}
        )
    )
    now = timezone.now()
    RetentionRun.objects.create(
        policy=kept,
        policy_name=kept.name,
        trigger=RetentionRun.Trigger.MANUAL,
        started_by="admin",
        started_at=now,
        finished_at=now,
        outcome=RetentionRun.Outcome.DONE,
        repositories=[{"repository": REPO, "note": "nothing to delete", "deleted": 0}],
    )
    tokens.issue(user=admin, name="nightly cleanup", scope="read+delete", expires_in_days=30)
    return SimpleNamespace(**vars(web), deletion=deletion, sync=sync_job)


def pages(lived_in) -> dict[str, str]:
    """Every page a person reaches from the header, with data on it."""
    return {
        "repositories": "/",
        "list": LIST,
        "search": f"{LIST}?search=2.4",
        "details": f"{LIST}-/images/{lived_in.release.digest}/",
        "jobs": "/jobs/",
        "job": f"/jobs/{lived_in.deletion.pk}/",
        "history": "/history/",
        "trash": "/trash/",
        "retention": "/retention/",
        "new policy": "/retention/new/",
        "policy": f"/retention/policies/{POLICY}/",
        "policy that ran": "/retention/policies/keep-everything/",
        "storage": "/storage/",
        "api tokens": "/account/api-tokens/",
        "api docs": "/api/v1/docs",
        "registries": "/registries/",
        "search everywhere": "/search/?q=2.4",
        "audit": "/audit/",
    }


@pytest.fixture
def screen(signed_in_page, browser, live_server):
    """A signed-in page at laptop size or as a phone; phone contexts closed afterwards."""
    contexts = []

    def open_screen(*, phone: bool):
        page = open_page(signed_in_page, browser, live_server, phone=phone)
        contexts.append(page.context)
        return page

    yield open_screen
    for context in contexts:
        context.close()


def every_violation(page) -> list[str]:
    """Every axe-core violation, whatever its impact (landmark-unique is "moderate")."""
    results = Axe().run(page)
    return [
        f"{violation['id']} ({violation['impact']}): "
        + "; ".join(node["target"][0] for node in violation["nodes"][:3])
        for violation in results.response["violations"]
    ]


# What a finger must hit: controls, and links that are not words inside a sentence (WCAG
# 2.5.5's exception). A check box's target is its label when it has one.
SMALL_TARGETS = """() => {
  const blockOf = element => {
    let block = element.parentElement;
    while (block && getComputedStyle(block).display.startsWith("inline")) {
      block = block.parentElement;
    }
    return block;
  };
  const inline = link => {
    const block = blockOf(link);
    if (!block || block.matches("td, th, nav, nav *")) return false;
    return block.textContent.replace(link.textContent, "").trim().length > 0;
  };
  const wanted = "a[href], button, input:not([type=hidden]), select, summary, textarea";
  return [...document.querySelectorAll(wanted)]
    .filter(element => element.checkVisibility() && !element.closest("dialog:not([open])"))
    .filter(element => !(element.matches("a") && inline(element)))
    .map(element => {
      const target = (element.matches("input") && element.closest("label")) || element;
      const box = target.getBoundingClientRect();
      const text = element.getAttribute("aria-label") || element.textContent || element.name;
      return {box, name: `${element.tagName} "${(text || "").trim().slice(0, 40)}"`};
    })
    .filter(({box}) => box.right > 0 && box.bottom > 0)  // the skip link waits off screen
    .filter(({box}) => box.width < 43.5 || box.height < 43.5)
    .map(({box, name}) => `${name} ${Math.round(box.width)}×${Math.round(box.height)}`);
}"""


def look_around(page, name: str, phone: bool) -> list[str]:
    """What is wrong with the page as it stands: wider than the screen, axe-core's
    violations, and on a phone the targets smaller than 44 × 44 px."""
    problems = (
        [f"{page_width(page)} px wide"] if page_width(page) > page.viewport_size["width"] else []
    )
    problems += every_violation(page)
    if phone:
        problems += page.evaluate(SMALL_TARGETS)
        header = page.locator("header.site-header").bounding_box()["height"]
        problems += [f"header {header:.0f} px tall"] if header > HEADER_ON_A_PHONE else []
    return [f"{name}: {problem}" for problem in problems]


# The header on a phone: the brand and "Menu" (44 px targets) on one line; it took ~230 px
# when every link showed.
HEADER_ON_A_PHONE = 120


@SIZES
def test_no_page_is_wider_than_the_screen_has_an_axe_violation_or_a_small_target(
    lived_in, screen, phone
):
    page = screen(phone=phone)
    problems = []
    made = Deletion.objects.get(job=lived_in.deletion)  # one name on every page that shows it
    for name, url in pages(lived_in).items():
        page.goto(url)
        expect(page.locator("main h1")).to_be_visible()
        problems += look_around(page, name, phone)
        if name in ("jobs", "job", "history"):
            expect(page.locator("main").get_by_text(made.name, exact=True)).to_be_visible()

    # The open states: an index's contents, a deletion's manifests, the preview.
    page.goto(LIST)
    page.locator("details.children").first.locator("summary").click()
    problems += look_around(page, "list with an index open", phone)
    page.goto("/history/")
    page.locator("details.children").first.locator("summary").click()
    problems += look_around(page, "history with a deletion open", phone)
    page.goto(LIST)
    box(page, lived_in.release).check()
    expect(page.locator("#selected-count")).to_have_text("1")
    page.get_by_role("button", name="Preview and delete").click()
    expect(page.locator("dialog.panel")).to_be_visible()
    problems += look_around(page, "preview", phone)
    page.locator("dialog.panel details.cascade > summary").first.click()
    problems += look_around(page, "preview with its manifests open", phone)
    # A search that finds nothing says what was searched, how, where, under which filter.
    page.goto(f"{LIST}?search=ATEST&filter=image")
    expect(page.locator("td.empty")).to_contain_text(
        f"No tag contains “ATEST” and no digest starts with it in {REPO} (Filter by: Image)."
    )
    problems += look_around(page, "a search that finds nothing", phone)
    page.get_by_role("link", name="Search every item").click()
    expect(box(page, lived_in.release)).to_be_visible()  # "atest": the release's `latest`
    expect(page.locator(ROWS)).to_have_count(1)
    page.context.clear_cookies()
    page.goto("/accounts/login/")
    problems += look_around(page, "sign-in", phone)
    assert problems == []


def overlaps(first: dict, second: dict) -> bool:
    return not (
        first["x"] + first["width"] <= second["x"]
        or second["x"] + second["width"] <= first["x"]
        or first["y"] + first["height"] <= second["y"]
        or second["y"] + second["height"] <= first["y"]
    )


def one_line(locator) -> bool:
    """The element's text sits on one line (no word broken over two)."""
    return locator.evaluate(
        "element => element.getClientRects().length === 1 && element.getBoundingClientRect()"
        ".height < 1.7 * parseFloat(getComputedStyle(element).fontSize)"
    )


@SIZES
def test_the_preview_shows_each_item_s_type_and_platform_and_nothing_drawn_over_another(
    lived_in, screen, phone
):
    page = screen(phone=phone)
    page.goto(LIST)
    box(page, lived_in.release).check()
    expect(page.locator("#selected-count")).to_have_text("1")
    page.get_by_role("button", name="Preview and delete").click()
    dialog = page.locator("dialog.panel")
    items = dialog.locator("tr.delete-item")
    expect(items).to_have_count(
        len(
            planning.plan_deletion(
                repository=Repository.objects.get(name=REPO), digests=[lived_in.release.digest]
            ).delete
        )
    )

    # Folded, the card says which architectures go, in words; Enter opens its manifests.
    card = dialog.locator("section.delete-group").first
    expect(card.locator(".group-words")).to_contain_text(re.compile(r"images? \(.*linux/arm64/v8"))
    assert_within_width(page, card.locator(".group-words"))
    expect(items.first).to_be_hidden()
    card.locator("details.cascade > summary").focus()
    page.keyboard.press("Enter")
    expect(items.first).to_be_visible()
    arm = dialog.locator(f'tr.delete-item[data-digest="{lived_in.release.children[1].digest}"]')
    expect(arm.locator("td.col-type")).to_have_text("Image")
    expect(arm.locator("td.col-platform")).to_have_text("linux/arm64/v8")
    for n in range(items.count()):
        cells = [
            items.nth(n).locator(f"td.{name}")
            for name in ("col-digest", "col-type", "col-platform", "col-size", "frees-cell")
        ]
        for cell in cells:
            assert_within_width(page, cell)
            assert not cell.evaluate("cell => cell.scrollWidth > cell.clientWidth + 1"), n
        boxes = [cell.bounding_box() for cell in cells]
        for i, first in enumerate(boxes):
            for second in boxes[i + 1 :]:
                assert not overlaps(first, second), (n, first, second)
    for platform in dialog.locator(".platform").all():
        assert one_line(platform), platform.text_content()


@SIZES
def test_platforms_and_children_fit_in_the_list_and_the_details(lived_in, screen, phone):
    # A build no push or pull dated, first seen 75 days ago: Unknown (SPEC §2).
    undated = lived_in.builds["2.3.2"].digest
    row = Manifest.objects.get(digest=undated)
    Manifest.objects.filter(pk=row.pk).update(
        first_seen_at=row.pushed_at, pushed_at_estimated=True, pushed_at_source="first_seen"
    )
    page = screen(phone=phone)
    page.goto(LIST)
    page.locator("details.children").first.locator("summary").click()
    children = page.locator("table.list-children tbody tr")
    expect(children.first).to_be_visible()
    for n in range(children.count()):
        for cell in ("col-digest", "col-type", "col-platform", "col-size", "col-status"):
            assert_within_width(page, children.nth(n).locator(f"td.{cell}"))
    expect(children.nth(1).locator("td.col-platform")).to_have_text("linux/arm64/v8")
    assert sideways_scrolling(page, "#rows .table-scroll") == []
    platforms = page.locator("#rows .platform")
    assert platforms.count() >= 2
    for platform in platforms.all():
        if platform.is_visible():
            assert one_line(platform), platform.text_content()
    # The cards show Last pulled and sort by it too.
    first = page.locator("#rows tr.row").first
    assert_within_width(page, first.locator("td.col-last_pulled"))
    expect(first.locator("td.col-last_pulled")).to_contain_text("3 min ago")
    page.get_by_role("link", name="Last pulled").click()
    expect(page).to_have_url(re.compile(r"\?sort=-last_pulled$"))
    # The Unknown badge shows whole, and its filter finds it alone; the release's images
    # are as active as the release, signature and attestations too.
    badge = page.locator("#rows .badge-unknown")
    expect(badge).to_have_count(1)
    expect(badge).to_have_text(re.compile(r"^Unknown — watching since \d{1,2} \w{3} \d{4}$"))
    assert_within_width(page, badge)
    # two images, two attestations and a signature: every one as Active as its index
    expect(page.locator("table.list-children .badge-active")).to_have_count(5)
    page.select_option("#status", "unknown")
    expect(page).to_have_url(re.compile(r"status=unknown"))
    expect(page.locator(ROWS)).to_have_count(1)
    expect(page.locator(f'{ROWS}[value="{undated}"]')).to_have_count(1)
    assert page_width(page) <= page.viewport_size["width"]

    page.goto(f"{LIST}-/images/{lived_in.release.digest}/")
    for platform in page.locator(".platform").all():
        assert one_line(platform), platform.text_content()
    assert page_width(page) <= page.viewport_size["width"]


@SIZES
def test_the_storage_chart_labels_its_axes_with_distinct_times_and_round_sizes(
    lived_in, screen, phone
):
    page = screen(phone=phone)
    page.goto("/storage/")
    chart = page.locator("svg.line-chart")
    expect(chart).to_be_visible()
    times = chart.locator("text.x-tick")
    labels = times.all_text_contents()
    assert len(labels) >= 2 and len(set(labels)) == len(labels), labels  # one minute, apart
    sizes = chart.locator("text.y-tick").all_text_contents()
    assert len(sizes) >= 3 and sizes[-1] == "0", sizes
    assert sizes[0] == human_size(800_000), sizes  # round, above the highest (610 kB)
    texts = [*times.all(), *chart.locator("text.y-tick").all()]
    boxes = [text.bounding_box() for text in texts]
    chart_box = chart.bounding_box()
    for n, first in enumerate(boxes):
        assert (
            chart_box["x"] - 0.5 <= first["x"]
            and first["x"] + first["width"] <= chart_box["x"] + chart_box["width"] + 0.5
        ), (labels, first)
        for second in boxes[n + 1 :]:
            assert not overlaps(first, second), (first, second)
    expect(page.locator(".chart-axis-note")).to_contain_text("times in UTC")
    # The command block wraps: nothing to scroll, nothing a keyboard cannot reach.
    assert sideways_scrolling(page, "pre.command") == []
    expect(page.locator(".storage-figure-untagged")).to_contain_text("no untagged items")
    assert "the 0 untagged" not in page.locator("main").text_content()


@SIZES
def test_the_repositories_page_says_its_images_column_counts_top_level_items(
    lived_in, screen, phone
):
    page = screen(phone=phone)
    page.goto("/")
    header = page.locator("#table thead th.col-count").nth(1)
    expect(header).to_contain_text("Images (top-level)")
    expect(page.locator("#table .note")).to_contain_text("Images counts the top-level items")
    row = page.locator("#table tbody tr").first
    for cell in row.locator("td").all():
        assert_within_width(page, cell)


@SIZES
def test_the_api_reference_is_in_the_header_and_leads_back(lived_in, screen, phone):
    page = screen(phone=phone)
    page.goto("/")
    main_menu = page.get_by_role("navigation", name="Main")
    if phone:  # folded under "Menu", which the keyboard opens
        expect(main_menu).to_be_hidden()
        page.locator("summary.site-menu-toggle").focus()
        page.keyboard.press("Enter")
        expect(page.locator("details.site-menu")).to_have_attribute("open", "")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"header-{'phone' if phone else 'laptop'}.png")
    main_menu.get_by_role("link", name="API").click()
    expect(page).to_have_url(re.compile(r"/api/v1/docs$"))
    expect(page.locator("html")).to_have_attribute("lang", "en")
    assert page.locator('meta[name="viewport"]').count() == 1
    expect(page.get_by_role("heading", name="GET /api/v1/repositories", exact=True)).to_be_visible()
    page.get_by_role("link", name="POST /api/v1/repositories/{name}/delete-images").click()
    expect(
        page.get_by_role("heading", name="POST /api/v1/repositories/{name}/delete-images")
    ).to_be_in_viewport()
    page.get_by_role("link", name="DeleteImagesIn").first.click()
    expect(page.locator("#schema-deleteimagesin")).to_be_in_viewport()
    page.get_by_role("navigation", name="Breadcrumb").get_by_role(
        "link", name="Repositories"
    ).click()
    expect(page).to_have_url(re.compile(r"/$"))


@SIZES
def test_after_delete_forever_the_focus_is_on_the_result(lived_in, screen, worker_thread, phone):
    page = screen(phone=phone)
    page.goto(LIST)
    box(page, lived_in.builds["release-2019-11-04-nightly-build-7781-linux-amd64"]).check()
    page.get_by_role("button", name="Preview and delete").click()
    dialog = page.locator("dialog.panel")
    dialog.get_by_label("I understand that").check()
    dialog.get_by_role("button", name="Delete forever").click()

    message = page.locator(".message-success")
    expect(message).to_be_visible(timeout=20_000)
    expect(message).to_be_focused()
    expect(message).to_contain_text("Deleted 1 manifest")


@SIZES
def test_a_cancelled_preview_leaves_nothing_ticked(lived_in, screen, phone):
    page = screen(phone=phone)
    page.goto(LIST)
    box(page, lived_in.builds["2.4.0"]).check()
    box(page, lived_in.builds["2.3.2"]).check()
    expect(page.locator("#selected-count")).to_have_text("2")
    page.get_by_role("button", name="Preview and delete").click()
    dialog = page.locator("dialog.panel")
    dialog.get_by_role("button", name="Cancel").click()

    expect(dialog).to_have_count(0)
    expect(page.locator(f"{ROWS}:checked")).to_have_count(0)
    expect(page.locator("#selection-bar")).to_contain_text("Nothing selected")
    expect(page.locator("#selection-summary")).to_be_focused()
    page.reload()  # the server forgot them too
    expect(page.locator(ROWS).first).to_be_visible()
    expect(page.locator(f"{ROWS}:checked")).to_have_count(0)

    # Close keeps them, to change the selection.
    box(page, lived_in.builds["2.4.0"]).check()
    expect(page.locator("#selected-count")).to_have_text("1")
    page.get_by_role("button", name="Preview and delete").click()
    page.locator("dialog.panel").get_by_role("button", name="Close").click()
    expect(box(page, lived_in.builds["2.4.0"])).to_be_checked()


@SIZES
def test_the_retention_editor_adds_and_removes_rules_before_saving(lived_in, screen, phone):
    page = screen(phone=phone)
    page.goto("/retention/new/")
    page.get_by_label("Name").fill("releases")
    page.locator("#rule-0-keep").select_option(label="always")
    page.locator("#rule-0-tags").fill("2.4.*")
    expect(page.locator("#rule-1-keep")).to_have_count(0)

    page.get_by_role("button", name="Add rule").click()
    expect(page.get_by_role("group", name="Rule 2 (new)")).to_be_visible()
    expect(page.locator("#rule-1-keep")).to_be_focused()
    page.locator("#rule-1-keep").select_option(label="latest N pushed")
    page.locator("#rule-1-number").fill("1")
    page.get_by_role("button", name="Add rule").click()
    page.locator("#rule-2-keep").select_option(label="always")
    page.locator("#rule-2-tags").fill("latest")
    expect(page.locator("#dry-run")).to_contain_text("rule 3: always")

    page.get_by_role("button", name="Remove rule 2").click()
    expect(page.locator("#rule-2-keep")).to_have_count(0)
    expect(page.locator("#rule-1-tags")).to_have_value("latest")  # rule 3 is rule 2 now
    expect(page.get_by_role("button", name="Add rule")).to_be_focused()
    expect(page.locator("#dry-run")).to_contain_text("rule 2: always")
    assert page_width(page) <= page.viewport_size["width"]
    assert not RetentionPolicy.objects.filter(name="releases").exists()

    page.get_by_role("button", name="Save policy").click()
    expect(page.locator(".message-success")).to_have_text("Saved policy releases.")
    assert RetentionPolicy.objects.get(name="releases").rules == [
        {"keep": "always", "tags": ["2.4.*"]},
        {"keep": "always", "tags": ["latest"]},
    ]


@SIZES
def test_the_readme_screenshots_of_the_list_the_preview_and_storage(lived_in, screen, phone):
    """The README's pictures: `python -m devtools.screenshots` has this test write them to
    docs/ (else they go to test-artifacts/)."""
    folder = Path(os.environ.get(SCREENSHOTS) or ARTIFACTS)
    folder.mkdir(parents=True, exist_ok=True)
    size = "phone" if phone else "laptop"
    page = screen(phone=phone)
    page.goto(LIST)
    page.locator("details.children").first.locator("summary").click()
    box(page, lived_in.builds["2.3.2"]).check()
    expect(page.locator("#selected-count")).to_have_text("1")
    page.mouse.move(0, 0)
    # On a phone, past the header and the controls: the selection and the first cards.
    page.evaluate("window.scrollTo(0, 0)")
    if phone:
        page.locator("#rows").evaluate("rows => rows.scrollIntoView()")
    page.screenshot(path=folder / f"list-{size}.png")
    box(page, lived_in.release).check()
    expect(page.locator("#selected-count")).to_have_text("2")
    page.get_by_role("button", name="Preview and delete").click()
    expect(page.locator("dialog.panel")).to_be_visible()
    page.mouse.move(0, 0)
    page.screenshot(path=folder / f"preview-{size}.png")
    page.goto("/storage/")
    expect(page.locator("svg.line-chart")).to_be_attached()
    if phone:  # the figures, then the chart
        page.locator("#history-title").evaluate("title => title.scrollIntoView()")
    page.screenshot(path=folder / f"storage-{size}.png", full_page=not phone)
    readme = (ROOT / "README.md").read_text()
    for name in ("list", "preview", "storage"):
        shot = folder / f"{name}-{size}.png"
        assert 20_000 < shot.stat().st_size < 600_000, shot
        assert f"docs/{shot.name}" in readme  # the README shows each
