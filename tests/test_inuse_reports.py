"""In-use reports (SPEC §13): `PUT /api/v1/in-use/{source}` with a `report` token and
`manage.py report_in_use` replace a source's report whole; tags are resolved when the
report arrives (an unknown one is said so); references to other registries are counted,
bad ones reject the whole report; a report token does nothing else and no other token
reports. Against a real registry, synced."""

from __future__ import annotations

import json
import re
import threading
from datetime import timedelta
from io import StringIO
from types import SimpleNamespace

import pytest
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.models import F

from devtools.pusher import random_layer
from hubimages.inuse import matching, references, reports
from hubimages.models import ApiToken, InUseReference, InUseSource, Registry
from hubimages.registries.config import RegistryConfig
from tests.api_helpers import API, assert_error, bearer, post_json, put_json

REPO = "team/api"
IN_USE = f"{API}/in-use"


@pytest.fixture
def reporter(django_user_model):
    """A service account that may report what runs, and nothing else."""
    user = django_user_model.objects.create_user("cluster-prod")
    user.user_permissions.add(Permission.objects.get(codename="add_inusesource"))
    return user


@pytest.fixture
def report_token(reporter) -> dict[str, str]:
    return bearer(reporter, ApiToken.Scope.REPORT)


@pytest.fixture
def stock(pusher, sync, registry_url):
    """A tagged image, a multi-arch index tagged `1.2`, and the registry's host as image
    references name it."""
    image = pusher.push_image(REPO, tag="1.0", layers=[random_layer(1_000, "one")])
    amd = pusher.push_image(REPO, layers=[random_layer(1_000, "amd")])
    arm = pusher.push_image(REPO, layers=[random_layer(1_000, "arm")], architecture="arm64")
    index = pusher.push_index(REPO, tag="1.2", images=[amd, arm])
    sync()
    host = registry_url.split("://", 1)[1]
    return SimpleNamespace(image=image, amd=amd, arm=arm, index=index, host=host)


def put_report(client, source: str, images: list, headers: dict, **body):
    body = {"images": images, "ttl_seconds": 3600, **body}
    return put_json(client, f"{IN_USE}/{source}", body, headers=headers)


def kept(source: str) -> set[tuple[str, str, str]]:
    return set(
        InUseReference.objects.filter(source__name=source).values_list("digest", "tag", "where")
    )


def test_a_report_replaces_the_sources_last_one_whole(client, stock, report_token):
    first = [
        {"reference": f"{stock.host}/{REPO}@{stock.image.digest}", "where": "prod/default/pod/a"},
        {"reference": f"{stock.host}/{REPO}@{stock.amd.digest}", "where": "prod/default/pod/b"},
    ]
    response = put_report(client, "prod", first, report_token, required=True)

    assert response.status_code == 200, response.content
    answer = response.json()
    assert answer["source"] == "prod" and answer["references"] == 2 and answer["required"]
    assert answer["unresolved"] == [] and answer["other_registries"] == {}
    assert kept("prod") == {
        (stock.image.digest, "", "prod/default/pod/a"),
        (stock.amd.digest, "", "prod/default/pod/b"),
    }
    source = InUseSource.objects.get()
    assert (source.size, source.registries, source.reported_by) == (2, ["default"], "cluster-prod")

    second = [{"reference": f"{stock.host}/{REPO}@{stock.arm.digest}", "where": "prod/x/pod/c"}]
    assert put_report(client, "prod", second, report_token).status_code == 200

    assert kept("prod") == {(stock.arm.digest, "", "prod/x/pod/c")}
    assert not InUseSource.objects.get().required  # the report says so, each time


def test_a_tag_is_resolved_to_its_digest_when_the_report_arrives(
    client, stock, report_token, pusher, sync
):
    images = [
        {"reference": f"{stock.host}/{REPO}:1.2", "where": "prod/default/deployment/api"},
        {"reference": f"{stock.host}/{REPO}:9.9", "where": "prod/default/deployment/old"},
        {"reference": f"{stock.host}/team/nothing:1.0", "where": "prod/default/pod/x"},
    ]
    answer = put_report(client, "prod", images, report_token).json()

    assert kept("prod") == {(stock.index.digest, "1.2", "prod/default/deployment/api")}
    assert answer["references"] == 1
    assert answer["unresolved"] == [
        {
            "reference": f"{stock.host}/{REPO}:9.9",
            "where": "prod/default/deployment/old",
            "reason": f"no tag 9.9 in {REPO} of registry default",
        },
        {
            "reference": f"{stock.host}/team/nothing:1.0",
            "where": "prod/default/pod/x",
            "reason": "no tag 1.0 in team/nothing of registry default",
        },
    ]
    assert len(InUseSource.objects.get().unresolved) == 2
    # The tag moves on: the report keeps what it named when it arrived.
    pusher.push_image(REPO, tag="1.2", layers=[random_layer(500, "moved")])
    sync()
    assert kept("prod") == {(stock.index.digest, "1.2", "prod/default/deployment/api")}


def test_a_tag_and_a_digest_together_name_the_digest(client, stock, report_token):
    images = [{"reference": f"{stock.host}/{REPO}:1.0@{stock.amd.digest}", "where": "p"}]
    put_report(client, "prod", images, report_token)

    assert kept("prod") == {(stock.amd.digest, "1.0", "p")}


def test_references_to_other_registries_are_counted_by_host_and_not_kept(
    client, stock, report_token
):
    digest = "sha256:" + "a" * 64
    images = [
        {"reference": "nginx:1.25", "where": "prod/default/pod/web"},
        {"reference": f"quay.io/org/tool@{digest}", "where": "prod/default/pod/tool"},
        {"reference": f"docker.io/library/redis@{digest}", "where": "prod/default/pod/cache"},
        {"reference": f"{stock.host}/{REPO}@{stock.image.digest}", "where": "prod/default/pod/a"},
    ]
    answer = put_report(client, "prod", images, report_token).json()

    assert answer["other_registries"] == {"docker.io": 2, "quay.io": 1}
    assert answer["references"] == 1
    assert InUseSource.objects.get().ignored == 3


def test_docker_hub_is_matched_by_any_of_its_names(db, settings):
    settings.REGISTRIES = [
        RegistryConfig(name="hub", url="https://registry-1.docker.io"),
        RegistryConfig(name="prod", url="https://registry.example.com:443"),
    ]
    digest = "sha256:" + "b" * 64
    images = [
        {"reference": f"nginx@{digest}", "where": "a"},
        {"reference": f"index.docker.io/library/nginx@{digest}", "where": "b"},
        {"reference": f"docker-pullable://docker.io/library/nginx@{digest}", "where": "c"},
        {"reference": f"REGISTRY.example.com/team/api@{digest}", "where": "d"},
    ]

    reports.replace(source="mixed", images=images, ttl_seconds=600)

    rows = InUseReference.objects.values_list("registry__name", "repository", "where")
    assert set(rows) == {
        ("hub", "library/nginx", "a"),
        ("hub", "library/nginx", "b"),
        ("hub", "library/nginx", "c"),
        ("prod", "team/api", "d"),
    }


@pytest.mark.parametrize(
    ("reference", "says"),
    [
        ("team/api@sha256:1234", "is not a digest"),
        ("registry.example.com/Team/API:1.0", "is not a repository name"),
        ("registry.example.com/team/api:-bad", "is not a tag"),
        ("sha256:" + "c" * 64, "image ID"),
        ("", "empty reference"),
    ],
)
def test_a_bad_reference_rejects_the_whole_report_and_changes_nothing(
    client, stock, report_token, reference, says
):
    good = [{"reference": f"{stock.host}/{REPO}@{stock.image.digest}", "where": "a"}]
    put_report(client, "prod", good, report_token)

    response = put_report(
        client, "prod", [*good, {"reference": reference, "where": "b"}], report_token
    )

    body = assert_error(response, 422, "invalid_report")
    assert body["error"]["fields"][0]["field"] == "images[1].reference"
    assert says in body["error"]["fields"][0]["message"]
    assert kept("prod") == {(stock.image.digest, "", "a")}


def test_the_report_is_checked_before_anything_is_read(client, stock, report_token):
    cases = [
        ({"images": [], "ttl_seconds": 5}, 422, "ttl_seconds"),
        ({"images": [], "ttl_seconds": 600, "required": "yes"}, 422, "required"),
        ({"images": [], "ttl_seconds": 600, "extra": 1}, 422, "extra"),
        ({"images": [{"reference": "x"}]}, 422, "ttl_seconds"),
    ]
    for body, status, field in cases:
        response = put_json(client, f"{IN_USE}/prod", body, headers=report_token)
        problem = assert_error(response, status, "invalid_request")
        assert field in json.dumps(problem["error"]["fields"])
    response = client.put(
        f"{IN_USE}/prod", b"{not json", content_type="application/json", headers=report_token
    )
    assert_error(response, 400, "bad_request")
    response = put_report(client, "no good/name", [], report_token)
    assert response.status_code in (404, 422)
    assert not InUseSource.objects.exists()


def test_a_report_larger_than_the_limit_gets_413(client, stock, report_token, monkeypatch):
    from hubimages.api import in_use

    monkeypatch.setattr(in_use, "MAX_REPORT_BYTES", 1000)
    images = [{"reference": f"{stock.host}/{REPO}@{stock.image.digest}", "where": "x" * 100}] * 20

    assert_error(put_report(client, "prod", images, report_token), 413, "too_large")
    assert not InUseSource.objects.exists()


def test_a_report_bigger_than_other_requests_may_be_is_taken(client, stock, report_token):
    """Django caps request bodies at 2.5 MB; a cluster's report may be bigger."""
    images = [
        {"reference": f"{stock.host}/{REPO}@{stock.image.digest}", "where": f"prod/ns/pod/{i:05}"}
        for i in range(40_000)
    ]
    assert len(json.dumps({"images": images})) > 2_621_440

    response = put_report(client, "prod", images, report_token)

    assert response.status_code == 200, response.content[:300]
    assert InUseReference.objects.count() == 40_000


# -- tokens ------------------------------------------------------------------------------------


def test_only_a_report_token_reports(client, stock, deleter, reporter, deleter_client):
    images = [{"reference": f"{stock.host}/{REPO}@{stock.image.digest}", "where": "a"}]
    for scope in (ApiToken.Scope.READ, ApiToken.Scope.READ_DELETE):
        response = put_report(client, "prod", images, bearer(deleter, scope))
        assert_error(response, 403, "insufficient_scope")
    assert_error(put_report(client, "prod", images, {}), 401, "not_authenticated")
    # A signed-in session is not a reporter either.
    assert put_report(deleter_client, "prod", images, {}).status_code == 401
    assert not InUseSource.objects.exists()


def test_a_report_token_of_a_user_without_the_permission_is_refused(
    client, stock, django_user_model
):
    somebody = django_user_model.objects.create_user("somebody")
    images = [{"reference": f"{stock.host}/{REPO}@{stock.image.digest}", "where": "a"}]

    response = put_report(client, "prod", images, bearer(somebody, ApiToken.Scope.REPORT))

    body = assert_error(response, 403, "permission_denied")
    assert "hubimages.add_inusesource" in body["error"]["message"]
    assert not InUseSource.objects.exists()


def test_a_report_token_does_nothing_else(client, stock, reporter, report_token):
    reporter.user_permissions.add(Permission.objects.get(codename="delete_manifest"))
    reads = [
        f"{API}/repositories",
        f"{API}/repositories/{REPO}/images",
        f"{API}/repositories/{REPO}/images/{stock.image.digest}",
        f"{API}/retention-policies",
        f"{API}/storage",
        f"{API}/openapi.json",
        f"{API}/jobs/1",
    ]
    for url in reads:
        assert_error(client.get(url, headers=report_token), 403, "insufficient_scope")
    response = post_json(
        client,
        f"{API}/repositories/{REPO}/delete-images",
        {"digests": [stock.image.digest], "dry_run": False, "fingerprint": "x"},
        headers=report_token,
    )
    assert_error(response, 403, "insufficient_scope")


def test_the_api_tokens_page_and_the_command_make_report_tokens(viewer_client, viewer, reporter):
    response = viewer_client.post(
        "/account/api-tokens/", {"name": "cluster", "scope": "report", "expires_in_days": ""}
    )
    assert response.status_code == 200
    assert ApiToken.objects.get(user=viewer).scope == ApiToken.Scope.REPORT
    out = StringIO()
    call_command("create_api_token", reporter.username, name="prod", scope="report", stdout=out)
    assert ApiToken.objects.get(user=reporter).scope == ApiToken.Scope.REPORT


# -- the command -------------------------------------------------------------------------------


def test_report_in_use_does_the_same_from_a_file(stock, tmp_path):
    path = tmp_path / "report.json"
    path.write_text(
        json.dumps(
            {
                "images": [
                    {"reference": f"{stock.host}/{REPO}:1.2", "where": "ci/deploy/api"},
                    {"reference": f"{stock.host}/{REPO}:0.1", "where": "ci/deploy/old"},
                ],
                "ttl_seconds": 7200,
                "required": True,
            }
        )
    )
    out, err = StringIO(), StringIO()

    call_command("report_in_use", "ci", str(path), stdout=out, stderr=err)

    assert kept("ci") == {(stock.index.digest, "1.2", "ci/deploy/api")}
    source = InUseSource.objects.get()
    assert (source.ttl_seconds, source.required) == (7200, True)
    assert source.reported_by.startswith("cli:")
    assert "Source ci: 1 references kept" in out.getvalue()
    assert f"unknown: {stock.host}/{REPO}:0.1 (ci/deploy/old)" in err.getvalue()


def test_report_in_use_refuses_a_bad_file_and_changes_nothing(stock, tmp_path):
    cases = {
        "not json": "is not JSON",
        json.dumps({"images": []}): "ttl_seconds is required",
        json.dumps({"images": [], "ttl_seconds": 600, "extra": 1}): "unknown keys extra",
        json.dumps({"images": [{"reference": "a@b"}], "ttl_seconds": 600}): "images[0].reference",
        json.dumps({"images": [], "ttl_seconds": 1}): "ttl_seconds must be from 60",
    }
    for text, says in cases.items():
        path = tmp_path / "report.json"
        path.write_text(text)
        with pytest.raises(CommandError, match=says.replace("[", r"\[").replace("]", r"\]")):
            call_command("report_in_use", "ci", str(path))
    with pytest.raises(CommandError, match="cannot read"):
        call_command("report_in_use", "ci", str(tmp_path / "missing.json"))
    assert not InUseSource.objects.exists()


# -- liveness and races ------------------------------------------------------------------------


def test_a_report_is_live_until_its_time_to_live_runs_out_by_the_databases_clock(stock):
    images = [{"reference": f"{stock.host}/{REPO}@{stock.image.digest}", "where": "a"}]
    reports.replace(source="prod", images=images, ttl_seconds=600)
    assert list(matching.live_sources().values()) == ["prod"]

    InUseSource.objects.update(received_at=F("received_at") - timedelta(seconds=599))
    assert list(matching.live_sources().values()) == ["prod"]
    InUseSource.objects.update(received_at=F("received_at") - timedelta(seconds=2))
    assert matching.live_sources() == {}


@pytest.mark.django_db(transaction=True)
def test_two_reports_of_one_source_arriving_together_end_as_one_of_them(settings):
    settings.REGISTRIES = [RegistryConfig(name="prod", url="https://registry.example.com")]
    first = [{"reference": f"registry.example.com/team/api@{'sha256:' + 'f' * 64}"}]
    reports.replace(source="prod", images=first, ttl_seconds=600)  # the source exists
    digests = {name: "sha256:" + name * 64 for name in "ab"}
    batches = {
        name: [
            {"reference": f"registry.example.com/team/api@{digests[name]}", "where": f"{name}{i}"}
            for i in range(3_000)
        ]
        for name in "ab"
    }
    start = threading.Barrier(2)
    errors = []

    def send(name: str) -> None:
        try:
            start.wait()
            reports.replace(source="prod", images=batches[name], ttl_seconds=600)
        except Exception as error:  # pragma: no cover - the assertion shows it
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=(name,)) for name in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    rows = set(InUseReference.objects.values_list("digest", flat=True))
    assert rows in ({digests["a"]}, {digests["b"]})
    assert InUseReference.objects.count() == 3_000
    assert InUseSource.objects.get().size == 3_000
    assert Registry.objects.filter(name="prod").exists()


def test_references_read_as_docker_reads_them():
    digest = "sha256:" + "d" * 64
    assert references.parse("nginx") == references.ImageReference(
        "docker.io", "library/nginx", "latest"
    )
    assert str(references.parse("nginx")) == "docker.io/library/nginx:latest"
    assert references.parse(f"host:5000/team/api:1.2@{digest}") == references.ImageReference(
        "host:5000", "team/api", "1.2", digest
    )
    assert references.parse("localhost/api:1").host == "localhost"
    assert references.parse("team/api:1").host == "docker.io"  # `team` is no host
    assert references.parse("Registry.Local/api").host == "registry.local"
    assert references.parse(f"docker-pullable://team/api@{digest}").repository == "team/api"
    assert references.parse("[::1]:5000/team/api:1").host == "[::1]:5000"
    with pytest.raises(references.ConfigDigest):
        references.parse(f"docker://{digest}")


# -- the In use page ---------------------------------------------------------------------------


def test_the_in_use_page_lists_each_source_with_its_age_size_state_and_whether_required(
    stock, viewer_client
):
    image = {"reference": f"{stock.host}/{REPO}@{stock.image.digest}", "where": "a"}
    reports.replace(source="prod", images=[image], ttl_seconds=600, required=True)
    reports.replace(
        source="ci",
        images=[image, {"reference": "quay.io/x/y:1", "where": "b"}],
        ttl_seconds=600,
    )
    InUseSource.objects.filter(name="prod").update(
        received_at=F("received_at") - timedelta(hours=3)
    )

    page = viewer_client.get("/in-use/").content.decode()

    assert '<a href="/in-use/" aria-current="page">In use</a>' in page
    ci = re.search(r'<tr class="in-use-source" data-source="ci">.*?</tr>', page, re.S)[0]
    prod = re.search(r'<tr class="in-use-source" data-source="prod">.*?</tr>', page, re.S)[0]
    assert '<span class="badge badge-active live">Live</span>' in ci
    assert "+1 on other registries" in ci and "just now" in ci
    assert '<span class="badge badge-warn expired">Expired</span>' in prod
    assert "protects nothing" in prod and "3\xa0h ago" in prod
    assert '<span class="badge badge-guard">Required</span>' in prod
    assert "Required" not in ci
    assert "The required in-use source prod last reported 3\xa0h ago" in page
    assert viewer_client.post("/in-use/").status_code == 405


def test_the_in_use_page_says_what_to_do_before_any_report(viewer_client, db):
    page = viewer_client.get("/in-use/").content.decode()

    assert "No reports yet" in page and "report" in page
