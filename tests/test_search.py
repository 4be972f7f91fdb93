"""Search by substring on either database (issue 24): tag names match anywhere, in any
case, the term taken literally (LIKE's `%` and `_`, quotes, FTS5's `"`, `*`, `AND`, `-`),
the same on SQLite (an FTS5 trigram index kept by triggers) as on PostgreSQL (pg_trgm);
the suite runs this file on both."""

from __future__ import annotations

import pytest
from django.db import connection
from django.utils import timezone

from hubimages.inventory import lists, search
from hubimages.models import Manifest, Repository, Tag
from tests.builders import finish, manifest

pytestmark = pytest.mark.django_db

NAMES = [
    "latest",
    "3.20",
    "3.2",
    "v1.2.3-rc_1",
    "v1.2.3-rc1",
    "Android-ARM",
    "and",
    "x-and-y",
    "nightly-2024",
]
# Every length from 1 up, mixed case, and characters each database's syntax gives a meaning.
TERMS = [
    *("l", "L", "2", "_", "%", "-", '"', "'", "*", "."),
    *("20", "aT", "C_", "c1", "%%", '""', "_1", "-r", "*a"),
    *("atest", "LATEST", "3.2", "rc_", "RC_1", "and", "AND", "-rc", "x AND y", "and*"),
    *('"and"', "an*", "a%t", "3_2", "NEAR(a b)", "^and", "and OR 3.2", "android-arm-64"),
    *("ſ", "ı", "latest " * 30),  # Unicode that folds to ASCII somewhere; over 200 chars
]


def expected(names, term: str) -> set[str]:
    term = term.strip()[:200]
    return {name for name in names if term.isascii() and term.lower() in name.lower()}


@pytest.fixture
def tagged():
    """One image per tag name, in a repository of its own; a second repository holds the
    same names, so a match elsewhere must not leak in."""
    now = timezone.now()
    other = Repository.objects.create(name="other/app")
    for n, name in enumerate(NAMES):
        manifest(other, f"other-{n}", pushed_at=now, tags=[name])
    finish(other)
    repository = Repository.objects.create(name="acme/app")
    for n, name in enumerate(NAMES):
        manifest(repository, f"image-{n}", pushed_at=now, tags=[name])
    finish(repository)
    repository.refresh_from_db()
    return repository


def listed(repository: Repository, term: str) -> set[str]:
    """The tag names of the list's rows for a search."""
    query = lists.ListQuery.from_params({"search": term})
    rows = lists.top_level(repository, query)
    return set(Tag.objects.filter(manifest__in=rows).values_list("name", flat=True))


@pytest.mark.parametrize("ids_limit", [0, 2000], ids=["broad", "narrow"])
def test_tags_match_by_substring_in_any_case_with_every_character_literal(
    tagged, monkeypatch, ids_limit
):
    # Past SEARCH_IDS_LIMIT matches the search is a test per row rather than a list of ids.
    monkeypatch.setattr(lists, "SEARCH_IDS_LIMIT", ids_limit)
    assert listed(tagged, "20") == {"3.20", "nightly-2024"}
    assert listed(tagged, "atest") == {"latest"}
    for term in TERMS:
        assert listed(tagged, term) == expected(NAMES, term), term


def test_search_everywhere_matches_tags_the_same_way(tagged):
    for term in TERMS:
        found = search.everywhere(term, within=None)
        names = {tag.name for row in found.manifests for tag in row.tags.all()}
        assert names == expected(NAMES, term), term
        assert {row.repository.name for row in found.manifests} <= {"acme/app", "other/app"}


def test_the_search_index_follows_every_way_tags_are_written(tagged):
    repository = tagged
    image = Manifest.objects.filter(repository=repository).first()
    Tag.objects.create(repository=repository, manifest=image, name="created-one")
    Tag.objects.bulk_create(
        [Tag(repository=repository, manifest=image, name=f"bulk-{n}") for n in range(3)]
    )
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO hubimages_tag (repository_id, manifest_id, name, updated_at) "
            "VALUES (%s, %s, %s, %s)",
            [repository.pk, image.pk, "raw-inserted", timezone.now()],
        )
        cursor.execute(
            "UPDATE hubimages_tag SET name = %s WHERE name = %s AND repository_id = %s",
            ["raw-renamed", "bulk-0", repository.pk],
        )
        cursor.execute(
            "DELETE FROM hubimages_tag WHERE name = %s AND repository_id = %s",
            ["bulk-1", repository.pk],
        )
    Tag.objects.filter(repository=repository, name="created-one").update(name="renamed-one")
    Tag.objects.filter(repository=repository, name="latest").delete()
    moved = Tag.objects.get(repository=repository, name="3.20")
    moved.manifest = image
    moved.save()
    Manifest.objects.filter(tags__name="nightly-2024", repository=repository).delete()

    names = list(Tag.objects.filter(repository=repository).values_list("name", flat=True))
    assert {"renamed-one", "raw-renamed", "raw-inserted", "bulk-2"} <= set(names)
    for term in ("one", "raw-", "bulk", "latest", "created", "bulk-1", "3.20", "nightly", "ren"):
        found = Tag.objects.filter(repository=repository).filter(lists.tag_matches(term))
        assert set(found.values_list("name", flat=True)) == expected(names, term), term
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:  # the index holds exactly the table's rows
            cursor.execute(
                "INSERT INTO hubimages_tag_search (hubimages_tag_search, rank) "
                "VALUES ('integrity-check', 1)"
            )


def test_search_reads_a_trigram_index_on_either_database(tagged):
    tags = Tag.objects.filter(lists.tag_matches("atest"))
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET enable_seqscan = off")  # a few rows: a scan would be cheaper
        assert "tag_name_trgm" in tags.explain()
    else:
        assert "hubimages_tag_search VIRTUAL TABLE" in tags.explain()


@pytest.mark.parametrize("ids_limit", [0, 2000], ids=["broad", "narrow"])
def test_a_child_s_tag_or_digest_finds_its_index(tagged, monkeypatch, ids_limit):
    monkeypatch.setattr(lists, "SEARCH_IDS_LIMIT", ids_limit)
    now = timezone.now()
    child = manifest(tagged, "arm", pushed_at=now, tags=["Only-ARM64"])
    index = manifest(
        tagged, "multi", pushed_at=now, kind=Manifest.Kind.INDEX, children=[child], tags=["m"]
    )
    finish(tagged)

    for term in ("ly-arm", "ONLY-ARM64", "64", child.digest[7:15], child.digest[:20].upper()):
        rows = lists.top_level(tagged, lists.ListQuery(search=term))
        assert set(rows.values_list("digest", flat=True)) == {index.digest}, term
