"""The Storage page (SPEC §10): its figures, the bar chart and the table behind it, the
largest items, the most shared layers, the history chart, sorting and paging, and what
it costs."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from hubimages.lib.formatting import human_size
from hubimages.models import Blob, Manifest, ManifestBlob, Repository, StorageSample, SyncRun
from hubimages.storage import figures as storage_figures
from hubimages.web import charts
from tests.builders import digest_for, finish, manifest

HTMX = {"HTTP_HX_REQUEST": "true"}


def table_names(page: str) -> list[str]:
    table = page[page.index('<table class="list storage-table">') :]
    table = table[: table.index("</tbody>")]
    return re.findall(r'<th scope="row"><a class="repository-name" href="[^"]+">([^<]+)</a>', table)


def bar_names(page: str) -> list[str]:
    return re.findall(r'<text x="0" y="\d+" class="bar-label">([^<]+)</text>', page)


@pytest.fixture
def registry_rows(db):
    """Three repositories with exact sizes: `big` holds a stale image and an untagged one,
    `small` a stale image whose layer it shares with `mid`'s active image."""
    now = timezone.now()
    old = now - timedelta(days=900)
    big = Repository.objects.create(name="team/big")
    manifest(big, "big-stale", size=50_000, pushed_at=old, tags=["<b>1.0</b>"])
    manifest(big, "big-untagged", size=20_000, pushed_at=now)
    manifest(big, "big-active", size=90_000, pushed_at=now, tags=["latest"])
    finish(big)
    mid = Repository.objects.create(name="team/mid")
    shared = manifest(mid, "mid-active", size=7_000, pushed_at=now, tags=["v1"])
    finish(mid)
    small = Repository.objects.create(name="small")
    stale = manifest(small, "small-stale", size=3_000, pushed_at=old, tags=["v0"])
    layer = Blob.objects.get(manifest_links__manifest=shared)
    ManifestBlob.objects.create(manifest=stale, blob=layer, role="layer", position=1)
    finish(small)
    SyncRun.objects.create(started_at=now, finished_at=now, succeeded=True)
    storage_figures.refresh()  # what the workers do after a sync


def test_the_page_shows_the_registrys_figures(registry_rows, viewer_client):
    figures = storage_figures.figures()
    assert figures["stale_reclaimable_bytes"] == 50_000 + 3_000  # not the shared layer
    assert figures["untagged_bytes"] == 20_000

    page = viewer_client.get("/storage/").content.decode()

    assert "<h1>Storage</h1>" in page
    assert 'aria-current="page">Storage</a>' in page  # the header's link
    for value in ("stored_bytes", "stale_reclaimable_bytes", "untagged_bytes"):
        shown = f'title="{figures[value]:,} bytes">{human_size(figures[value])}</span>'
        assert shown in page
    assert "2 stale items" in page and "1 untagged item" in page
    assert "Deleted, waiting for garbage collection" in page


def test_the_bar_chart_has_a_title_and_the_table_behind_it_the_same_figures(
    registry_rows, viewer_client
):
    figures = {row["name"]: row for row in storage_figures.figures()["repositories"]}

    page = viewer_client.get("/storage/").content.decode()

    chart = page[page.index('<svg class="chart bar-chart"') : page.index("</svg>")]
    assert 'role="img" aria-labelledby="bars-title bars-desc"' in chart
    assert '<title id="bars-title">Storage by repository</title>' in chart
    assert '<desc id="bars-desc">' in chart
    big = figures["team/big"]
    assert (
        f"<title>team/big: {human_size(big['stored_bytes'])} stored, 50.0 kB reclaimable "
        "(stale), 20.0 kB untagged</title>"
    ) in chart
    # Largest first; the largest bar fills the width, the others in proportion.
    assert bar_names(page) == table_names(page) == ["team/big", "small", "team/mid"]
    assert re.search(r'width="100\.00%" height="10" class="bar-stored"', chart)
    table = page[page.index('<table class="list storage-table">') :]
    row = table[table.index(">team/big<") : table.index("</tr>", table.index(">team/big<"))]
    assert f'title="{big["stored_bytes"]:,} bytes">{human_size(big["stored_bytes"])}</td>' in row
    assert '50.0 kB</a> <span class="muted">· 1 item</span>' in row
    assert 'href="/r/default/team/big/?status=stale"' in row
    assert 'href="/r/default/team/big/?filter=untagged"' in row
    assert "All 3 repositories" in table


@pytest.mark.parametrize(
    ("sort", "expected"),
    [
        (None, ["team/big", "small", "team/mid"]),
        ("stored", ["team/mid", "small", "team/big"]),
        ("-reclaimable", ["team/big", "small", "team/mid"]),
        ("reclaimable", ["team/mid", "small", "team/big"]),
        ("-untagged", ["team/big", "small", "team/mid"]),
        ("name", ["small", "team/big", "team/mid"]),
        ("-name", ["team/mid", "team/big", "small"]),
        ("<script>", ["team/big", "small", "team/mid"]),
    ],
)
def test_the_table_sorts_and_the_chart_follows(registry_rows, viewer_client, sort, expected):
    response = viewer_client.get("/storage/", {"sort": sort} if sort else {})

    page = response.content.decode()
    assert response.status_code == 200
    assert table_names(page) == bar_names(page) == expected


def test_htmx_gets_only_the_chart_and_its_table(registry_rows, viewer_client):
    response = viewer_client.get("/storage/", {"sort": "name"}, **HTMX)

    page = response.content.decode()
    assert page.lstrip().startswith('<section id="by-repository"')
    assert "<html" not in page and "Largest items" not in page
    assert table_names(page) == bar_names(page) == ["small", "team/big", "team/mid"]
    assert 'href="/storage/?sort=-name"' in page
    assert "HX-Request" in response["Vary"]


def test_many_repositories_page_through_chart_and_table_together(db, viewer_client):
    now = timezone.now()
    for n in range(45):
        repository = Repository.objects.create(name=f"repo-{n:02}")
        manifest(repository, f"image-{n}", size=1_000 * (n + 1), pushed_at=now, tags=["1"])
        finish(repository)
    storage_figures.refresh()

    page = viewer_client.get("/storage/", {"page": 3}).content.decode()

    assert table_names(page) == bar_names(page) == [f"repo-{n:02}" for n in range(4, -1, -1)]
    assert "Storage by repository, 41 to 45 of 45" in page
    assert "All 45 repositories" in page


def test_the_largest_items_and_the_most_shared_layers(registry_rows, viewer_client):
    page = viewer_client.get("/storage/").content.decode()

    largest = page[page.index('id="largest-title"') : page.index('id="shared-title"')]
    rows = re.findall(r'<a href="/r/default/([^"]+)/-/images/(sha256:[0-9a-f]+)/"', largest)
    assert rows[:3] == [
        ("team/big", digest_for("big-active")),
        ("team/big", digest_for("big-stale")),
        ("team/big", digest_for("big-untagged")),
    ]
    escaped = "&lt;b&gt;1.0&lt;/b&gt;"
    assert f'<span class="tag" title="{escaped}">{escaped}</span>' in largest
    assert "<b>1.0</b>" not in page
    shared = page[page.index('id="shared-title"') : page.index('id="history-title"')]
    layer = digest_for("mid-active:layer")
    assert f'data-copy="{layer}"' in shared
    assert "2 manifests in 2 repositories" in shared
    assert '>small</a>, <a class="name" href="/r/default/team/mid/">team/mid</a>' in shared


def test_the_history_chart_has_a_title_and_a_table(registry_rows, viewer_client):
    now = timezone.now()
    for days, stored in ((3, 1_000_000), (2, 1_500_000), (1, 1_200_000)):
        StorageSample.objects.create(at=now - timedelta(days=days), stored_bytes=stored)
    SyncRun.objects.create(started_at=now, finished_at=now, succeeded=True)
    storage_figures.refresh()  # new figures

    page = viewer_client.get("/storage/").content.decode()

    history = page[page.index('id="history-title"') : page.index('id="gc-title"')]
    assert '<title id="history-chart-title">Stored bytes over time</title>' in history
    assert "3 points from" in history and "the highest at 1.5 MB" in history
    assert '<polyline points="0.0,' in history and " 1000.0," in history
    cells = re.findall(r'<td class="col-size" title="([\d,]+) bytes">', history)
    assert cells == ["1,000,000", "1,500,000", "1,200,000"]


def test_the_history_chart_labels_its_axes_even_when_every_sync_fell_in_one_minute(
    registry_rows, viewer_client
):
    """Both time labels used to read the same minute, and the side only the maximum."""
    at = (timezone.now() - timedelta(hours=1)).astimezone(UTC).replace(second=2, microsecond=0)
    StorageSample.objects.all().delete()
    for seconds, stored in ((0, 1_000_000), (20, 1_500_000), (41, 1_200_000)):
        StorageSample.objects.create(at=at + timedelta(seconds=seconds), stored_bytes=stored)
    SyncRun.objects.create(started_at=at, finished_at=timezone.now(), succeeded=True)
    storage_figures.refresh()

    page = viewer_client.get("/storage/").content.decode()

    history = page[page.index('id="history-title"') : page.index('id="gc-title"')]
    times = re.findall(r'class="tick-label x-tick">([^<]+)</text>', history)
    assert times == [f"{at:%H:%M}:{second}" for second in (10, 20, 30, 40)]
    sizes = re.findall(r'class="tick-label y-tick">([^<]+)</text>', history)
    assert sizes == ["1.5 MB", "1.0 MB", "500.0 kB", "0"]
    assert history.count('class="gridline"') == 3  # 500 kB, 1 MB, 1.5 MB
    assert "times in UTC" in history


@pytest.mark.parametrize(
    ("span", "labels"),
    [
        (timedelta(0), ["Mar 3 14:05:31"]),
        (timedelta(milliseconds=300), ["Mar 3 14:05:31"]),
        (timedelta(seconds=50), ["14:05:45", "14:06:00", "14:06:15"]),
        (timedelta(minutes=7), ["14:06", "14:08", "14:10", "14:12"]),
        (timedelta(hours=20), ["Mar 3 18:00", "Mar 4 00:00", "Mar 4 06:00"]),
        (timedelta(days=6), ["Mar 4", "Mar 6", "Mar 8"]),
        (timedelta(days=400), ["2026-04-23", "2026-07-23", "2026-10-22", "2027-01-21"]),
    ],
)
def test_time_ticks_are_round_few_and_distinct_whatever_the_span(span, labels):
    first = datetime(2026, 3, 3, 14, 5, 31, tzinfo=UTC)

    ticks = charts.time_ticks(first, first + span)

    assert [tick.label for tick in ticks] == labels
    assert len(ticks) <= charts.MAX_X_TICKS
    assert all(0 <= tick.position <= 100 for tick in ticks)


def test_with_no_untagged_item_the_figure_says_so_rather_than_the_0_untagged_items(
    db, viewer_client
):
    repository = Repository.objects.create(name="team/tagged")
    manifest(repository, "tagged", size=1_000, pushed_at=timezone.now(), tags=["v1"])
    finish(repository)
    SyncRun.objects.create(started_at=timezone.now(), finished_at=timezone.now(), succeeded=True)
    storage_figures.refresh()

    page = viewer_client.get("/storage/").content.decode()

    assert '<span class="figure-note">no untagged items</span>' in page
    assert "the 0 untagged" not in page


def test_without_any_full_sync_the_history_says_so(registry_rows, viewer_client):
    page = viewer_client.get("/storage/").content.decode()

    assert "Each full sync adds a point; none has finished yet." in page
    assert "history-chart-title" not in page


def test_an_empty_registry_says_what_to_do(db, viewer_client, settings):
    settings.REGISTRY_URL = "https://registry.example.com"
    storage_figures.refresh()  # the workers compute them for an empty registry too

    page = viewer_client.get("/storage/").content.decode()

    assert "Nothing stored yet" in page and "python manage.py sync_registry" in page
    assert "No sync has finished yet." in page


def test_the_page_costs_the_same_queries_however_many_repositories(
    db, viewer_client, django_assert_max_num_queries
):
    now = timezone.now()

    def add(count: int) -> None:
        for n in range(Repository.objects.count(), count):
            repository = Repository.objects.create(name=f"repo-{n:03}")
            manifest(repository, f"image-{n}", size=1_000, pushed_at=now - timedelta(days=900))
            finish(repository)
        SyncRun.objects.create(started_at=now, finished_at=now, succeeded=True)
        storage_figures.refresh()  # what the workers leave ready

    add(3)
    with CaptureQueriesContext(connection) as few:
        assert viewer_client.get("/storage/").status_code == 200
    add(60)
    with django_assert_max_num_queries(len(few)):
        assert viewer_client.get("/storage/").status_code == 200
    assert Manifest.objects.count() == 60


def test_signing_in_is_required(client, registry_rows):
    response = client.get("/storage/")

    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
