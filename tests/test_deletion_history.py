"""The deletion history: one row per operation opening onto its manifests, records from
before operations, the repository filter, the CSV export, and what waits for the garbage
collector."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from devtools.pusher import random_layer
from hubimages.deletion import execution, planning
from hubimages.lib.formatting import human_size, short_digest
from hubimages.models import Deletion, DeletionRecord, Repository
from hubimages.storage import collection

HTMX = {"HTTP_HX_REQUEST": "true"}
START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DONE, FAILED, PENDING = (DeletionRecord.State.DONE, DeletionRecord.State.FAILED, "pending")


def operations(page: str) -> list[str]:
    tbody = r'<tbody class="item operation" data-source="(\w+)" data-id="\d+"[^>]*>'
    return re.findall(tbody, page)


def rows(page: str) -> list[str]:
    return re.split(r'<tbody class="item operation"', page)[1:]


def operation(
    repository: str,
    *,
    when: datetime,
    records: list[tuple[str, list[str], str]] = (),
    username: str = "ann",
    state: str = Deletion.State.DONE,
    reclaimed: int = 0,
    message: str = "",
) -> Deletion:
    """An operation as `execute_deletion` leaves it, with (digest seed, tags, state) records."""
    row = Deletion.objects.create(
        username=username,
        repository=repository,
        selected=[f"sha256:{seed:0>64}" for seed, _, _ in records[:1]],
        fingerprint="f",
        state=state,
        message=message,
    )
    for seed, tags, record_state in records:
        DeletionRecord.objects.create(
            operation=row,
            username=username,
            repository=repository,
            digest=f"sha256:{seed:0>64}",
            kind="image",
            tags=tags,
            size=1_000,
            reclaimed_bytes=reclaimed // max(len(records), 1),
            state=record_state,
            message="registry answered 500" if record_state == FAILED else "",
        )
    Deletion.objects.filter(pk=row.pk).update(
        started_at=when, finished_at=when + timedelta(seconds=5), reclaimed_bytes=reclaimed
    )
    return row


def legacy_record(repository: str, *, when: datetime, digest: str = "sha256:" + "e" * 64):
    record = DeletionRecord.objects.create(
        username="cli:old",
        repository=repository,
        digest=digest,
        kind="index",
        tags=["=cmd|' /C calc'!A0"],
        size=5_000,
        reclaimed_bytes=4_000,
    )
    DeletionRecord.objects.filter(pk=record.pk).update(deleted_at=when)
    return record


def test_a_deletion_is_one_row_that_opens_onto_its_manifests(
    pusher, sync, registry_client, deleter, viewer_client
):
    amd = pusher.push_image("team/api", layers=[random_layer(3_000, "amd")])
    arm = pusher.push_image("team/api", layers=[random_layer(4_000, "arm")], architecture="arm64")
    index = pusher.push_index("team/api", tag="2.0", images=[amd, arm])
    pusher.tag("team/api", "latest", index)
    sync()
    repository = Repository.objects.get(name="team/api")
    plan = planning.plan_deletion(repository=repository, digests=[index.digest])
    outcome = execution.execute_deletion(
        repository=repository,
        digests=[index.digest],
        fingerprint=plan.fingerprint,
        user=deleter,
        client=registry_client,
    )

    page = viewer_client.get("/history/").content.decode()

    assert operations(page) == ["operation"]
    (row,) = rows(page)
    main = row[: row.index('<tr class="children-row">')]
    assert "<td>deleter</td>" in main
    assert '<a class="name" href="/r/default/team/api/">team/api</a>' in main
    assert f'<span class="tag" title="2.0, latest">2.0</span> <code title="{index.digest}">' in main
    assert re.findall(r'<td class="col-count">(\d+)</td>', main) == ["3", "2"]  # manifests, tags
    reclaimed = outcome.reclaimed_bytes
    assert reclaimed == plan.reclaimable_bytes > 7_000
    assert f'title="{reclaimed:,} bytes">{human_size(reclaimed)}<br>' in main
    assert "waiting for GC" in main
    assert '<span class="state state-done">Done</span>' in main
    assert "<summary>3 manifests" in row
    digests = re.findall(r'<tr class="record" data-digest="([^"]+)">', row)
    assert digests == [index.digest, *sorted([amd.digest, arm.digest])]  # as they went
    assert row.count('<span class="state state-done">Deleted</span>') == 3


def test_failed_pending_and_unchanged_operations_say_so(db, viewer_client):
    operation(
        "team/api",
        when=START,
        records=[("a", ["v1"], DONE), ("b", ["v2", "v3"], FAILED), ("c", [], PENDING)],
        state=Deletion.State.PARTIAL,
    )
    operation(
        "team/api",
        when=START + timedelta(hours=1),
        state=Deletion.State.STALE,
        message="the registry changed since the preview: nothing was deleted",
    )

    page = viewer_client.get("/history/").content.decode()

    unchanged, partial = rows(page)
    assert "Plan changed: nothing deleted" in unchanged
    assert "the registry changed since the preview" in unchanged
    assert "children-row" not in unchanged  # nothing to open
    assert (
        '<td class="col-count">1 <span class="failed">+1 failed</span> '
        '<span class="muted">+1 pending</span></td>'
    ) in partial
    assert '<td class="col-count">1</td>' in partial  # only the deleted manifest's tag went
    assert "Partly done" in partial and "registry answered 500" in partial


def test_records_from_before_operations_still_show_each_as_a_row(db, viewer_client):
    operation("team/api", when=START + timedelta(days=1), records=[("a", ["v1"], DONE)])
    old = legacy_record("team/api", when=START)
    operation("team/web", when=START - timedelta(days=1), records=[("b", [], DONE)])

    page = viewer_client.get("/history/").content.decode()

    assert operations(page) == ["operation", "record", "operation"]
    legacy = rows(page)[1]
    assert f'data-id="{old.pk}"' in page
    assert "<td>cli:old</td>" in legacy and "before operations were kept" in legacy
    assert f'<tr class="record" data-digest="{old.digest}">' in legacy
    assert f'<code title="{old.digest}">{short_digest(old.digest)}</code>' in legacy
    assert 'title="4,000 bytes">4.0 kB</td>' in legacy


def test_the_repository_filter_matches_part_of_a_name_in_any_case(db, viewer_client):
    operation("team/api", when=START, records=[("a", [], DONE)])
    operation("team/web", when=START + timedelta(hours=1), records=[("b", [], DONE)])
    operation("other/app", when=START + timedelta(hours=2), records=[("c", [], DONE)])
    legacy_record("team/old", when=START - timedelta(days=1))

    def repositories(search: str) -> list[str]:
        page = viewer_client.get("/history/", {"repository": search}, **HTMX).content.decode()
        assert page.lstrip().startswith('<section id="records"')
        return re.findall(r'<td><a class="name" href="/r/default/[^"]+">([^<]+)</a>', page)

    assert repositories("team/") == ["team/web", "team/api", "team/old"]
    assert repositories("APP") == ["other/app"]
    assert repositories("") == ["other/app", "team/web", "team/api", "team/old"]
    page = viewer_client.get("/history/", {"repository": "team/"}).content.decode()
    assert "3 deletions in repositories matching" in page
    assert 'href="/history/export.csv?repository=team%2F"' in page


def test_the_csv_export_has_a_line_per_manifest_and_neutralises_formulas(db, viewer_client):
    first = operation(
        "team/api",
        when=START,
        records=[("a", ["v1", "latest"], DONE), ("b", [], FAILED)],
        username='=HYPERLINK("http://x")',
        reclaimed=2_000,
    )
    operation("team/api", when=START + timedelta(hours=1), state=Deletion.State.STALE)
    legacy_record("team/api", when=START - timedelta(days=1))
    operation("other/app", when=START, records=[("c", [], DONE)])

    response = viewer_client.get("/history/export.csv", {"repository": "team"})

    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="deletion-history.csv"'
    lines = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [(line["deletion"], line["digest"][-1:]) for line in lines] == [
        (str(first.pk + 1), ""),  # nothing deleted: one line, no manifest
        (str(first.pk), "a"),
        (str(first.pk), "b"),
        ("", "e"),  # from before operations
    ]
    a, b = lines[1], lines[2]
    assert a["who"] == '\'=HYPERLINK("http://x")'
    assert a["started_at"] == "2026-03-01T12:00:00Z"
    assert (a["tags"], a["state"], a["reclaimed_bytes"], a["size"]) == (
        "v1 latest",
        "done",
        "1000",
        "1000",
    )
    assert (b["state"], b["message"]) == ("failed", "registry answered 500")
    assert a["selected"] == f"sha256:{'a':0>64}" and a["deletion_state"] == "done"
    assert lines[3]["tags"] == "'=cmd|' /C calc'!A0"
    assert a["garbage_collected_at"] == ""

    # Each deletion has its own CSV: the same lines, under the name History gives it.
    one = viewer_client.get(f"/history/{first.pk}/export.csv")
    assert one["Content-Disposition"] == f'attachment; filename="deletion-{first.pk}.csv"'
    assert list(csv.DictReader(io.StringIO(b"".join(one.streaming_content).decode()))) == [a, b]
    page = viewer_client.get("/history/").content.decode()
    assert f'<span class="deletion-name">Deletion #{first.pk}</span>' in page
    assert f'href="/history/{first.pk}/export.csv" download' in page
    assert viewer_client.get(f"/history/{first.pk + 99}/export.csv").status_code == 404


def test_what_waits_for_the_garbage_collector_is_shown_with_the_way_to_run_it(db, viewer_client):
    waiting = operation("team/api", when=START, records=[("a", [], DONE)], reclaimed=3_000_000)
    collected = operation("team/api", when=START - timedelta(days=9), records=[("b", [], DONE)])
    Deletion.objects.filter(pk=collected.pk).update(reclaimed_bytes=5, collected_at=timezone.now())

    page = viewer_client.get("/history/").content.decode()

    assert collection.waiting_for_collection() == collection.Waiting(3_000_000, 1)
    assert "Deleted, waiting for garbage collection: 3.0 MB" in page
    assert '<a href="/storage/#garbage-collection">how to run it</a>' in page
    first, second = rows(page)
    assert f'data-id="{waiting.pk}"' in first and "waiting for GC" in first
    assert "waiting for GC" not in second and ">freed</span>" in second
    gc = viewer_client.get("/storage/").content.decode()
    section = gc[gc.index('id="garbage-collection"') :]
    assert "docker-registry garbage-collect" in section and "--delete-untagged" in section
    assert "<strong>3.0 MB</strong> (3,000,000 bytes) from 1 deletion waits for it" in section


def test_a_big_deletion_opens_onto_its_first_hundred_manifests(db, viewer_client):
    operation("team/api", when=START, records=[(f"{n:x}", [], DONE) for n in range(130)])

    page = viewer_client.get("/history/").content.decode()

    assert page.count('<tr class="record"') == 100
    assert "<summary>130 manifests" in page and "and 30 more" in page
    assert 'href="/history/export.csv"' in page


def test_the_history_costs_no_more_queries_however_many_operations(db, viewer_client):
    def queries_for_a_page(count: int) -> int:
        for n in range(Deletion.objects.count(), count):
            operation(
                "team/api",
                when=START + timedelta(minutes=n),
                records=[(f"{n}-{m}", ["t"], DONE) for m in range(3)],
            )
            legacy_record("team/api", when=START - timedelta(minutes=n), digest=f"sha256:{n:064x}")
        with CaptureQueriesContext(connection) as queries:
            response = viewer_client.get("/history/")
        assert response.status_code == 200
        return len(queries)

    few = queries_for_a_page(2)  # operations and older records on one page
    assert queries_for_a_page(60) <= few


def test_the_history_and_its_export_need_signing_in(client, db):
    for url in ("/history/", "/history/export.csv"):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/")
