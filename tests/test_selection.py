"""The list's selection (issue 13): kept on the server across search, filter, sort and
pages, "Select all N matching", the running "frees" total the server computes with the plan
engine, and who may use it."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from hubimages.deletion import planning
from hubimages.models import Repository
from tests.builders import finish, manifest

LIST = "/r/default/many/"
SELECTION = f"{LIST}-/selection/"
HTMX = {"HX-Request": "true"}


@pytest.fixture
def thirty(db):
    """30 images, newest first; the even ones tagged `even-N`, all with a layer of their own."""
    repo = Repository.objects.create(name="many")
    start = datetime(2026, 6, 1, tzinfo=UTC)
    rows = [
        manifest(
            repo,
            f"m{i}",
            pushed_at=start - timedelta(hours=i),
            size=1000 + i,
            tags=[f"even-{i}"] if i % 2 == 0 else [],
        )
        for i in range(30)
    ]
    finish(repo)
    return [row.digest for row in rows]


def checked(page: str) -> list[str]:
    return re.findall(r'name="digest" value="(sha256:\w+)" checked', page)


def off_page(page: str) -> list[str]:
    bar = re.search(r'<div class="selection-toolbar" id="selection-bar".*?</div>', page, re.S)[0]
    return re.findall(r'<input type="hidden" name="digest" value="(sha256:\w+)">', bar)


def tick(web, shown: list[str], ticked: list[str], **extra):
    return web.post(SELECTION, {"shown": shown, "digest": ticked, **extra}, headers=HTMX)


def test_ticks_survive_paging_filtering_and_searching(thirty, deleter_client):
    page_one = thirty[:10]
    tick(deleter_client, page_one, [thirty[0], thirty[3]])
    tick(deleter_client, thirty[10:20], [thirty[11]])

    first = deleter_client.get(LIST, {"per_page": 10}).content.decode()
    second = deleter_client.get(LIST, {"per_page": 10, "page": 2}).content.decode()
    searched = deleter_client.get(LIST, {"search": "even-1"}).content.decode()
    untagged = deleter_client.get(LIST, {"filter": "untagged", "sort": "size"}).content.decode()

    assert checked(first) == [thirty[0], thirty[3]]
    assert off_page(first) == [thirty[11]]  # carried to the preview with the page's boxes
    assert checked(second) == [thirty[11]]
    assert set(off_page(second)) == {thirty[0], thirty[3]}
    assert checked(searched) == []  # even-10, even-12…: none ticked
    assert set(checked(untagged)) == {thirty[3], thirty[11]}
    assert '<output id="selected-count">3</output> selected' in first


def test_unticking_on_a_page_leaves_the_other_pages_selection_alone(thirty, deleter_client):
    tick(deleter_client, thirty[:10], [thirty[0], thirty[1]])
    tick(deleter_client, thirty[10:20], [thirty[12]])

    tick(deleter_client, thirty[:10], [thirty[1]])

    page = deleter_client.get(LIST, {"per_page": 10}).content.decode()
    assert checked(page) == [thirty[1]]
    assert off_page(page) == [thirty[12]]


def test_the_running_total_is_what_the_preview_of_the_same_selection_frees(thirty, deleter_client):
    bar = tick(deleter_client, thirty[:10], [thirty[2], thirty[5]]).content.decode()
    repository = Repository.objects.get(name="many")
    plan = planning.plan_deletion(repository=repository, digests=[thirty[2], thirty[5]])
    preview = deleter_client.post(f"{LIST}-/delete/", {"digest": [thirty[2], thirty[5]]})

    assert bar.lstrip().startswith('<div class="selection-toolbar" id="selection-bar"')
    assert plan.reclaimable_bytes == 1002 + 1005  # their own layers
    assert (
        '<output id="selected-count">2</output> selected · frees '
        f'<span class="frees" data-bytes="{plan.reclaimable_bytes}">'
    ) in bar
    assert f'data-bytes="{plan.reclaimable_bytes}">' in preview.content.decode()


def test_select_all_matching_takes_every_row_of_the_query_not_only_the_page(thirty, deleter_client):
    response = deleter_client.post(
        SELECTION, {"action": "all", "back": "filter=tagged&per_page=10", "here": "per_page=10"}
    )

    page = deleter_client.get(response["Location"]).content.decode()
    assert response.status_code == 303
    assert response["Location"] == f"{LIST}?per_page=10"
    assert '<output id="selected-count">15</output> selected' in page
    listed = deleter_client.get(LIST, {"filter": "tagged", "per_page": 10}).content.decode()
    assert "Select all 15 matching" in listed


def test_clear_empties_the_selection(thirty, deleter_client):
    tick(deleter_client, thirty[:10], thirty[:4])

    deleter_client.post(SELECTION, {"action": "clear"})

    page = deleter_client.get(LIST).content.decode()
    assert checked(page) == [] and "Nothing selected" in page


def test_the_preview_s_cancel_forgets_the_selection_and_goes_back_to_the_list(
    thirty, deleter_client
):
    """Ticks used to survive a cancelled preview."""
    tick(deleter_client, thirty[:10], thirty[:2])
    page = deleter_client.post(
        f"{LIST}-/delete/", {"digest": thirty[:2], "back": "filter=tagged"}
    ).content.decode()
    cancel = re.search(r'<button type="submit" class="button cancel-delete"[^>]*>', page)[0]
    assert f'formaction="{SELECTION}"' in cancel and 'name="action" value="clear"' in cancel
    assert "formnovalidate" in cancel  # the unticked confirmation box does not hold it up

    # The preview's form, sent by its Cancel button (without JavaScript).
    fields = {"digest": thirty[:2], "back": "filter=tagged", "action": "clear"}
    response = deleter_client.post(SELECTION, fields)

    assert response.status_code == 303
    assert response["Location"] == f"{LIST}?filter=tagged"  # the list as it was left
    listed = deleter_client.get(LIST).content.decode()
    assert checked(listed) == [] and "Nothing selected" in listed


def test_without_javascript_keep_this_pages_ticks_goes_back_to_the_same_page(
    thirty, deleter_client
):
    response = deleter_client.post(
        SELECTION,
        {"shown": thirty[10:20], "digest": [thirty[15]], "here": "per_page=10&page=2"},
    )

    assert response.status_code == 303
    assert response["Location"] == f"{LIST}?per_page=10&page=2"
    assert checked(deleter_client.get(response["Location"]).content.decode()) == [thirty[15]]


def test_deleted_rows_drop_out_of_the_selection(thirty, deleter_client):
    tick(deleter_client, thirty[:10], [thirty[0], thirty[1]])
    Repository.objects.get(name="many").manifests.filter(digest=thirty[0]).delete()

    page = deleter_client.get(LIST).content.decode()

    assert '<output id="selected-count">1</output> selected' in page


def test_only_people_who_may_delete_can_select(thirty, viewer_client, deleter, client_factory):
    assert tick(viewer_client, thirty[:10], [thirty[0]]).status_code == 403
    strict = client_factory(deleter, enforce_csrf_checks=True)
    assert strict.post(SELECTION, {"shown": thirty[:1], "digest": thirty[:1]}).status_code == 403
    assert strict.get(SELECTION).status_code == 405


def test_a_selection_costs_the_same_few_queries_whatever_the_page_size(
    thirty, deleter_client, django_assert_max_num_queries
):
    tick(deleter_client, thirty[:10], thirty[:10])
    for per_page in (10, 100):
        with django_assert_max_num_queries(20):
            response = deleter_client.get(LIST, {"per_page": per_page})
        assert '<output id="selected-count">10</output>' in response.content.decode()
