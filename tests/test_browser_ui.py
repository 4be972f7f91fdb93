"""The list and the preview in Debian's chromium (issue 13), on a laptop (1366×900) and on a
phone (390×844, mobile emulation): what fits the screen, which columns show, axe-core on
every page, the running "frees" total against a preview of the same selection, the guard
rails, the keyboard, and screenshots under test-artifacts/."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from axe_playwright_python.sync_playwright import Axe
from django.utils import timezone
from playwright.sync_api import expect

from devtools.pusher import random_layer
from hubimages.deletion import planning
from hubimages.lib.formatting import human_size, short_digest
from hubimages.models import Job, Manifest, Repository

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


SHOWN = ("col-digest", "col-tags", "col-size", "col-last_pushed", "col-status")
PHONE_HIDDEN = ("col-type", "col-platform", "col-last_pulled")


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


def test_the_preview_asks_twice_before_deleting_what_is_in_use(web, signed_in_page):
    page = signed_in_page()
    page.set_viewport_size(LAPTOP)
    page.goto(LIST)
    box(page, web.release).check()
    page.get_by_role("button", name="Preview and delete").click()
    dialog = page.locator("dialog.panel")

    release = dialog.locator(f'tr.delete-item[data-digest="{web.release.digest}"]')
    expect(release.locator(".badge-in-use")).to_have_text(re.compile(r"in use: pulled 3\smin ago"))
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
