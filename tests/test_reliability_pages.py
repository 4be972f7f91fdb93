"""Hostile pushes through the real registry: 20,000 labels, a megabyte label key, bidi
overrides, markup, a 255-character repository name and a 64-character architecture. Every
page renders small, escaped, with registry text isolated, and no wider than the window
(issue 10, point 8)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser

import pytest
from django.urls import reverse

from devtools.pusher import ImagePusher, PushedManifest, random_layer
from hubimages.models import DeletionRecord

LONG_NAME = "team/" + "a" * 250  # 255 characters: the most a repository name may have
LONG_ARCHITECTURE = "arm64" + "v" * 59
BIDI = "\u202e"  # RIGHT-TO-LEFT OVERRIDE: "txt.exe" reads as "exe.txt"
BIDI_CHARACTERS = re.compile("[\u200e\u200f\u202a-\u202e\u2066-\u2069]")
LABELS = 20_000
MAX_PAGE_BYTES = 300_000
VOID_ELEMENTS = {
    "area",
    "base",
    "br",
    "col",
    "embed",
    "hr",
    "img",
    "input",
    "link",
    "meta",
    "source",
    "wbr",
}


@dataclass
class Hostile:
    image: PushedManifest
    index: PushedManifest


def push_hostile(pusher: ImagePusher) -> Hostile:
    labels = {f"org.example.label-{n:05d}": f"value {n}" for n in range(LABELS)}
    labels["k" * 1_000_000] = "a megabyte key"
    labels[f"0-bidi-{BIDI}gpj.exe"] = f"invoice{BIDI}fdp.exe"  # sorts first: shown
    labels["<script>alert('key')</script>"] = "<script>alert('value')</script>"
    image = pusher.push_image(
        LONG_NAME,
        tag="v1",
        layers=[random_layer(64, "hostile")],
        architecture=LONG_ARCHITECTURE,
        variant=BIDI + "v8",
        labels=labels,
        annotations={"org.opencontainers.image.title": f"{BIDI}<img src=x onerror=alert(1)>"},
        history=[f"RUN echo {BIDI}<script>alert('history')</script> " + "x" * 3_000],
    )
    index = pusher.push_index(LONG_NAME, tag="multi", images=[image])
    return Hostile(image, index)


class IsolationChecker(HTMLParser):
    """Collects text holding bidi controls that is not inside `<bdi>` or `dir="auto"`."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, bool]] = []
        self.leaks: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in VOID_ELEMENTS:
            return
        self.stack.append((tag, tag == "bdi" or ("dir", "auto") in attrs))

    def handle_endtag(self, tag: str) -> None:
        while self.stack:
            if self.stack.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        if BIDI_CHARACTERS.search(data) and not any(isolated for _, isolated in self.stack):
            self.leaks.append(data[:80])


def rendered_pages(client, hostile: Hostile) -> dict[str, str]:
    detail = reverse("image_detail", args=["default", LONG_NAME, hostile.image.digest])
    preview = reverse("delete_preview", args=["default", LONG_NAME])
    urls = {
        "repositories": reverse("repositories"),
        "image management": reverse("image_management", args=["default", LONG_NAME]),
        "image details": detail,
        "index details": reverse("image_detail", args=["default", LONG_NAME, hostile.index.digest]),
        "delete preview": f"{preview}?digest={hostile.index.digest}",
        "deletion history": reverse("deletion_history"),
        "deletion history search": reverse("deletion_history") + f"?repository={BIDI}x",
    }
    pages = {}
    for title, url in urls.items():
        response = client.get(url)
        assert response.status_code == 200, (title, response.status_code)
        pages[title] = response.content.decode()
    panel = client.get(detail, headers={"HX-Request": "true"})
    pages["details panel"] = panel.content.decode()
    return pages


@pytest.mark.django_db
def test_hostile_content_renders_every_page_small_escaped_and_isolated(
    pusher, sync, client_factory, django_user_model
):
    hostile = push_hostile(pusher)
    sync()
    DeletionRecord.objects.create(
        username="ops", repository=LONG_NAME, digest=hostile.image.digest, kind="image", size=1
    )
    admin = django_user_model.objects.create_superuser("admin", password="x")

    pages = rendered_pages(client_factory(admin), hostile)

    for title, page in pages.items():
        assert len(page.encode()) < MAX_PAGE_BYTES, (title, len(page.encode()))
        assert "<script>alert" not in page and "<img src=x" not in page, title
        checker = IsolationChecker()
        checker.feed(page)
        assert checker.leaks == [], (title, checker.leaks)
    details = pages["image details"]
    assert f"{LABELS + 3 - 100:,} more labels not shown." in details
    assert "k" * 120 not in details.replace("k" * 10_000, "")  # the key: clipped, then capped
    assert "k" * 10_001 not in details
    assert "&lt;script&gt;alert(&#x27;value&#x27;)&lt;/script&gt;" in details
    assert LONG_ARCHITECTURE in details


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_long_names_and_hostile_text_never_widen_a_page_beyond_the_window(
    pusher, sync, signed_in_page, live_server
):
    hostile = push_hostile(pusher)
    sync()
    DeletionRecord.objects.create(
        username="ops", repository=LONG_NAME, digest=hostile.image.digest, kind="image", size=1
    )
    page = signed_in_page()
    page.set_viewport_size({"width": 1280, "height": 900})
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    urls = [
        reverse("repositories"),
        reverse("image_management", args=["default", LONG_NAME]),
        reverse("image_detail", args=["default", LONG_NAME, hostile.image.digest]),
        reverse("image_detail", args=["default", LONG_NAME, hostile.index.digest]),
        reverse("delete_preview", args=["default", LONG_NAME]) + f"?digest={hostile.index.digest}",
        reverse("deletion_history"),
    ]
    widths = {}
    for url in urls:
        page.goto(url)
        page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
        widths[url] = page.evaluate("document.documentElement.scrollWidth")

    too_wide = {n: width for n, width in enumerate(widths.values()) if width > 1280}
    assert too_wide == {}
    assert dialogs == []
    # The right-to-left override stays inside its <bdi>: the text after it reads in order.
    page.goto(reverse("image_detail", args=["default", LONG_NAME, hostile.image.digest]))
    isolated = page.evaluate(
        """() => [...document.querySelectorAll('.key-values dd')]
              .filter(dd => dd.textContent.includes('\\u202e'))
              .every(dd => dd.querySelector('bdi, [dir=auto]'))"""
    )
    assert isolated
