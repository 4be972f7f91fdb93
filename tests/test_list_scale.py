"""The Image Management list at Docker Hub size (issue 14): counts that cost nothing or say
they are estimates, and a search that reads an index on either database."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.utils import timezone

from hubimages.inventory import lists, status
from hubimages.models import Manifest, Repository
from tests.builders import digest_for, finish, manifest

pytestmark = pytest.mark.django_db

REPO = "big/app"
URL = f"/r/default/{REPO}/"


@pytest.fixture
def repository():
    """40 images, every other one tagged `build-N`, the older half stale."""
    repository = Repository.objects.create(name=REPO)
    now = timezone.now()
    for n in range(40):
        age = timedelta(days=400 if n < 20 else 3)
        tags = [f"build-{n}"] if n % 2 == 0 else []
        manifest(repository, f"image-{n}", pushed_at=now - age - timedelta(minutes=n), tags=tags)
    finish(repository)
    repository.refresh_from_db()
    return repository


def test_the_list_counts_come_from_the_stored_counts_without_counting_rows(
    repository, viewer_client, django_assert_max_num_queries
):
    assert repository.list_counts == {
        "all": 40,
        "tagged": 20,
        "untagged": 20,
        "index": 0,
        "image": 40,
    }
    with django_assert_max_num_queries(12) as queries:
        page = viewer_client.get(URL, {"filter": "tagged"}).content.decode()

    assert "20 items" in page and "about" not in page
    assert not any("COUNT(" in q["sql"].upper() for q in queries.captured_queries)


def test_a_big_list_with_a_status_shows_an_estimated_count_that_says_so(
    repository, viewer_client, monkeypatch
):
    monkeypatch.setattr(lists, "COUNT_EXACTLY_UP_TO", 5)
    monkeypatch.setattr(lists, "ESTIMATE_SAMPLE", 10)

    page = viewer_client.get(URL, {"status": "stale", "per_page": 10}).content.decode()

    # The ten rows of lowest digest hold some share of stale ones; 40 × that share, said so.
    sample = sorted(Manifest.objects.values_list("digest", "pushed_at"))[:10]
    stale = sum(1 for _, pushed in sample if pushed < status.stale_cutoff())
    assert f"about {40 * stale // 10} items" in page
    assert re.search(r"Page 1 of about \d+", page)
    exact = lists.count_top_level(repository, lists.ListQuery(status="stale"))
    assert exact.estimated


def test_a_small_list_with_a_status_is_counted_exactly(repository, viewer_client):
    page = viewer_client.get(URL, {"status": "stale"}).content.decode()

    assert "20 items" in page and "about" not in page


def test_search_matches_tags_by_substring_on_either_database(repository, viewer_client):
    by_prefix = viewer_client.get(URL, {"search": "BUILD-3"}).content.decode()
    assert "build-30" in by_prefix and "build-32" in by_prefix and "build-2" not in by_prefix

    by_substring = viewer_client.get(URL, {"search": "ild-38"}).content.decode()
    assert "1 item" in by_substring and "build-38" in by_substring


@pytest.mark.parametrize("ids_limit", [0, 2000], ids=["broad", "narrow"])
def test_a_broad_and_a_narrow_search_find_the_same_rows(repository, monkeypatch, ids_limit):
    # Past SEARCH_IDS_LIMIT matches the search is a test per row rather than a list of ids.
    monkeypatch.setattr(lists, "SEARCH_IDS_LIMIT", ids_limit)
    digest = Manifest.objects.get(tags__name="build-4").digest

    def found(text: str) -> set[str]:
        rows = lists.top_level(repository, lists.ListQuery(search=text))
        return set(rows.values_list("digest", flat=True))

    assert found("build-3") == set(
        Manifest.objects.filter(tags__name__startswith="build-3").values_list("digest", flat=True)
    )
    assert found(digest[7:19]) == found(digest[:19]) == {digest}


def test_a_status_over_a_huge_list_is_estimated_without_counting_its_rows(
    repository, viewer_client, monkeypatch
):
    monkeypatch.setattr(lists, "ESTIMATED_FROM", 5)
    monkeypatch.setattr(lists, "ESTIMATE_SAMPLE", 40)  # the whole list: exact share
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        page = viewer_client.get(URL, {"status": "active"}).content.decode()

    assert "about 20 items" in page  # 40 × 20/40, from the sample of 40
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    assert len(counts) == 1 and " IN (" in counts[0]  # the sample's, not the list's


def test_stale_items_newest_pull_first_are_the_stale_rows_in_that_order(repository):
    # Pulls before and after the cutoff, and never: the stale ones, newest pull first, never
    # pulled last, on either database (PostgreSQL reads them as one index range).
    now = timezone.now()
    for n, days in enumerate([1, 250, 500, None, 300, 2] * 6):
        Manifest.objects.filter(digest=digest_for(f"image-{n}")).update(
            last_pulled_at=None if days is None else now - timedelta(days=days, minutes=n)
        )
    query = lists.ListQuery(status="stale", sort="-last_pulled")

    listed = list(lists.top_level(repository, query).values_list("digest", flat=True))

    stale = [m for m in Manifest.objects.all() if status.is_stale(m)]
    never = datetime.min.replace(tzinfo=UTC)
    expected = sorted(stale, key=lambda m: (m.last_pulled_at or never, m.pk), reverse=True)
    assert listed == [m.digest for m in expected]
    assert any(m.last_pulled_at is None for m in stale) and any(m.last_pulled_at for m in stale)
    if connection.vendor == "postgresql":
        # 40 rows: a scan and a sort would be cheaper, so the planner is told to avoid both.
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute("SET LOCAL enable_sort = off")
        plan = lists.top_level(repository, query).explain()
        assert "manifest_by_pulled_or_never" in plan and "Sort" not in plan


def estimated_as(monkeypatch, value: int) -> None:
    """Lists counted as `value`, an estimate (as a status over a huge list is)."""
    monkeypatch.setattr(lists, "count_top_level", lambda *_, **__: lists.ListCount(value, True))


def test_an_estimate_that_falls_short_still_pages_on_to_the_last_row(
    repository, viewer_client, monkeypatch
):
    estimated_as(monkeypatch, 10)  # 20 are active: one page by the estimate, two in truth

    first = viewer_client.get(URL, {"status": "active", "per_page": 10}).content.decode()
    second = viewer_client.get(URL, {"status": "active", "per_page": 10, "page": 2})

    assert "about 10 items" in first and 'rel="next"' in first and "build-20" in first
    assert second.status_code == 200
    second = second.content.decode()
    assert "build-30" in second and "build-38" in second and "build-20" not in second
    assert "showing 11–20" in second and 'rel="next"' not in second


def test_a_page_past_an_estimate_that_was_too_high_says_the_list_ended(
    repository, viewer_client, monkeypatch
):
    estimated_as(monkeypatch, 40)  # 20 are active: two pages, not four

    second = viewer_client.get(URL, {"status": "active", "per_page": 10, "page": 2})
    third = viewer_client.get(URL, {"status": "active", "per_page": 10, "page": 3})

    assert 'rel="next"' not in second.content.decode()  # the rows ended, whatever the estimate
    assert third.status_code == 200
    assert "The list ends before this page (its count was an estimate)." in third.content.decode()
    # Beyond twice the estimate, a page number is junk: the last page by the estimate.
    assert viewer_client.get(URL, {"status": "active", "per_page": 10, "page": 9}).url == (
        f"{URL}?status=active&per_page=10&page=4"
    )
