"""In use, per registry (SPEC §11, §13), against two real registries holding the same image
(identical bytes, so identical digests): a report naming one registry's host protects that
registry's copy only, and a required source out of date stops retention on the registries
it names only; the rest of a run covering both goes ahead."""

from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO
from types import SimpleNamespace

import pytest
from django.core.management import call_command
from django.db.models import F

from devtools.pusher import ImagePusher, random_layer
from devtools.server import LocalRegistry
from hubimages.deletion import planning
from hubimages.inuse import matching, reports
from hubimages.models import InUseSource, Manifest, Repository, RetentionRun
from hubimages.registries import rows
from hubimages.registries.client import registry_client
from hubimages.registries.config import RegistryConfig
from hubimages.retention import engine, policies, runs
from hubimages.sync.service import sync_registry
from registry.client import RegistryClient

REPO = "team/api"
PLACE = "eu/shop/pod/api-5c7d"
BADGE = "In use: <bdi>eu</bdi> ×1"


@pytest.fixture
def two(tmp_path, settings, db):
    """`prod` and `staging`, each with `team/api:v1` (the same image) and `v2` (its own),
    synced and stale; a live report of the required source `eu` says prod's v1 runs."""
    with (
        LocalRegistry(tmp_path / "prod") as prod,
        LocalRegistry(tmp_path / "staging") as staging,
    ):
        settings.REGISTRY_URL = ""
        settings.REGISTRIES = [
            RegistryConfig(name="prod", url=prod.url),
            RegistryConfig(name="staging", url=staging.url),
        ]
        layers = [random_layer(4_000, "base"), random_layer(2_000, "app v1")]
        v1 = None
        for name, server in (("prod", prod), ("staging", staging)):
            pusher = ImagePusher(server.url)
            v1 = pusher.push_image(REPO, tag="v1", layers=layers)
            pusher.push_image(REPO, tag="v2", layers=[random_layer(3_000, f"{name} v2")])
            registry = rows.get(name)
            with registry_client(registry) as client:
                assert sync_registry(client, registry=registry).errors == []
        Manifest.objects.update(pushed_at=F("pushed_at") - timedelta(days=400), last_pulled_at=None)
        host = prod.url.split("://", 1)[1]
        reports.replace(
            source="eu",
            images=[{"reference": f"{host}/{REPO}@{v1.digest}", "where": PLACE}],
            ttl_seconds=3600,
            required=True,
        )
        yield SimpleNamespace(prod=prod, staging=staging, v1=v1, host=host)


def repository(registry: str) -> Repository:
    return Repository.objects.select_related("registry").get(registry__name=registry, name=REPO)


def expire(source: str = "eu") -> None:
    InUseSource.objects.filter(name=source).update(
        received_at=F("received_at") - timedelta(hours=2)
    )


def present(server: LocalRegistry) -> set[str]:
    client = RegistryClient(server.url)
    return {tag for tag in ("v1", "v2") if client.head_manifest(REPO, tag) is not None}


def sweep(registries: list[str]) -> policies.Policy:
    return policies.parse_policy(
        {
            "name": "sweep",
            "registries": registries,
            "rules": [{"keep": "always", "tags": ["none"]}],
        }
    )


def run(policy: policies.Policy, asked: set[str]) -> runs.RunResult:
    dry = engine.dry_run(policy)

    def client_for(registry):
        asked.add(registry.name)
        return registry_client(registry)

    return runs.run(
        policy=policy,
        now=dry.now,
        fingerprint=dry.fingerprint,
        client_for=client_for,
        trigger=RetentionRun.Trigger.MANUAL,
        started_by="tester",
    )


def test_a_report_protects_the_copy_on_the_registry_it_names_only(two, deleter_client):
    prod_page = deleter_client.get(f"/r/prod/{REPO}/").content.decode()
    staging_page = deleter_client.get(f"/r/staging/{REPO}/").content.decode()

    assert BADGE in prod_page and PLACE in prod_page
    assert "badge-in-use" not in staging_page
    on_prod = planning.plan_deletion(repository=repository("prod"), digests=[two.v1.digest])
    on_staging = planning.plan_deletion(repository=repository("staging"), digests=[two.v1.digest])
    assert on_prod.delete == ()
    assert [(i.digest, i.reason) for i in on_prod.keep] == [
        (two.v1.digest, f"in use by eu: {PLACE}")
    ]
    assert [i.digest for i in on_staging.delete] == [two.v1.digest]
    ids = Manifest.objects.filter(digest=two.v1.digest).values_list("pk", flat=True)
    in_use = matching.of_manifests(list(ids))
    assert [Manifest.objects.get(pk=pk).repository.registry.name for pk in in_use] == ["prod"]


def test_a_required_source_out_of_date_stops_retention_on_its_registry_only(
    two, deleter_client, tmp_path
):
    expire()
    both = sweep(["*"])

    dry = engine.dry_run(both)
    assert dry.blocked_registries == ("prod",) and not dry.blocks_everything
    # The report expired: prod's v1 is no longer protected, so only the block keeps it.
    assert {(r.registry, len(r.selected)) for r in dry.repositories} == {
        ("prod", 2),
        ("staging", 2),
    }
    policies.save_policy(both)
    page = deleter_client.get("/retention/policies/sweep/").content.decode()
    assert "A run would delete nothing on <bdi>prod</bdi> now: the required in-use source eu" in (
        page
    )
    policy_file = tmp_path / "sweep.json"
    policy_file.write_text(json.dumps(both.as_json()))
    out = StringIO()
    call_command("apply_retention", str(policy_file), "--dry-run", stdout=out)
    assert "A run would delete nothing on prod now: the required in-use source eu" in (
        out.getvalue()
    )
    assert "in-use-blocking" in deleter_client.get(f"/r/prod/{REPO}/-/delete/").content.decode()
    staging_preview = deleter_client.get(f"/r/staging/{REPO}/-/delete/").content.decode()
    assert "in-use-blocking" not in staging_preview

    asked: set[str] = set()
    result = run(both, asked)

    record = result.record
    assert record.outcome == RetentionRun.Outcome.INCOMPLETE, record.message
    assert asked == {"staging"}  # prod was neither locked nor re-read, let alone changed
    assert present(two.prod) == {"v1", "v2"}
    assert present(two.staging) == set()
    notes = {note["registry"]: note for note in record.repositories}
    assert (
        notes["prod"]["note"]
        == "nothing deleted here: the required in-use source eu is out of date"
    )
    assert (notes["prod"]["deleted"], notes["staging"]["deleted"]) == (0, 2)
    assert record.message.endswith(
        "The required in-use source eu last reported 2\xa0h ago, longer ago than its time to "
        "live (1 hour): what it runs now is unknown. Retention deletes nothing on registry "
        "prod until it reports again."
    )


def test_a_run_covering_only_blocked_registries_is_blocked_whole(two):
    expire()
    asked: set[str] = set()

    result = run(sweep(["prod"]), asked)

    assert result.record.outcome == RetentionRun.Outcome.BLOCKED
    assert result.record.message.startswith("Nothing was deleted: the required in-use source eu")
    assert asked == set() and present(two.prod) == {"v1", "v2"}


def test_a_run_covering_no_blocked_registry_is_not_held_up(two):
    expire()
    asked: set[str] = set()

    result = run(sweep(["staging"]), asked)

    assert result.record.outcome == RetentionRun.Outcome.DONE, result.record.message
    assert "in-use" not in result.record.message
    assert present(two.staging) == set() and present(two.prod) == {"v1", "v2"}


def watching_prod(two) -> None:
    """A second required source, `us`, whose report names prod (a digest of no repository
    here): out of date, it blocks prod; live or not, it changes no plan."""
    nothing = "sha256:" + "0" * 64
    reports.replace(
        source="us",
        images=[{"reference": f"{two.host}/other/app@{nothing}", "where": "us/x/pod/y"}],
        ttl_seconds=3600,
        required=True,
    )


def test_a_source_going_out_of_date_during_the_run_is_caught_under_the_locks(two, monkeypatch):
    watching_prod(two)
    recheck = runs._recheck

    def late(client_for, repositories):  # the report runs out while the run re-reads
        expire("us")
        return recheck(client_for, repositories)

    monkeypatch.setattr(runs, "_recheck", late)
    asked: set[str] = set()

    result = run(sweep(["*"]), asked)

    assert result.record.outcome == RetentionRun.Outcome.INCOMPLETE, result.record.message
    assert asked == {"prod", "staging"}  # both locked and re-read: prod was not blocked yet
    assert present(two.prod) == {"v1", "v2"} and present(two.staging) == set()
    assert "The required in-use source us last reported 2\xa0h ago" in result.record.message


def test_a_source_reporting_again_during_the_run_opens_no_registry_it_did_not_lock(
    two, monkeypatch
):
    watching_prod(two)
    expire("us")
    recheck = runs._recheck

    def reported(client_for, repositories):
        InUseSource.objects.filter(name="us").update(
            received_at=F("received_at") + timedelta(hours=2)
        )
        return recheck(client_for, repositories)

    monkeypatch.setattr(runs, "_recheck", reported)
    asked: set[str] = set()

    result = run(sweep(["*"]), asked)

    # prod was neither locked nor re-read: it stays out of this run, though now live.
    assert result.record.outcome == RetentionRun.Outcome.INCOMPLETE, result.record.message
    assert asked == {"staging"}
    assert present(two.prod) == {"v1", "v2"} and present(two.staging) == set()
    notes = {note["registry"]: note["note"] for note in result.record.repositories}
    assert notes["prod"] == "nothing deleted here: the required in-use source us is out of date"
