"""The storage figures are the workers' work, never a web request's (SPEC §7, issue 18
item 6): pages and the API read what the workers keep, with its age; the workers compute
it again after a sync, a deletion, a day or a changed setting, one computation at a time
on any number of hosts; a burst of requests computes nothing."""

from __future__ import annotations

import re
import threading

import pytest
import requests
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from devtools.worker import run_tasks
from hubimages.deletion import planning
from hubimages.jobs import queue, tasks, worker
from hubimages.lib import leases
from hubimages.lib.audit import Actor
from hubimages.models import Lease, Repository, StorageFigures, StorageSample, SyncRun
from hubimages.registries import rows as registry_rows
from hubimages.storage import figures as storage_figures
from hubimages.teams import services
from tests.builders import finish, manifest
from tests.conftest import PASSWORD
from tests.test_storage import WEB, by_name, two_teams  # noqa: F401 (a fixture)

PAGES = ("/", "/storage/", "/api/v1/storage")


@pytest.fixture
def rows(db):
    """Two repositories, one stale item each; figures computed, then a sync moved on."""
    now = timezone.now()
    for name in ("team/a", "team/b"):
        repository = Repository.objects.create(name=name)
        manifest(repository, f"{name}-old", pushed_at=now.replace(year=2020), tags=["1"])
        finish(repository)
    storage_figures.refresh()
    SyncRun.objects.create(started_at=now, finished_at=now, succeeded=True)
    assert storage_figures.outdated()


def figures_lease() -> str:
    return storage_figures.figures_lease(registry_rows.get())


def kept_row() -> tuple:
    return tuple(StorageFigures.objects.values_list("key", "computed_at", "figures").get())


def test_no_page_computes_the_figures_however_old(rows, viewer_client, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a web request computed the storage figures")

    monkeypatch.setattr(storage_figures, "compute", refuse)
    before = kept_row()

    answers = {url: viewer_client.get(url) for url in PAGES}

    assert {url: a.status_code for url, a in answers.items()} == dict.fromkeys(PAGES, 200)
    assert "out of date, the workers recompute them shortly" in answers["/storage/"].text
    assert "out of date, the workers recompute them shortly" in answers["/"].text
    api = answers["/api/v1/storage"].json()
    assert (api["current"], api["computing"]) == (False, False)
    assert api["stale_reclaimable_bytes"] == 2_000 and api["computed_at"].endswith("Z")
    assert kept_row() == before


def test_the_page_says_when_new_figures_are_being_computed(rows, viewer_client):
    held = leases.acquire(figures_lease(), owner="a worker")

    page = viewer_client.get("/storage/").text

    assert "; being recomputed." in page
    leases.release(held)


def test_before_the_first_computation_pages_say_so_and_the_api_answers_503(db, viewer_client):
    repository = Repository.objects.create(name="team/a")
    manifest(repository, "one", pushed_at=timezone.now(), tags=["1"])
    finish(repository)

    storage = viewer_client.get("/storage/").text
    listing = viewer_client.get("/").text
    api = viewer_client.get("/api/v1/storage")

    assert "The workers have not computed these figures yet" in storage
    assert "No figures yet" in storage and "Stored</dt>" not in storage
    assert "The workers have not computed these figures yet" in listing
    assert api.status_code == 503 and api.json()["error"]["code"] == "not_computed"


def test_reading_the_kept_figures_is_a_few_queries(rows):
    registry = registry_rows.get()
    with CaptureQueriesContext(connection) as queries:
        kept = storage_figures.kept(registry)

    assert kept.document and not kept.current
    assert len(queries) == 5  # the row, the state's three aggregates, the lease


def test_one_worker_computes_at_a_time(rows, monkeypatch):
    held = leases.acquire(figures_lease(), owner="another host")
    before = kept_row()

    assert storage_figures.refresh() is False
    assert kept_row() == before
    leases.release(held)
    assert storage_figures.refresh() is True
    assert not storage_figures.outdated()
    assert not Lease.objects.filter(name=figures_lease()).exists()  # released


def test_a_state_that_moves_during_the_computation_is_computed_again(rows, monkeypatch):
    compute = storage_figures.compute
    calls = []

    def moving(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # a sync ends while the figures are computed
            now = timezone.now()
            SyncRun.objects.create(started_at=now, finished_at=now, succeeded=True)
        return compute(*args, **kwargs)

    monkeypatch.setattr(storage_figures, "compute", moving)

    assert storage_figures.refresh() is True
    assert len(calls) == 2 and not storage_figures.outdated()


def test_the_workers_enqueue_one_computation_when_the_figures_are_out_of_date(rows):
    path = tasks.refresh_storage_figures.module_path

    tasks.ensure_figures()
    tasks.ensure_figures()
    worker.maintain()

    assert DBTaskResult.objects.filter(task_path=path).count() == 1
    run_tasks()
    assert not storage_figures.outdated()
    tasks.ensure_figures()
    assert DBTaskResult.objects.filter(task_path=path).count() == 1  # current: none more


def test_the_workers_compute_the_figures_again_after_a_deletion(
    two_teams,  # noqa: F811
    registry_url,
    viewer_client,
):
    storage_figures.refresh()
    points_before = StorageSample.objects.count()
    before = storage_figures.kept().document
    repository = Repository.objects.get(name=WEB)
    plan = planning.plan_deletion(repository=repository, digests=[two_teams.web_old.digest])

    queue.start_deletion(
        repository=repository,
        digests=[two_teams.web_old.digest],
        fingerprint=plan.fingerprint,
        user=None,
    )
    run_tasks()  # the deletion, then the figures it made out of date

    kept = storage_figures.kept()
    assert kept.current
    assert by_name(before)[WEB]["stale_reclaimable_bytes"] > 0
    assert by_name(kept.document)[WEB]["stale_reclaimable_bytes"] == 0
    assert kept.document["stored_bytes"] == before["stored_bytes"] - plan.reclaimable_bytes
    # The worker that ran it added a point of the history with the new total, and the
    # chart drops to it at once, not at the next full sync.
    history = kept.document["history"]
    assert StorageSample.objects.count() == points_before + 1 == len(history)
    assert history[-1]["stored_bytes"] == kept.document["stored_bytes"]
    assert history[-2]["stored_bytes"] == before["stored_bytes"]
    page = viewer_client.get("/storage/").text
    chart = page[page.index('id="history-title"') : page.index('id="gc-title"')]
    line = re.search(r'<polyline points="([^"]+)" class="history-line"', chart)[1]
    heights = [float(point.split(",")[1]) for point in line.split()]
    assert heights[-1] > heights[-2]  # lower on the chart: y grows downwards
    cells = re.findall(r'<td class="col-size" title="([\d,]+) bytes">', chart)
    assert int(cells[-1].replace(",", "")) == kept.document["stored_bytes"]
    assert f"{len(history)} points from" in chart


def test_a_burst_of_requests_to_gunicorn_computes_nothing(rows, live, django_user_model):
    reader = django_user_model.objects.create_user("reader", password=PASSWORD)
    team = services.create_team("readers", by=Actor(name="tests"))  # sees every repository
    services.grant(team, "viewer", "**", by=Actor(name="tests"))
    services.add_members(team, [reader], by=Actor(name="tests"))
    url = live.start_web(workers=3)
    session = live.signed_in("reader", PASSWORD)
    cookies = session.cookies.get_dict()
    before = kept_row()
    lease = Lease.objects.filter(name=figures_lease())
    taken = list(lease.values_list("id", "acquired_at"))
    answers: list[tuple[str, int, str]] = []

    def read(path: str) -> None:
        answer = requests.get(f"{url}{path}", cookies=cookies, timeout=60)
        answers.append((path, answer.status_code, answer.text))

    burst = [threading.Thread(target=read, args=(path,)) for path in PAGES * 8]
    for thread in burst:
        thread.start()
    for thread in burst:
        thread.join()

    assert sorted((path, status) for path, status, _ in answers) == sorted(
        (path, 200) for path in PAGES * 8
    )
    assert all("out of date" in text for path, _, text in answers if path != PAGES[2])
    assert kept_row() == before  # nobody computed, nobody stored
    assert list(lease.values_list("id", "acquired_at")) == taken  # nobody started to
