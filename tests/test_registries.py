"""Several registries in one hubimages (SPEC §11), against two real registries: the same
image pushed to both is two repositories and two sets of blobs; what happens to one (a
deletion, a notification, a retention run, a registry going down) never touches the
other."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError

from devtools.faultproxy import FaultProxy
from devtools.pusher import ImagePusher, random_layer
from devtools.server import LocalRegistry
from hubimages.deletion import execution, planning
from hubimages.jobs import worker
from hubimages.models import Blob, Job, Manifest, Registry, RegistryEvent, Repository, Tag
from hubimages.registries import probes, rows
from hubimages.registries.client import registry_client
from hubimages.registries.config import RegistryConfig, read_registries_file
from hubimages.retention import engine, policies, runs
from hubimages.storage import figures
from hubimages.storage import figures as storage_figures
from hubimages.sync import events
from hubimages.sync.service import sync_registry
from registry.client import RegistryClient

REPO = "team/api"
V1 = "application/vnd.docker.distribution.events.v1+json"


@pytest.fixture
def two(tmp_path, settings):
    """Two registry processes, `prod` and `staging`, each with its own events token, the
    same image pushed to both (identical bytes, so identical digests)."""
    with (
        LocalRegistry(tmp_path / "prod") as prod,
        LocalRegistry(tmp_path / "staging") as staging,
    ):
        settings.REGISTRY_URL = ""
        settings.REGISTRIES = [
            RegistryConfig(name="prod", url=prod.url, events_token="prod-token-1"),
            RegistryConfig(name="staging", url=staging.url, events_token="staging-token-2"),
        ]
        layers = [random_layer(4_000, "shared base"), random_layer(2_000, "app v1")]
        images = {}
        for name, server in (("prod", prod), ("staging", staging)):
            pusher = ImagePusher(server.url)
            images[name] = pusher.push_image(REPO, tag="v1", layers=layers)
            pusher.push_image(REPO, tag="v2", layers=[random_layer(3_000, f"{name} v2")])
        yield SimpleNamespace(prod=prod, staging=staging, images=images)


def sync(name: str, **options):
    registry = rows.get(name)
    with registry_client(registry) as client:
        summary = sync_registry(client, registry=registry, workers=2, **options)
    assert summary.errors == [], summary.errors
    return summary


def repository(registry: str, name: str = REPO) -> Repository:
    return Repository.objects.get(registry__name=registry, name=name)


def snapshot(server: LocalRegistry, repo: str = REPO) -> dict:
    """Every manifest and blob the registry serves for `repo`'s tags, byte for byte."""
    client = RegistryClient(server.url)
    out = {}
    for tag in client.list_tags(repo):
        manifest = client.get_manifest(repo, tag)
        out[tag] = manifest.body
        for descriptor in [manifest.parsed.config, *manifest.parsed.layers]:
            out[descriptor.digest] = client.get_blob(repo, descriptor.digest)
    return out


# -- configuration -----------------------------------------------------------------------


def write(path: Path, data) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def test_registries_file_reads_secrets_from_the_environment_and_files_and_never_shows_them(
    tmp_path, monkeypatch
):
    secret = tmp_path / "ghcr-password"
    secret.write_text("ghp_secret-from-a-file\n")
    monkeypatch.setenv("PROD_EVENTS", "prod-events-secret")
    path = write(
        tmp_path / "registries.json",
        [
            {
                "name": "prod",
                "url": "https://registry.example.com/",
                "events_token_env": "PROD_EVENTS",
            },
            {
                "name": "ghcr",
                "url": "https://ghcr.io",
                "username": "bot",
                "password_file": str(secret),
                "repositories": ["acme/api", "acme/web"],
                "sync_interval_minutes": 60,
            },
        ],
    )
    prod, ghcr = read_registries_file(path)

    assert (prod.name, prod.url, prod.events_token) == (
        "prod",
        "https://registry.example.com",
        "prod-events-secret",
    )
    assert (ghcr.password, ghcr.repositories, ghcr.sync_interval_minutes) == (
        "ghp_secret-from-a-file",
        ("acme/api", "acme/web"),
        60,
    )
    assert ghcr.host == "ghcr.io"
    assert "secret" not in repr(prod) + repr(ghcr)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "prod", "url": "https://r.example.com", "password": "x"}, "never written"),
        ({"name": "Prod!", "url": "https://r.example.com"}, "slug"),
        ({"name": "prod", "url": "ftp://r.example.com"}, "http(s) URL"),
        ({"name": "prod", "url": "https://u:p@r.example.com"}, "must not hold credentials"),
        ({"name": "prod", "url": "https://r.example.com", "colour": "red"}, "unknown key colour"),
        ({"name": "prod", "url": "https://r.example.com", "password_env": "NOPE_X"}, "NOPE_X"),
        (
            {"name": "prod", "url": "https://r.example.com", "password_file": "/nonexistent/x"},
            "cannot be read",
        ),
        ({"name": "prod", "url": "https://r.example.com", "sync_interval_minutes": -1}, "≥ 0"),
    ],
)
def test_a_registries_file_with_a_mistake_stops_start_up_naming_it(tmp_path, entry, message):
    path = write(tmp_path / "registries.json", [entry])
    with pytest.raises(ImproperlyConfigured, match="entry 1") as error:
        read_registries_file(path)
    assert message in str(error.value)


def test_two_registries_of_one_name_and_an_empty_file_are_refused(tmp_path):
    same = {"name": "prod", "url": "https://r.example.com"}
    with pytest.raises(ImproperlyConfigured, match="names prod more than once"):
        read_registries_file(write(tmp_path / "a.json", [same, same]))
    with pytest.raises(ImproperlyConfigured, match="non-empty JSON list"):
        read_registries_file(write(tmp_path / "b.json", []))


def test_registry_url_alone_is_the_registry_default(db, settings):
    settings.REGISTRIES = None
    settings.REGISTRY_URL = "https://registry.example.com"
    [default] = rows.configured()
    assert (default.name, default.url) == ("default", "https://registry.example.com")
    assert rows.get().name == "default"
    assert Registry.objects.get(name="default").configured


def test_a_registry_taken_out_of_the_configuration_keeps_its_rows_unconfigured(db, settings):
    settings.REGISTRY_URL = ""
    settings.REGISTRIES = [RegistryConfig(name="old", url="https://old.example.com")]
    old = rows.get("old")
    Repository.objects.create(registry=old, name="team/api")
    settings.REGISTRIES = [RegistryConfig(name="new", url="https://new.example.com")]

    assert [r.name for r in rows.known()] == ["new", "old"]
    old.refresh_from_db()
    assert not old.configured and old.repositories.count() == 1
    with pytest.raises(rows.UnknownRegistry, match="no registry named nope"):
        rows.get("nope")


# -- two real registries -----------------------------------------------------------------


def test_the_same_image_in_two_registries_is_two_repositories_and_two_sets_of_blobs(two, db):
    sync("prod")
    sync("staging")

    prod, staging = repository("prod"), repository("staging")
    digest = two.images["prod"].digest
    assert digest == two.images["staging"].digest
    assert Manifest.objects.filter(digest=digest).count() == 2
    shared = two.images["prod"].blob_digests[0]
    assert set(Blob.objects.filter(digest=shared).values_list("registry__name", flat=True)) == {
        "prod",
        "staging",
    }
    # Each registry collects its own storage: the shared layer is reclaimable in each.
    assert (
        figures.figures(prod.registry)["stored_bytes"]
        == figures.figures(staging.registry)["stored_bytes"]
    )
    plan = planning.plan_deletion(repository=prod, digests=[digest])
    assert plan.reclaimable_bytes >= 4_000


def test_a_deletion_in_one_registry_leaves_the_other_intact_byte_for_byte(two, db):
    sync("prod")
    sync("staging")
    before = snapshot(two.staging)
    rows_before = sorted(
        Manifest.objects.filter(repository__registry__name="staging").values_list(
            "digest", "last_pulled_at"
        )
    )
    prod = repository("prod")
    digest = two.images["prod"].digest
    plan = planning.plan_deletion(repository=prod, digests=[digest])

    with registry_client(prod.registry) as client:
        outcome = execution.execute_deletion(
            repository=prod,
            digests=[digest],
            fingerprint=plan.fingerprint,
            user=None,
            client=client,
        )

    assert outcome.succeeded and [item.digest for item in outcome.deleted] == [digest]
    assert RegistryClient(two.prod.url).head_manifest(REPO, digest) is None
    assert snapshot(two.staging) == before
    assert (
        sorted(
            Manifest.objects.filter(repository__registry__name="staging").values_list(
                "digest", "last_pulled_at"
            )
        )
        == rows_before
    )
    assert Tag.objects.filter(repository__registry__name="staging", name="v1").exists()
    assert not Manifest.objects.filter(repository__registry__name="prod", digest=digest).exists()


def event_envelope(repository: str, digest: str) -> bytes:
    event = {
        "id": f"evt-{time.monotonic_ns()}",
        "timestamp": "2026-11-30T10:00:00.123456789Z",
        "action": "pull",
        "target": {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "repository": repository,
            "digest": digest,
        },
        "request": {"method": "GET", "useragent": "docker/27.3.1"},
    }
    return json.dumps({"events": [event]}).encode()


def test_events_sent_with_another_registrys_token_are_refused(two, client, db):
    sync("prod")
    sync("staging")
    digest = two.images["prod"].digest
    body = event_envelope(REPO, digest)

    def post(path, token):
        return client.post(
            path, body, content_type=V1, headers={"Authorization": f"Bearer {token}"}
        )

    assert post("/registry/prod/events", "staging-token-2").status_code == 401
    assert post("/registry/staging/events", "prod-token-1").status_code == 401
    assert post("/registry/nope/events", "prod-token-1").status_code == 404
    assert post("/registry/events", "prod-token-1").status_code == 404  # no `default` here
    assert not RegistryEvent.objects.exists()

    assert post("/registry/prod/events", "prod-token-1").status_code == 200
    [event] = RegistryEvent.objects.all()
    assert event.registry.name == "prod"
    pulled = dict(
        Manifest.objects.filter(digest=digest).values_list(
            "repository__registry__name", "last_pulled_at"
        )
    )
    assert pulled["prod"] is not None and pulled["staging"] is None


@pytest.mark.django_db(transaction=True)
def test_a_registry_stopped_in_the_middle_of_its_sync_delays_no_other(two, settings):
    """prod's sync crawls through a proxy that slows every manifest; prod is stopped while
    it runs. staging syncs meanwhile, start to end, under its own lease; prod's sync ends,
    in bounded time, with an error naming the registry."""
    settings.REGISTRY_DEADLINE = 5
    with FaultProxy(two.prod.url) as proxy:
        proxy.delay("/v2/team/api/manifests/", seconds=2)
        settings.REGISTRIES = [
            RegistryConfig(name="prod", url=proxy.url),
            *[config for config in settings.REGISTRIES if config.name == "staging"],
        ]
        prod = rows.get("prod")
        outcome = {}

        def sync_prod() -> None:
            from django.db import connection

            try:
                client = RegistryClient(proxy.url, max_retries=0, deadline=5.0)
                outcome["summary"] = sync_registry(client, registry=prod, workers=1)
            finally:
                connection.close()

        thread = threading.Thread(target=sync_prod)
        thread.start()
        time.sleep(0.5)  # prod's sync holds its lease and waits on the slow registry
        two.prod.stop()
        started = time.monotonic()
        staging = sync("staging")
        took = time.monotonic() - started
        assert thread.is_alive(), "prod's sync was expected to still be running"
        thread.join(timeout=60)

    assert not thread.is_alive()
    assert staging.manifests_added == 2 and took < 30
    assert repository("staging").manifests.count() == 2
    assert outcome["summary"].errors, "prod's sync should say its registry failed"


def test_events_of_a_registry_that_is_down_wait_while_the_others_are_stored(two, db):
    prod, staging = rows.get("prod"), rows.get("staging")
    pushed = {}
    for registry, server in ((prod, two.prod), (staging, two.staging)):
        image = ImagePusher(server.url).push_image(
            "team/web", tag="new", layers=[random_layer(1_000, f"{registry.name} web")]
        )
        pushed[registry.name] = image
        envelope = event_envelope("team/web", image.digest).replace(b'"pull"', b'"push"')
        from registry.notifications import parse_envelope

        events.record(parse_envelope(envelope), registry)
    two.prod.stop()

    result = events.drain()

    assert "prod" in result.registry_down
    assert Manifest.objects.filter(
        repository__registry=staging, digest=pushed["staging"].digest
    ).exists()
    waiting = RegistryEvent.objects.get(registry=prod, action="push")
    assert waiting.state == RegistryEvent.State.RECEIVED and waiting.next_attempt_at


def test_each_registry_has_its_own_periodic_sync(two, db, settings):
    settings.SYNC_INTERVAL_MINUTES = 15
    started = worker.schedule_due()
    assert sorted(job.registry for job in started if job.kind == Job.Kind.SYNC) == [
        "prod",
        "staging",
    ]
    assert worker.schedule_due() == []  # each claimed once per period


def test_a_policy_scoped_to_one_registry_never_touches_the_other(two, db):
    sync("prod")
    sync("staging")
    before = snapshot(two.prod)
    policy = policies.parse_policy(
        {
            "name": "staging-only",
            "registries": ["staging"],
            "rules": [{"keep": "always", "tags": ["v2"]}],
        }
    )
    preview = engine.dry_run(policy)
    assert [(r.registry, r.name) for r in preview.repositories] == [("staging", REPO)]
    assert preview.repositories[0].selected == (two.images["staging"].digest,)

    with_clients = {}

    def client_for(registry):
        with_clients.setdefault(registry.name, registry_client(registry))
        return with_clients[registry.name]

    result = runs.run(
        policy=policy,
        now=preview.now,
        fingerprint=preview.fingerprint,
        client_for=client_for,
        trigger="manual",
        started_by="tester",
    )

    assert result.record.outcome == "done", result.record.message
    assert set(with_clients) == {"staging"}  # prod was never even asked
    assert snapshot(two.prod) == before
    assert repository("prod").manifests.count() == 2
    assert RegistryClient(two.staging.url).head_manifest(REPO, two.images["staging"].digest) is None


def test_the_registries_page_shows_health_and_probed_capabilities(two, db, admin_client):
    sync("prod")
    for name in ("prod", "staging"):
        registry = rows.get(name)
        with registry_client(registry) as client:
            found = probes.probe(registry, client)
        if name == "prod":  # distribution 2.8, deletes on; it ignores `n` on tag lists
            assert found == {
                "catalog": True,
                "delete": True,
                "referrers": False,
                "tag_paging": False,
            }
        else:  # nothing synced yet: no repository to ask about
            assert found == {
                "catalog": True,
                "delete": None,
                "referrers": None,
                "tag_paging": None,
            }

    page = admin_client.get("/registries/").content.decode()

    assert 'data-registry="prod"' in page and 'data-registry="staging"' in page
    assert page.count("succeeded") == 1  # prod was synced, staging never
    assert (
        "Deletes enabled" in page and page.count('<span class="badge badge-active">yes</span>') == 3
    )


def test_a_registry_with_deletes_disabled_is_probed_as_such(tmp_path, db, settings):
    with LocalRegistry(tmp_path / "readonly", delete_enabled=False) as server:
        ImagePusher(server.url).push_image(REPO, tag="v1", layers=[random_layer(500, "ro")])
        settings.REGISTRY_URL = server.url
        registry = rows.get()
        Repository.objects.create(registry=registry, name=REPO)
        with registry_client(registry) as client:
            assert probes.probe(registry, client)["delete"] is False


def test_search_spans_every_registry_and_details_say_where_else_a_digest_lives(
    two, db, admin_client
):
    sync("prod")
    sync("staging")
    digest = two.images["prod"].digest

    by_digest = admin_client.get("/search/", {"q": digest[7:19]}).content.decode()
    by_tag = admin_client.get("/search/", {"q": "v1"}).content.decode()
    nothing = admin_client.get("/search/", {"q": "no-such-tag"}).content.decode()

    for page in (by_digest, by_tag):
        assert f"/r/prod/{REPO}/-/images/{digest}/" in page
        assert f"/r/staging/{REPO}/-/images/{digest}/" in page
    assert "Nothing matches" in nothing
    details = admin_client.get(f"/r/prod/{REPO}/-/images/{digest}/").content.decode()
    assert f"/r/staging/{REPO}/-/images/{digest}/" in details


def test_old_repository_addresses_lead_to_the_default_registrys_pages(db, admin_client):
    response = admin_client.get("/repositories/team/api/", {"search": "v1"})
    assert (response.status_code, response["Location"]) == (308, "/r/default/team/api/?search=v1")
    posted = admin_client.post("/repositories/team/api/-/delete/", {"digest": "sha256:x"})
    assert (posted.status_code, posted["Location"]) == (308, "/r/default/team/api/-/delete/")


def test_the_api_takes_a_registry_and_names_it_in_every_item(two, db, admin_client):
    sync("prod")
    sync("staging")

    everything = admin_client.get("/api/v1/repositories").json()
    staging = admin_client.get("/api/v1/repositories", {"registry": "staging"}).json()
    images = admin_client.get(f"/api/v1/repositories/{REPO}/images", {"registry": "prod"}).json()
    unnamed = admin_client.get(f"/api/v1/repositories/{REPO}/images")
    unknown = admin_client.get(f"/api/v1/repositories/{REPO}/images", {"registry": "nope"})

    assert sorted((r["registry"], r["name"]) for r in everything["results"]) == [
        ("prod", REPO),
        ("staging", REPO),
    ]
    assert [r["registry"] for r in staging["results"]] == ["staging"]
    assert {item["registry"] for item in images["results"]} == {"prod"}
    assert unnamed.status_code == 404 and "name a registry" in unnamed.json()["error"]["message"]
    assert unknown.status_code == 404
    storage_figures.refresh()  # the workers' work; the API reads what they keep
    storage = admin_client.get("/api/v1/storage", {"registry": "staging"}).json()
    assert storage["registry"] == "staging"


def test_commands_take_a_registry(two, db):
    call_command("sync_registry", "--registry", "staging", stdout=io.StringIO())
    out = io.StringIO()
    call_command("list_images", REPO, "--registry", "staging", "--json", stdout=out)
    listing = json.loads(out.getvalue())
    assert listing["registry"] == "staging" and listing["count"] == 2
    assert not Repository.objects.filter(registry__name="prod").exists()
    with pytest.raises(CommandError, match="name a registry"):
        call_command("list_images", REPO)
    with pytest.raises(CommandError, match="no registry named nope"):
        call_command("list_images", REPO, "--registry", "nope")


def test_a_full_sync_job_keeps_the_registrys_capabilities_current(two, db):
    from devtools.worker import run_tasks
    from hubimages.jobs import queue

    job = queue.start_sync(registry="staging", started_by="schedule")
    run_tasks()

    job.refresh_from_db()
    staging = rows.get("staging")
    assert job.state == "succeeded", job.message
    assert staging.capabilities["delete"] is True and staging.probed_at is not None
    assert rows.get("prod").probed_at is None  # its own job, its own probe
