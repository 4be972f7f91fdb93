"""The repositories page, its empty states, the header and signing in and out."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from devtools.pusher import random_layer
from hubimages.inventory import repositories
from hubimages.lib.formatting import human_size
from hubimages.models import Manifest, Repository, SyncRun
from hubimages.storage import figures as storage_figures
from tests.builders import finish, manifest
from tests.conftest import PASSWORD


def repository_names(response) -> list[str]:
    return re.findall(
        r'class="repository-name" href="[^"]+">([^<]+)</a>', response.content.decode()
    )


@pytest.fixture
def three(db):
    """Three repositories with chosen sizes and push times; "web" has one stale image."""
    now = timezone.now()
    sizes = {"api": (5000, 2), "db/main": (1000, 40), "web": (3000, 400)}
    for name, (size, days_ago) in sizes.items():
        repo = Repository.objects.create(name=name)
        manifest(repo, f"{name}1", size=size, pushed_at=now - timedelta(days=days_ago), tags=["1"])
        manifest(repo, f"{name}2", size=size, pushed_at=now - timedelta(days=days_ago + 1))
        finish(repo)
    SyncRun.objects.create(started_at=now, finished_at=now, succeeded=True)


def test_each_repository_shows_its_tags_images_size_last_push_and_stale_share(
    pusher, sync, viewer_client
):
    first = pusher.push_image("team/api", tag="1.0", layers=[random_layer(2000, 1)])
    pusher.tag("team/api", "latest", first)
    pusher.push_image("team/api", tag="2.0", layers=[random_layer(3000, 2)])
    pusher.push_image("team/web", tag="1", layers=[random_layer(100, 3)])
    sync()
    Repository.objects.get(name="team/web").manifests.update(
        pushed_at=datetime(2020, 1, 1, tzinfo=UTC)
    )

    page = viewer_client.get("/").content.decode()

    api = page[page.index(">team/api<") : page.index(">team/web<")]
    cells = re.findall(r'<td class="col-count">(\d+)</td>', api)
    assert cells == ["3", "2"]  # tags, images
    # Layers and configs, and the manifests' own bytes: 6 kB.
    assert re.search(r'<td class="col-size" title="[\d,]+ bytes">6\.\d kB</td>', api)
    assert "just now" in api and "none" in api
    web = page[page.index(">team/web<") :]
    assert "1 of 1 stale" in web
    assert 'href="/r/default/team/api/"' in page


@pytest.mark.parametrize(
    ("sort", "expected"),
    [
        (None, ["api", "db/main", "web"]),
        ("-name", ["web", "db/main", "api"]),
        ("size", ["db/main", "web", "api"]),
        ("-size", ["api", "web", "db/main"]),
        ("last_pushed", ["web", "db/main", "api"]),
        ("-last_pushed", ["api", "db/main", "web"]),
        ("nonsense", ["api", "db/main", "web"]),
    ],
)
def test_repositories_sort_by_name_size_and_last_push(three, viewer_client, sort, expected):
    response = viewer_client.get("/", {"sort": sort} if sort else {})

    assert response.status_code == 200
    assert repository_names(response) == expected


def test_repository_search_narrows_by_name_and_says_when_nothing_matches(three, viewer_client):
    assert repository_names(viewer_client.get("/", {"search": "DB/"})) == ["db/main"]

    page = viewer_client.get("/", {"search": "<zzz>"}).content.decode()
    assert 'No repository matches “<bdi class="name">&lt;zzz&gt;</bdi>”' in page


def test_htmx_gets_only_the_repository_table(three, viewer_client):
    response = viewer_client.get("/", {"sort": "size"}, headers={"HX-Request": "true"})

    page = response.content.decode()
    assert page.lstrip().startswith('<section id="table"')
    assert "<html" not in page
    assert repository_names(response) == ["db/main", "web", "api"]


def test_without_a_registry_the_page_says_to_set_registry_url(db, viewer_client, settings):
    settings.REGISTRY_URL = ""

    page = viewer_client.get("/").content.decode()

    assert "No registry configured" in page and "REGISTRY_URL" in page
    assert "not configured" in page  # the header


def test_before_the_first_sync_the_page_says_to_run_it(db, viewer_client, settings):
    settings.REGISTRY_URL = "https://registry.example.com"

    page = viewer_client.get("/").content.decode()

    assert "Not synced yet" in page and "python manage.py sync_registry" in page
    assert "<code>https://registry.example.com</code>" in page
    assert "never" in page  # last sync in the header


def test_an_empty_registry_says_so(db, viewer_client, settings):
    settings.REGISTRY_URL = "https://registry.example.com"
    now = timezone.now()
    SyncRun.objects.create(started_at=now, finished_at=now, succeeded=True)

    page = viewer_client.get("/").content.decode()

    assert "The registry has no repositories" in page


def test_the_header_shows_the_registry_and_the_last_sync(three, viewer_client, settings):
    settings.REGISTRY_URL = "https://registry.example.com"
    earlier = timezone.now() - timedelta(hours=3)
    SyncRun.objects.all().update(started_at=earlier, finished_at=earlier)

    page = viewer_client.get("/").content.decode()

    header = page[page.index("<header") : page.index("</header>")]
    assert "<code>https://registry.example.com</code>" in header
    assert "3\xa0h ago" in header  # two units at most, number and unit kept together
    assert 'action="/accounts/logout/"' in header and 'method="post"' in header


def test_every_page_requires_signing_in(client, three):
    for url in ("/", "/r/default/api/"):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/?next=")


def test_signing_in_and_out(client, viewer):
    login = client.get("/accounts/login/?next=/")
    page = login.content.decode()
    assert '<label for="id_username">Username</label>' in page
    assert '<label for="id_password">Password</label>' in page

    signed_in = client.post(
        "/accounts/login/", {"username": "viewer", "password": PASSWORD, "next": "/"}
    )
    assert signed_in.status_code == 302 and signed_in["Location"] == "/"
    assert client.get("/").status_code == 200

    assert client.get("/accounts/logout/").status_code == 405  # POST only
    signed_out = client.post("/accounts/logout/")
    assert signed_out.status_code == 302 and signed_out["Location"] == "/accounts/login/"
    assert client.get("/").status_code == 302


def test_a_wrong_password_is_refused_with_a_message(client, viewer):
    response = client.post("/accounts/login/", {"username": "viewer", "password": "nope"})

    assert response.status_code == 200
    assert "didn't match" in response.content.decode()


def test_a_repository_s_size_counts_a_shared_layer_once_as_the_registry_stores_it(
    pusher, sync, viewer_client
):
    base = random_layer(40_000, "shared-base")
    one = pusher.push_image("team/svc", tag="1", layers=[base, random_layer(1_000, "one")])
    two = pusher.push_image("team/svc", tag="2", layers=[base, random_layer(2_000, "two")])
    sync()

    repository = repositories.repository_overview().get(name="team/svc")

    stored = 40_000 + 1_000 + 2_000 + one.config_size + two.config_size + one.size + two.size
    assert repository.total_size == stored  # the manifests' own bytes are blobs too
    assert stored < sum(m.total_size for m in Manifest.objects.filter(repository__name="team/svc"))


# -- reclaimable bytes, totals, tag counts -------------------------------------------------------


def row_of(page: str, name: str) -> str:
    start = page.index(f">{name}</a>")
    return page[start : page.index("</tr>", start)]


def test_tag_counts_leave_out_signature_attestation_and_referrer_tags(pusher, sync, viewer_client):
    image = pusher.push_image("team/signed", tag="1.0", layers=[random_layer(1_000, "s")])
    pusher.tag("team/signed", "latest", image)
    pusher.push_cosign_signature("team/signed", image)  # tag sha256-<hex>.sig
    pusher.push_referrer("team/signed", image)  # tag sha256-<hex>, the referrers index
    pusher.tag("team/signed", f"sha256-{image.hex}.att", image)
    pusher.tag("team/signed", f"sha256-{image.hex}.sbom", image)
    pusher.tag("team/signed", f"sha256-{image.hex}.sigs", image)  # not the schema: a tag
    sync()

    page = viewer_client.get("/").content.decode()

    counts = re.findall(r'<td class="col-count">([\d,]+)</td>', row_of(page, "team/signed"))
    assert counts[0] == "3"  # 1.0, latest and the look-alike
    totals = page[page.index('<tr class="totals">') :]
    assert re.findall(r'<td class="col-count">([\d,]+)</td>', totals)[0] == "3"


@pytest.fixture
def stale_and_shared(pusher, sync):
    """`team/old` holds a stale image whose base layer only `team/older`'s stale image
    shares; `team/new` nothing stale."""
    base = random_layer(60_000, "base")
    old = pusher.push_image("team/old", tag="1", layers=[base, random_layer(9_000, "old")])
    older = pusher.push_image("team/older", tag="1", layers=[base, random_layer(4_000, "x")])
    pusher.push_image("team/new", tag="1", layers=[random_layer(5_000, "new")])
    sync()
    Manifest.objects.filter(digest__in=[old.digest, older.digest]).update(
        pushed_at=datetime(2020, 1, 1, tzinfo=UTC)
    )
    sync()
    storage_figures.refresh()  # what the workers compute after each full sync
    return SimpleNamespace(old=old, older=older)


def test_each_repository_shows_what_deleting_its_stale_items_frees(stale_and_shared, viewer_client):
    from hubimages.storage import figures as storage_figures

    figures = {row["name"]: row for row in storage_figures.figures()["repositories"]}

    page = viewer_client.get("/").content.decode()

    old = figures["team/old"]["stale_reclaimable_bytes"]
    assert old == stale_and_shared.old.size + stale_and_shared.old.config_size + 9_000
    assert (
        f'<a href="/r/default/team/old/?status=stale" title="{old:,} bytes: what deleting '
        f'its stale items frees">{human_size(old)}</a>'
    ) in row_of(page, "team/old")
    assert '<span class="muted">0 B</span>' in row_of(page, "team/new")
    assert '<th scope="col" aria-sort="none" class="col-reclaimable">' in page
    totals = page[page.index('<tr class="totals">') :]
    everything = storage_figures.figures()["stale_reclaimable_bytes"]
    assert everything == old + figures["team/older"]["stale_reclaimable_bytes"] + 60_000
    assert f'title="{everything:,} bytes, with the blobs' in totals
    stored = storage_figures.figures()["stored_bytes"]
    assert f'title="{stored:,} bytes, each blob once' in totals
    assert "All 3 repositories" in totals and "2 of 3 stale" in totals


@pytest.mark.parametrize(
    ("sort", "expected"),
    [
        ("-reclaimable", ["old", "older", "new", "brand-new"]),
        ("reclaimable", ["new", "older", "old", "brand-new"]),
    ],
)
def test_repositories_sort_by_reclaimable_bytes_unmeasured_ones_last(
    stale_and_shared, pusher, viewer_client, sort, expected
):
    Repository.objects.create(name="team/brand-new")  # stored by an event since the sync

    page = viewer_client.get("/", {"sort": sort}).content.decode()

    assert repository_names_in(page) == [f"team/{name}" for name in expected]
    assert '<span class="muted" title="Not measured yet' in row_of(page, "team/brand-new")


def repository_names_in(page: str) -> list[str]:
    return re.findall(r'class="repository-name" href="[^"]+">([^<]+)</a>', page)


def test_the_repositories_page_costs_the_same_queries_however_many_repositories(
    db, viewer_client, django_assert_max_num_queries
):
    from hubimages.storage import figures as storage_figures

    now = timezone.now()

    def add(count: int) -> None:
        for n in range(Repository.objects.count(), count):
            repo = Repository.objects.create(name=f"repo-{n:03}")
            manifest(repo, f"r{n}", size=1_000, pushed_at=now - timedelta(days=900), tags=["1"])
            finish(repo)
        SyncRun.objects.create(started_at=now, finished_at=now, succeeded=True)
        storage_figures.refresh()

    sorts = ("-reclaimable", "name", "-size")
    add(3)
    few = {}
    for sort in sorts:
        with CaptureQueriesContext(connection) as queries:
            viewer_client.get("/", {"sort": sort})
        few[sort] = len(queries)
    add(40)
    for sort in sorts:
        with django_assert_max_num_queries(few[sort]):
            assert viewer_client.get("/", {"sort": sort}).status_code == 200
