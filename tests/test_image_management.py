"""The Image Management list of one repository (SPEC §3): rows, filter, sort, search,
pagination, staleness, HTMX partials and the live-refresh poll."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from django.urls import reverse
from django.utils import timezone

from devtools.pusher import random_layer
from hubimages.inventory import status
from hubimages.models import IndexEntry, Manifest, Repository, Tag
from tests.builders import digest_for, finish, manifest

REPO = "acme/team/api"
LIST_URL = f"/r/default/{REPO}/"


def row_digests(response) -> list[str]:
    """The top-level rows, in order (only they carry a selection check box)."""
    return re.findall(r'name="digest" value="(sha256:[0-9a-f]{64})"', response.content.decode())


@pytest.fixture
def pushed(pusher, sync):
    """A tagged multi-arch index with attestations (one child tagged too), a tagged image
    and an untagged one (its tag moved on), pushed to a real registry and synced."""
    amd = pusher.push_image(REPO, layers=[random_layer(1500, "amd")])
    arm = pusher.push_image(REPO, layers=[random_layer(2500, "arm")], architecture="arm64")
    pusher.tag(REPO, "arm64-edge", arm)
    index = pusher.push_index(REPO, tag="1.0", images=[amd, arm], attestations=True)
    pusher.tag(REPO, "latest", index)
    loose = pusher.push_image(REPO, tag="solo-2.1", layers=[random_layer(700, "loose")])
    sync()
    solo = pusher.push_image(REPO, tag="solo-2.1", layers=[random_layer(53_200, "s")])
    sync()
    return SimpleNamespace(amd=amd, arm=arm, index=index, solo=solo, loose=loose)


def test_the_list_shows_one_row_per_top_level_manifest_with_its_columns(pushed, viewer_client):
    response = viewer_client.get(LIST_URL)

    assert response.status_code == 200
    page = response.content.decode()
    assert set(row_digests(response)) == {
        pushed.index.digest,
        pushed.solo.digest,
        pushed.loose.digest,
    }
    assert "3 items" in page
    # Short digest, full one on hover and in the copy button.
    assert f'title="{pushed.index.digest}"><code>sha256:{pushed.index.hex[:12]}</code>' in page
    assert f'data-copy="{pushed.index.digest}"' in page
    assert ">Image index</td>" in page and ">Image</td>" in page
    assert '<bdi class="platform">linux/amd64</bdi> <bdi class="platform">linux/arm64</bdi>' in page
    assert 'title="latest">latest</span>' in page and 'title="solo-2.1">solo-2.1</span>' in page
    # The index opens in place onto its images and attestations (a <details>, no page load).
    assert re.search(
        r"<summary>2 images, 2 attestations<span class=\"visually-hidden\"> in 1.0, latest "
        rf"\(sha256:{pushed.index.hex[:12]}\)</span></summary>",
        page,
    )
    assert pushed.amd.digest in page and "Attestation" in page and "unknown/unknown" in page
    # Sizes human-readable, times relative with the exact time on hover, never pulled "—".
    assert f"{(53_200 + pushed.solo.config_size) / 1000:.1f} kB" in page
    assert re.search(r'<time datetime="[^"]+Z" title="\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC', page)
    assert "≈" in page  # synced for the first time: push times are estimates
    assert 'title="Never pulled">—' in page
    # No build time, no push or pull seen: dated only by when the sync first saw them.
    assert "badge-active" not in page and "badge-stale" not in page
    assert page.count("Unknown — watching since") >= 3 + 2  # the rows, the index's images


FILTERS = {
    "all": {"index", "solo", "loose"},
    "tagged": {"index", "solo"},
    "untagged": {"loose"},
    "index": {"index"},
    "image": {"solo", "loose"},
}
SEARCHES = {
    "solo": {"solo"},
    "SOLO-2": {"solo"},
    "1.": {"index"},
    "arm64-ed": {"index"},  # a child's tag finds its index
    "nothing-like-this": set(),
}


def test_each_filter_keeps_only_its_rows(pushed, viewer_client):
    for filter_, expected in FILTERS.items():
        response = viewer_client.get(LIST_URL, {"filter": filter_}, follow=True)

        assert set(row_digests(response)) == {getattr(pushed, n).digest for n in expected}, filter_
        assert f'<option value="{filter_}" selected>' in response.content.decode()


def test_search_matches_tag_substrings_and_a_childs_tag_finds_its_index(pushed, viewer_client):
    for search, expected in SEARCHES.items():
        response = viewer_client.get(LIST_URL, {"search": search})

        assert set(row_digests(response)) == {getattr(pushed, n).digest for n in expected}, search


def test_the_status_narrows_to_stale_active_or_unknown_items_and_stays_in_the_links(
    pushed, viewer_client
):
    Manifest.objects.filter(digest=pushed.loose.digest).update(
        pushed_at=timezone.now() - timedelta(days=400), last_pulled_at=None
    )
    Manifest.objects.filter(digest=pushed.solo.digest).update(last_pulled_at=timezone.now())

    stale = viewer_client.get(LIST_URL, {"status": "stale"})
    active = viewer_client.get(LIST_URL, {"status": "active", "sort": "size"})
    unknown = viewer_client.get(LIST_URL, {"status": "unknown"})
    junk = viewer_client.get(LIST_URL, {"status": "rotten"}, follow=True)

    assert row_digests(stale) == [pushed.loose.digest]
    assert row_digests(active) == [pushed.solo.digest]  # a pull dates it
    assert row_digests(unknown) == [pushed.index.digest]
    assert "status=active" in active.content.decode()  # sort links keep it
    assert '<option value="unknown" selected>Unknown</option>' in unknown.content.decode()
    assert len(row_digests(junk)) == 3


def test_search_and_filter_combine(pushed, viewer_client):
    response = viewer_client.get(LIST_URL, {"search": "1.", "filter": "image"})

    assert row_digests(response) == []


def test_search_matches_digest_prefixes_with_or_without_the_algorithm(pushed, viewer_client):
    for prefix in (pushed.loose.hex[:10], pushed.loose.digest[:17]):
        assert row_digests(viewer_client.get(LIST_URL, {"search": prefix})) == [pushed.loose.digest]
    # A child's digest shows its index.
    child = viewer_client.get(LIST_URL, {"search": pushed.arm.hex[:12]})
    assert row_digests(child) == [pushed.index.digest]


def test_a_search_without_matches_says_so_and_offers_the_whole_list(pushed, viewer_client):
    page = viewer_client.get(LIST_URL, {"search": "<b>nope</b>"}).content.decode()
    filtered = viewer_client.get(
        LIST_URL, {"search": "SOLO", "filter": "index", "status": "active"}
    ).content.decode()

    assert (
        "No tag contains “<bdi>&lt;b&gt;nope&lt;/b&gt;</bdi>” and no digest starts with it in "
        f'<bdi class="name">{REPO}</bdi>.'
    ) in page
    assert f'<a href="{LIST_URL}">Show everything</a>' in page
    assert "Search every item" not in page
    assert "(Filter by: Image index · Status: Active)." in filtered
    assert f'<a href="{LIST_URL}?search=SOLO">Search every item</a>' in filtered
    assert row_digests(viewer_client.get(LIST_URL, {"search": "SOLO"})) == [pushed.solo.digest]


# -- sorting ---------------------------------------------------------------------------------


@pytest.fixture
def sortable(db):
    """Four images with chosen sizes and times; b and d were never pulled."""
    repo = Repository.objects.create(name="sort/me")
    t = lambda *args: datetime(*args, tzinfo=UTC)  # noqa: E731
    rows = {
        "a": manifest(repo, "a", size=3000, pushed_at=t(2026, 1, 10), last_pulled_at=t(2026, 5, 1)),
        "b": manifest(repo, "b", size=1000, pushed_at=t(2026, 3, 10)),
        "c": manifest(repo, "c", size=2000, pushed_at=t(2026, 2, 10), last_pulled_at=t(2026, 4, 1)),
        "d": manifest(repo, "d", size=500, pushed_at=t(2025, 12, 1)),
    }
    finish(repo)
    return SimpleNamespace(url="/r/default/sort/me/", rows=rows)


@pytest.mark.parametrize(
    ("sort", "expected"),
    [
        ("size", "dbca"),
        ("-size", "acbd"),
        ("last_pushed", "dacb"),
        ("-last_pushed", "bcad"),
        (None, "bcad"),  # the default: last pushed, newest first
        ("last_pulled", "ca" + "bd"),
        ("-last_pulled", "ac" + "db"),
    ],
)
def test_sorting_orders_rows_both_ways_with_never_pulled_last(
    sortable, viewer_client, sort, expected
):
    params = {"sort": sort} if sort else {}

    digests = row_digests(viewer_client.get(sortable.url, params, follow=True))

    assert digests[:2] == [sortable.rows[key].digest for key in expected[:2]]
    assert set(digests[2:]) == {sortable.rows[key].digest for key in expected[2:]}
    if sort in ("size", "-size", "last_pushed", "-last_pushed"):
        assert digests == [sortable.rows[key].digest for key in expected]


def test_a_column_title_sorts_then_reverses_and_shows_the_direction(sortable, viewer_client):
    unsorted = viewer_client.get(sortable.url).content.decode()
    assert re.search(
        r'aria-sort="none" class="col-size">\s*<a class="sort" href="[^"]*sort=-size"', unsorted
    )
    assert 'aria-sort="descending" class="col-last_pushed"' in unsorted

    descending = viewer_client.get(sortable.url, {"sort": "-size"}).content.decode()
    assert re.search(
        r'aria-sort="descending" class="col-size">\s*<a class="sort" href="[^"]*sort=size"',
        descending,
    )
    assert 'aria-sort="none" class="col-last_pushed"' in descending

    ascending = viewer_client.get(sortable.url, {"sort": "size"}).content.decode()
    assert re.search(
        r'aria-sort="ascending" class="col-size">\s*<a class="sort" href="[^"]*sort=-size"',
        ascending,
    )


def test_bad_query_values_redirect_to_the_defaults(sortable, viewer_client):
    default = row_digests(viewer_client.get(sortable.url))

    for params in (
        {"sort": "id; DROP TABLE hubimages_manifest"},
        {"sort": "pushed_at"},
        {"filter": "<script>"},
        {"per_page": "1000000"},
        {"per_page": "-1"},
        {"page": "x"},
        {"search": "a" * 5000},
        {"since": "not-a-number"},
    ):
        response = viewer_client.get(sortable.url, params)
        assert response.status_code == 302, params
        if "search" not in params:
            assert response["Location"] == sortable.url, params
            assert row_digests(viewer_client.get(response["Location"])) == default, params
        else:
            assert response["Location"] == f"{sortable.url}?search={'a' * 200}"


# -- staleness -------------------------------------------------------------------------------


def test_stale_is_counted_in_calendar_months(db, viewer_client, monkeypatch, settings):
    """With now = 2026-08-31 and 6 months, the cutoff is 2026-02-28 (not 180 days back,
    which would be 2026-03-04)."""
    settings.STALE_AFTER_MONTHS = 6
    now = datetime(2026, 8, 31, 12, 0, tzinfo=UTC)
    monkeypatch.setattr(status, "timezone", SimpleNamespace(now=lambda: now))
    repo = Repository.objects.create(name="stale/check")
    old = manifest(repo, "old", pushed_at=datetime(2026, 2, 28, 11, 59, tzinfo=UTC))
    march = manifest(repo, "march", pushed_at=datetime(2026, 3, 2, tzinfo=UTC))
    pulled = manifest(
        repo,
        "pulled",
        pushed_at=datetime(2024, 1, 1, tzinfo=UTC),
        last_pulled_at=datetime(2026, 8, 1, tzinfo=UTC),
    )
    finish(repo)

    page = viewer_client.get("/r/default/stale/check/").content.decode()

    badges = dict(re.findall(r'value="(sha256:[0-9a-f]{64})".*?badge-(stale|active)', page, re.S))
    assert badges == {old.digest: "stale", march.digest: "active", pulled.digest: "active"}


# -- pagination ------------------------------------------------------------------------------


@pytest.fixture
def thirty(db):
    repo = Repository.objects.create(name="many")
    start = datetime(2026, 6, 1, tzinfo=UTC)
    rows = [manifest(repo, f"m{i}", pushed_at=start - timedelta(hours=i)) for i in range(30)]
    finish(repo)
    return [row.digest for row in rows]  # newest first: the default order


def test_pages_split_the_list_and_keep_the_query_in_their_links(thirty, viewer_client):
    response = viewer_client.get("/r/default/many/", {"per_page": 10, "page": 2})

    page = response.content.decode()
    assert row_digests(response) == thirty[10:20]
    assert "30 items, showing 11–20" in page
    assert "Page 2 of 3" in page
    assert 'href="/r/default/many/?per_page=10&amp;page=3"' in page
    assert 'href="/r/default/many/?per_page=10"' in page  # back to page 1
    assert '<option value="10" selected>' in page


@pytest.mark.parametrize(
    ("page", "where", "expected"),
    # Paginator.get_page: junk gives the first page, any number out of range the last.
    [
        ("99", "?per_page=10&page=3", slice(20, 30)),
        ("abc", "?per_page=10", slice(0, 10)),
        ("-3", "?per_page=10&page=3", slice(20, 30)),
        ("0", "?per_page=10&page=3", slice(20, 30)),
        ("1", "?per_page=10", slice(0, 10)),
    ],
)
def test_a_bad_page_number_redirects_to_a_valid_page_with_the_url_corrected(
    thirty, viewer_client, page, where, expected
):
    response = viewer_client.get("/r/default/many/", {"per_page": 10, "page": page})

    assert response.status_code == 302
    assert response["Location"] == f"/r/default/many/{where}"
    assert row_digests(viewer_client.get(response["Location"])) == thirty[expected]


def test_with_htmx_a_page_past_the_end_shows_the_last_and_corrects_the_address(
    thirty, viewer_client
):
    response = viewer_client.get(
        "/r/default/many/", {"per_page": 10, "page": 7}, headers={"HX-Request": "true"}
    )

    assert response.status_code == 200
    assert row_digests(response) == thirty[20:30]
    assert response["HX-Replace-Url"] == "/r/default/many/?per_page=10&page=3"


def test_the_pages_are_numbered_with_the_far_ones_elided(db, viewer_client):
    repo = Repository.objects.create(name="long")
    start = datetime(2026, 6, 1, tzinfo=UTC)
    for i in range(200):
        manifest(repo, f"l{i}", pushed_at=start - timedelta(hours=i))
    finish(repo)

    page = viewer_client.get("/r/default/long/", {"per_page": 10, "page": 10}).content.decode()

    numbers = re.search(r'<ol class="page-numbers">.*?</ol>', page, re.S)[0]
    links = re.findall(r'href="/r/default/long/\?per_page=10(?:&amp;page=(\d+))?"', numbers)
    assert links == ["", "8", "9", "11", "12", "20"]  # page 1 is the bare URL
    assert (
        '<span aria-current="page"><span class="visually-hidden">Page </span>10</span>' in numbers
    )
    assert numbers.count("…") == 2


def test_empty_and_default_values_are_dropped_from_the_url(thirty, viewer_client):
    """What the form sends without JavaScript, defaults and all, lands on the short URL."""
    response = viewer_client.get(
        "/r/default/many/",
        {"search": "", "filter": "all", "status": "", "per_page": 25, "sort": "-last_pushed"},
    )
    narrowed = viewer_client.get("/r/default/many/", {"search": " m1 ", "status": "active"})

    assert (response.status_code, response["Location"]) == (302, "/r/default/many/")
    assert narrowed["Location"] == "/r/default/many/?search=m1&status=active"


def test_an_unknown_page_size_falls_back_to_the_default(thirty, viewer_client):
    response = viewer_client.get("/r/default/many/", {"per_page": 7}, follow=True)

    assert len(row_digests(response)) == 25


# -- query count -----------------------------------------------------------------------------


def _fill(name: str, count: int) -> Repository:
    """`count` tagged indexes, each with two tagged images and a signature, in bulk."""
    repo = Repository.objects.create(name=name)
    when = datetime(2026, 6, 1, tzinfo=UTC)
    fields = dict(repository=repo, size=500, first_seen_at=when, pushed_at=when, media_type="x")
    rows = Manifest.objects.bulk_create(
        Manifest(digest=digest_for(f"{name}{i}{part}"), kind=kind, subject_digest=subject, **fields)
        for i in range(count)
        for part, kind, subject in (
            ("i", "index", ""),
            ("a", "image", ""),
            ("b", "image", ""),
            ("s", "artifact", digest_for(f"{name}{i}i")),
        )
    )
    IndexEntry.objects.bulk_create(
        IndexEntry(index=rows[i], child=rows[i + j], position=j, architecture="amd64")
        for i in range(0, len(rows), 4)
        for j in (1, 2)
    )
    Tag.objects.bulk_create(
        Tag(repository=repo, name=f"t{i}", manifest=row) for i, row in enumerate(rows)
    )
    finish(repo)
    return repo


@pytest.mark.parametrize("per_page", [10, 100])
def test_the_list_needs_the_same_few_queries_whatever_the_page_size(
    db, deleter_client, django_assert_max_num_queries, per_page
):
    _fill("big", 120)
    _fill("small", 10)

    for name in ("big", "small"):
        with django_assert_max_num_queries(13):
            response = deleter_client.get(f"/r/default/{name}/", {"per_page": per_page})
        assert response.status_code == 200
        assert "2 images, 1 referrer" in response.content.decode()
    assert len(row_digests(response)) == 10


# -- HTMX ------------------------------------------------------------------------------------


def test_htmx_requests_get_only_the_rows_region(sortable, viewer_client):
    response = viewer_client.get(sortable.url, {"sort": "size"}, headers={"HX-Request": "true"})

    page = response.content.decode()
    assert page.lstrip().startswith('<section id="rows"')
    assert "<html" not in page and 'id="list-controls"' not in page
    assert '<input type="hidden" name="sort" value="size" form="list-controls">' in page
    assert "HX-Request" in response["Vary"]
    assert row_digests(response)[0] == sortable.rows["d"].digest


def test_restoring_history_gets_the_whole_page(sortable, viewer_client):
    response = viewer_client.get(
        sortable.url, headers={"HX-Request": "true", "HX-History-Restore-Request": "true"}
    )

    assert "<html" in response.content.decode()


def test_the_poll_answers_no_content_until_the_repository_changes(sortable, viewer_client):
    repo = Repository.objects.get(name="sort/me")
    htmx = {"HX-Request": "true"}
    page = viewer_client.get(sortable.url, {"sort": "size"}).content.decode()
    assert f'hx-get="{sortable.url}?sort=size&amp;since={repo.revision}"' in page
    # No hx-trigger filter (htmx runs without eval under the CSP): a listener holds the poll.
    assert 'hx-trigger="every 5s, focus from:window" data-poll' in page

    unchanged = viewer_client.get(
        sortable.url, {"sort": "size", "since": repo.revision}, headers=htmx
    )
    assert unchanged.status_code == 204

    Repository.objects.filter(pk=repo.pk).update(revision=repo.revision + 1)
    changed = viewer_client.get(
        sortable.url, {"sort": "size", "since": repo.revision}, headers=htmx
    )
    assert changed.status_code == 200
    assert f"since={repo.revision + 1}" in changed.content.decode()


# -- access and the selection form -----------------------------------------------------------


def test_the_list_requires_signing_in(client, sortable):
    response = client.get(sortable.url)

    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next={sortable.url}"


def test_an_unknown_repository_is_not_found(db, viewer_client):
    assert viewer_client.get("/r/default/no/such/").status_code == 404


def test_only_users_who_may_delete_see_the_preview_button(sortable, viewer_client, deleter_client):
    for web, shown in ((viewer_client, False), (deleter_client, True)):
        page = web.get(sortable.url).content.decode()
        # POST: a page of 100 selected digests would not fit in a URL.
        assert f'<form id="selection" method="post" action="{sortable.url}-/delete/"' in page
        assert len(re.findall(r'type="checkbox" name="digest"', page)) == 4
        assert ("Preview and delete" in page) is shown


def test_the_list_only_accepts_get(sortable, viewer_client):
    assert viewer_client.post(sortable.url).status_code == 405


def test_the_detail_link_of_each_row_is_real(sortable, viewer_client):
    row = sortable.rows["a"]
    page = viewer_client.get(sortable.url).content.decode()

    url = reverse("image_detail", args=["default", "sort/me", row.digest])
    assert f'href="{url}" hx-get="{url}" hx-target="#panel"' in page
