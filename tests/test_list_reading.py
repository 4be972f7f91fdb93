"""Reading the list and the details (issue 13): times in two units, exact bytes on hover,
tags clipped in the middle, one word for referrers, no Stale badge on attestations, a child
found by its digest shown in its opened index, names that say which item a control is for,
the Stale filter, and the details' pull command, shared layers and Delete button."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from django.urls import reverse
from django.utils import timezone

from devtools.pusher import random_layer
from hubimages.models import Manifest
from hubimages.web.templatetags import ago, middle

REPO = "acme/team/api"
LIST = f"/r/default/{REPO}/"


@pytest.fixture
def pushed(pusher, sync):
    """A signed multi-arch index with attestations, and an old image sharing its base."""
    base = random_layer(4_000, "base")
    amd = pusher.push_image(REPO, layers=[base, random_layer(1_500, "amd")])
    arm = pusher.push_image(REPO, layers=[base, random_layer(2_500, "arm")], architecture="arm64")
    index = pusher.push_index(REPO, tag="1.0", images=[amd, arm], attestations=True)
    pusher.tag(REPO, "latest", index)
    signature = pusher.push_cosign_signature(REPO, index)
    old = pusher.push_image(REPO, tag="0.9", layers=[base, random_layer(700, "old")])
    sync()
    Manifest.objects.filter(repository__name=REPO).update(
        pushed_at=timezone.now() - timedelta(days=500), pushed_at_estimated=False
    )
    return SimpleNamespace(amd=amd, arm=arm, index=index, signature=signature, old=old, base=base)


def test_times_read_in_two_units():
    now = timezone.now()

    assert ago(now - timedelta(days=365 + 62)) == "1\xa0y 2\xa0mo ago"
    assert ago(now - timedelta(days=3, hours=4, minutes=1)) == "3\xa0d 4\xa0h ago"
    assert ago(now - timedelta(minutes=3, seconds=10)) == "3\xa0min ago"
    assert ago(now - timedelta(hours=5)) == "5\xa0h ago"
    assert ago(now - timedelta(seconds=20)) == "just now"


def test_long_tags_are_clipped_in_the_middle_so_their_ending_shows():
    tag = "sha256-" + "a" * 64 + ".sig"

    assert middle(tag) == "sha256-" + "a" * 19 + "…" + "a" * 9 + ".sig"
    assert len(middle(tag)) == 40 and middle("1.0") == "1.0"


def test_every_size_shows_its_exact_bytes_on_hover_and_times_their_date(pushed, viewer_client):
    page = viewer_client.get(LIST).content.decode()

    sizes = re.findall(r'<td class="col-size"><span class="size" title="([\d,]+) bytes">', page)
    assert len(sizes) >= 2 + 4 + 1  # two rows, the index's children, its referrer
    old = Manifest.objects.get(digest=pushed.old.digest)
    assert f'<span class="size" title="{old.total_size:,} bytes">' in page
    assert re.search(r'title="\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC">1\xa0y 4\xa0mo ago</time>', page)


def test_attestations_take_their_index_s_status_and_referrers_are_called_referrers(
    pushed, viewer_client
):
    """SPEC §2: images, attestations and referrers take the status of their index or
    subject wherever they are shown."""
    page = viewer_client.get(LIST).content.decode()

    attestations = re.findall(r'<tr class="row-attestation">.*?</tr>', page, re.S)
    assert len(attestations) == 2
    assert all("badge-stale" in row for row in attestations)  # as their stale index
    # two rows, two images, two attestations, the signature
    assert page.count("badge-stale") == 2 + 2 + 2 + 1
    assert "<bdi>Referrer" in page and "Artifact" not in page


def test_a_childs_digest_opens_its_index_on_the_child_highlighted(pushed, viewer_client):
    page = viewer_client.get(LIST, {"search": pushed.arm.hex[:10]}).content.decode()

    assert '<details class="children" open>' in page
    matches = re.findall(
        r'<tr class="row-image search-match" aria-current="true">.*?</tr>', page, re.S
    )
    assert len(matches) == 1 and pushed.arm.digest in matches[0]
    assert pushed.amd.digest in page and page.count("search-match") == 1
    # Without a search, indexes stay closed.
    assert '<details class="children" open>' not in viewer_client.get(LIST).content.decode()


def test_check_boxes_and_index_toggles_say_which_item_they_are_for(pushed, viewer_client):
    page = viewer_client.get(LIST).content.decode()

    short = f"sha256:{pushed.index.hex[:12]}"
    assert f'aria-label="Select 1.0, latest (image index {short})"' in page
    assert f'<span class="visually-hidden"> in 1.0, latest ({short})</span></summary>' in page
    assert f'aria-label="Select 0.9 (image sha256:{pushed.old.hex[:12]})"' in page


def test_the_stale_filter_is_on_the_page_and_in_the_url(pushed, viewer_client):
    Manifest.objects.filter(digest=pushed.old.digest).update(pushed_at=timezone.now())

    page = viewer_client.get(LIST, {"status": "stale"}).content.decode()

    assert '<select id="status" name="status"' in page
    assert '<option value="stale" selected>Stale</option>' in page
    assert re.findall(r'name="digest" value="(sha256:\w+)"', page) == [pushed.index.digest]
    assert "status=stale" in re.search(r'<a class="sort" href="([^"]+)"', page)[1]


def test_image_details_offer_the_pull_command_the_shared_layers_and_delete(
    pushed, deleter_client, viewer_client, settings
):
    settings.REGISTRY_URL = "https://registry.example.com:5000"
    url = reverse("image_detail", args=["default", REPO, pushed.old.digest])

    page = deleter_client.get(url).content.decode()

    command = f"docker pull registry.example.com:5000/{REPO}@{pushed.old.digest}"
    assert f'<code id="pull-command">{command}</code>' in page
    assert f'data-copy="{command}"' in page
    # The base layer is also the index's two images'; the old build's own layer is its alone.
    base, own = pushed.old.layer_digests
    rows = re.findall(r"<tr>\s*<td>\d+</td>.*?</tr>", page, re.S)
    assert "2 other manifests" in next(row for row in rows if base[:19] in row)
    assert "only this one" in next(row for row in rows if own[:19] in row)
    assert "1 of 2 layers is shared with other manifests" in page
    # Delete opens the preview of this item.
    preview = reverse("delete_preview", args=["default", REPO])
    assert (
        f'<form class="details-actions" method="post" action="{preview}" hx-post="{preview}"'
        in (page)
    )
    assert f'<input type="hidden" name="digest" value="{pushed.old.digest}">' in page
    assert "details-actions" not in viewer_client.get(url).content.decode()


def test_the_details_of_an_old_image_show_their_build_time_in_two_units(pushed, viewer_client):
    built = datetime.now(UTC) - timedelta(days=800)
    Manifest.objects.filter(digest=pushed.old.digest).update(created_at=built)

    page = viewer_client.get(reverse("image_detail", args=["default", REPO, pushed.old.digest]))

    assert "2\xa0y 2\xa0mo ago" in page.content.decode()
