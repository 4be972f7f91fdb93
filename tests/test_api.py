"""The HTTP API (SPEC §9) through the Django test client, against a real registry: every
endpoint with its parameters and paging, the permission, scope and CSRF walls, the 409 of
a plan that changed, and the JSON shape of every error."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from devtools.worker import run_tasks
from hubimages.api import errors as api_errors
from hubimages.deletion import planning
from hubimages.inventory import lists
from hubimages.inventory import repositories as inventory_repositories
from hubimages.lib import formatting
from hubimages.lib.audit import Actor
from hubimages.models import ApiToken, Job, Manifest, Repository
from hubimages.teams import services
from tests import builders
from tests.api_helpers import (
    API,
    IMAGES_REPO,
    REPO,
    assert_error,
    bearer,
    documented,
    post_json,
    push_stock,
)

IMAGES = f"{API}/repositories/{REPO}/images"
DELETE = f"{API}/repositories/{REPO}/delete-images"


@pytest.fixture
def stock(pusher, sync):
    return push_stock(pusher, sync)


@pytest.fixture
def reader(viewer):
    return bearer(viewer, ApiToken.Scope.READ)


def digests(response) -> list[str]:
    return [item["digest"] for item in response.json()["results"]]


def list_images_json(*args: str) -> dict:
    out = StringIO()
    call_command("list_images", REPO, "--json", *args, stdout=out)
    return json.loads(out.getvalue())


# -- repositories -----------------------------------------------------------------------------


def test_repositories_are_listed_with_their_figures(stock, client, reader):
    response = client.get(f"{API}/repositories", headers=reader)

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2 and body["next"] is None and body["previous"] is None
    proj = next(item for item in body["results"] if item["name"] == REPO)
    overview = inventory_repositories.repository_overview().get(name=REPO)
    assert proj == {
        "registry": "default",
        "name": REPO,
        "tag_count": overview.tag_count,
        "image_count": 6,  # old, orphan, rebuilt, index, edge, main
        "stale_count": 2,
        "size": overview.total_size,
        "last_pushed": formatting.iso(overview.last_pushed),
        "synced_at": formatting.iso(Repository.objects.get(name=REPO).synced_at),
    }


def test_repositories_are_searched_ordered_and_paged(stock, client, reader):
    names = lambda response: [item["name"] for item in response.json()["results"]]  # noqa: E731
    url = f"{API}/repositories"

    assert names(client.get(url, {"search": "GROUP"}, headers=reader)) == [REPO]
    assert names(client.get(url, {"ordering": "-name"}, headers=reader)) == [IMAGES_REPO, REPO]
    assert names(client.get(url, {"ordering": "-size"}, headers=reader)) == [REPO, IMAGES_REPO]
    first = client.get(url, {"page_size": 1}, headers=reader).json()
    assert [item["name"] for item in first["results"]] == [REPO]
    assert first["next"] == "http://testserver/api/v1/repositories?page_size=1&page=2"
    second = client.get(first["next"], headers=reader).json()
    assert [item["name"] for item in second["results"]] == [IMAGES_REPO]
    assert second["next"] is None
    assert second["previous"] == "http://testserver/api/v1/repositories?page_size=1&page=1"


# -- images -----------------------------------------------------------------------------------


def test_a_repositorys_images_come_in_the_list_images_json_shape(stock, client, reader):
    response = client.get(IMAGES, {"page_size": 100}, headers=reader)

    assert response.status_code == 200
    body = response.json()
    assert body["results"] == list_images_json()["results"]
    assert body["count"] == 6
    index = next(item for item in body["results"] if item["digest"] == stock.index.digest)
    assert index["kind"] == "index" and index["tags"] == ["latest"]
    assert index["platforms"] == ["linux/amd64", "linux/arm64"]
    assert [child["digest"] for child in index["children"]] == [
        child.digest for child in stock.index.children
    ]
    edge = next(item for item in body["results"] if item["digest"] == stock.edge.digest)
    assert [child["digest"] for child in edge["children"]] == [stock.signature.digest]


def test_status_finds_the_stale_the_active_and_the_unknown_images(stock, client, reader):
    """The recent images carry no build time and no push or pull was seen: Unknown, dated
    by when the sync first saw them, until a pull (here `main`'s) dates one. Children and
    referrers take their index's or subject's status."""
    Manifest.objects.filter(digest=stock.main.digest).update(last_pulled_at=timezone.now())

    stale = client.get(IMAGES, {"status": "stale"}, headers=reader)
    active = client.get(IMAGES, {"status": "active"}, headers=reader)
    unknown = client.get(IMAGES, {"status": "unknown"}, headers=reader)

    assert set(digests(stale)) == {stock.old.digest, stock.orphan.digest}
    assert all(item["stale"] and item["status"] == "stale" for item in stale.json()["results"])
    assert digests(active) == [stock.main.digest]
    assert active.json()["results"][0]["status"] == "active"
    assert set(digests(unknown)) == {stock.rebuilt.digest, stock.index.digest, stock.edge.digest}
    for item in unknown.json()["results"]:
        assert item["status"] == "unknown" and not item["stale"]
        assert item["first_seen"] == item["last_pushed"] and item["last_pushed_estimated"]
        assert {child["status"] for child in item["children"]} <= {"unknown"}
    edge = next(item for item in unknown.json()["results"] if item["digest"] == stock.edge.digest)
    assert [child["status"] for child in edge["children"]] == ["unknown"]  # its signature


FILTERS = {
    "all": {"old", "orphan", "rebuilt", "index", "edge", "main"},
    "tagged": {"old", "rebuilt", "index", "edge", "main"},
    "untagged": {"orphan"},
    "index": {"index"},
    "image": {"old", "orphan", "rebuilt", "edge", "main"},
}


def test_each_filter_keeps_only_its_items_and_combines_with_status(stock, client, reader):
    for filter_, expected in FILTERS.items():
        response = client.get(IMAGES, {"filter": filter_}, headers=reader)
        assert set(digests(response)) == {getattr(stock, n).digest for n in expected}, filter_

    stale_tagged = client.get(IMAGES, {"filter": "tagged", "status": "stale"}, headers=reader)
    assert digests(stale_tagged) == [stock.old.digest]


def test_search_matches_tags_digest_prefixes_and_a_childs_digest(stock, client, reader):
    searches = {
        "ED": {stock.edge.digest},  # tag substring, any case
        "dGE": {stock.edge.digest},
        "AI": {stock.main.digest},
        "ATEST": {stock.index.digest},
        "2.": {stock.rebuilt.digest},
        stock.main.digest[:20]: {stock.main.digest},
        stock.main.hex[:12]: {stock.main.digest},  # without sha256:
        stock.arm.hex[:12]: {stock.index.digest},  # a child's digest finds its index
        "nothing-like-this": set(),
    }
    for search, expected in searches.items():
        assert set(digests(client.get(IMAGES, {"search": search}, headers=reader))) == expected


def test_ordering_follows_the_list_sort_in_both_directions(stock, client, reader):
    for ordering in lists.SORTS:
        response = client.get(IMAGES, {"ordering": ordering}, headers=reader)
        expected = [row["digest"] for row in list_images_json(f"--sort={ordering}")["results"]]
        assert digests(response) == expected, ordering
    by_size = client.get(IMAGES, {"ordering": "-size"}, headers=reader).json()["results"]
    assert [item["size"] for item in by_size] == sorted(
        (item["size"] for item in by_size), reverse=True
    )


def test_pages_walk_every_item_once_and_keep_the_other_parameters(stock, client, reader):
    seen = []
    url = IMAGES + "?filter=image&ordering=size&page_size=2"
    pages = 0
    while url:
        body = client.get(url, headers=reader).json()
        assert body["count"] == 5
        seen += [item["digest"] for item in body["results"]]
        assert len(body["results"]) <= 2
        url = body["next"]
        pages += 1
        if url:
            assert "filter=image" in url and "ordering=size" in url and "page_size=2" in url
    assert pages == 3
    assert seen == [
        row["digest"] for row in list_images_json("--filter=image", "--sort=size")["results"]
    ]

    past = client.get(IMAGES, {"page": 4, "page_size": 2, "filter": "image"}, headers=reader)
    assert (
        "page 4 is past the last page (3"
        in assert_error(past, 404, "page_out_of_range")["error"]["message"]
    )


def test_an_empty_list_is_one_empty_page(stock, client, reader):
    response = client.get(IMAGES, {"search": "nothing-like-this"}, headers=reader)

    assert response.json() == {"count": 0, "next": None, "previous": None, "results": []}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"stauts": "stale"}, "stauts"),  # a typo must not list (and delete) everything
        ({"status": "stail"}, "status"),
        ({"filter": "untaged"}, "filter"),
        ({"ordering": "name"}, "ordering"),
        ({"page_size": "101"}, "page_size"),
        ({"page_size": "0"}, "page_size"),
        ({"page": "x"}, "page"),
        ({"search": "x" * 201}, "search"),
    ],
)
def test_bad_parameters_are_refused_with_the_parameter_named(stock, client, reader, params, field):
    body = assert_error(client.get(IMAGES, params, headers=reader), 422, "invalid_request")

    assert [problem["field"] for problem in body["error"]["fields"]] == [field]
    assert field in body["error"]["message"]


@pytest.mark.parametrize(
    ("url", "query", "field"),
    [
        (IMAGES, "status=stale&status=active", "status"),
        (IMAGES, "filter=image&search=a&filter=index", "filter"),
        (f"{API}/repositories", "ordering=name&ordering=-size&page=1", "ordering"),
        (f"{API}/retention-policies", "page=1&page=2", "page"),
        (f"{API}/repositories", "registry=default&registry=staging", "registry"),
        (f"{IMAGES}/sha256:{'0' * 64}", "registry=default&registry=staging", "registry"),
        (f"{API}/storage", "registry=default&registry=staging", "registry"),
    ],
)
def test_a_parameter_given_twice_is_refused_with_its_name(client, reader, url, query, field):
    """Which of two values wins is a guess a cleanup script must never depend on."""
    body = assert_error(client.get(f"{url}?{query}", headers=reader), 422, "invalid_request")

    assert body["error"]["fields"] == [{"field": field, "message": "given more than once"}]
    assert f"{field} is given more than once" in body["error"]["message"]


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        (
            "registry=default&registry=staging",
            {"field": "registry", "message": "given more than once"},
        ),
        ("regsitry=staging", {"field": "regsitry", "message": "unknown parameter"}),
    ],
)
def test_deleting_in_a_registry_named_twice_or_misspelt_is_refused_and_starts_nothing(
    stock, client, deleter, query, problem
):
    """Which registry's images go must not be a guess: neither the last of two values nor
    the default one in place of a misspelt parameter."""
    token = bearer(deleter)
    plan = post_json(client, DELETE, {"digests": [stock.old.digest]}, headers=token).json()
    deleting = {"digests": [stock.old.digest], "dry_run": False, "fingerprint": plan["fingerprint"]}
    jobs = Job.objects.count()

    response = post_json(client, f"{DELETE}?{query}", deleting, headers=token)

    body = assert_error(response, 422, "invalid_request")
    assert body["error"]["fields"] == [problem]
    assert Job.objects.count() == jobs


@pytest.mark.parametrize(
    ("url", "field"),
    [
        (f"{API}/repositories?search=a%00b", "search"),
        (f"{IMAGES}?search=%0A", "search"),
        (f"{API}/repositories/team/a%00b/images", "name"),
        (f"{API}/repositories/Team/API/images", "name"),
        (f"{API}/repositories/a%00b/images/sha256:{'0' * 64}", "name"),
        (f"{API}/repositories/a%00b/delete-images", "name"),
        (f"{API}/retention-policies/a%00b", "name"),
        (f"{API}/retention-policies/a%00b/dry-run", "name"),
        (f"{API}/repositories?registry=a%00b", "registry"),
        (f"{IMAGES}?registry=Prod", "registry"),
        (f"{API}/storage?registry=-prod", "registry"),
        (f"{API}/repositories/{REPO}/delete-images?registry=a%00b", "registry"),
    ],
)
def test_a_name_or_search_no_registry_could_hold_is_refused_naming_it(client, deleter, url, field):
    """Control characters reach no database (PostgreSQL refuses U+0000 in a query: a
    500), and a name the registry's grammar forbids names nothing."""
    token = bearer(deleter)
    if url.partition("?")[0].endswith(("delete-images", "dry-run")):
        response = post_json(client, url, {"digests": ["0" * 64]}, headers=token)
    else:
        response = client.get(url, headers=token)

    body = assert_error(response, 422, "invalid_request")

    assert [problem["field"] for problem in body["error"]["fields"]] == [field]
    document = client.get(f"{API}/openapi.json", headers=token).json()
    for path, operations in document["paths"].items():
        if "{name}" in path:  # every operation that takes a name documents its 422
            assert all("422" in operation["responses"] for operation in operations.values())


def test_a_repository_named_like_an_endpoint_part_is_still_addressed(stock, client, reader):
    response = client.get(f"{API}/repositories/{IMAGES_REPO}/images", headers=reader)

    assert digests(response) == [stock.other.digest]
    detail = client.get(
        f"{API}/repositories/{IMAGES_REPO}/images/{stock.other.digest}", headers=reader
    )
    assert detail.json()["tags"] == ["v1"]
    assert_error(client.get(f"{API}/repositories/team/images", headers=reader), 404, "not_found")


def test_an_unknown_repository_is_a_404(stock, client, reader):
    body = assert_error(
        client.get(f"{API}/repositories/no/such/images", headers=reader), 404, "not_found"
    )

    assert "no/such" in body["error"]["message"]


# -- one image --------------------------------------------------------------------------------


def test_an_images_details_have_layers_labels_referrers_and_times(stock, client, reader):
    response = client.get(f"{IMAGES}/{stock.edge.digest}", headers=reader)

    assert response.status_code == 200
    detail = response.json()
    row = next(r for r in list_images_json()["results"] if r["digest"] == stock.edge.digest)
    assert {key: detail[key] for key in row} == row  # the list's fields, the same values
    assert detail["platform"] == "linux/amd64"
    assert detail["labels"] == {"org.opencontainers.image.source": "https://example.test/proj"}
    assert [
        (layer["position"], layer["size"], layer["created_by"]) for layer in detail["layers"]
    ] == [
        (1, 1_000, "ADD rootfs.tar /"),
        (2, 900, "RUN make install"),
    ]
    assert detail["layers"][0]["digest"] == stock.edge.layer_digests[0]
    assert detail["config_digest"] == stock.edge.config_digest
    assert [r["digest"] for r in detail["referrers"]] == [stock.signature.digest]
    assert detail["referrers"][0]["tags"] == [f"sha256-{stock.edge.hex}.sig"]
    assert detail["parents"] == [] and detail["subject"] is None


def test_an_index_details_list_its_children_and_a_child_names_its_index(stock, client, reader):
    index = client.get(f"{IMAGES}/{stock.index.digest}", headers=reader).json()
    child = client.get(f"{IMAGES}/{stock.arm.digest}", headers=reader).json()

    assert [c["digest"] for c in index["children"]] == [c.digest for c in stock.index.children]
    assert [c["platform"] for c in index["children"]] == [
        "linux/amd64",
        "linux/arm64",
        "unknown/unknown",
        "unknown/unknown",
    ]
    assert index["layers"] == [] and index["platform"] == ""
    assert child["parents"] == [stock.index.digest] and child["platform"] == "linux/arm64"


def test_a_digest_that_is_not_one_or_not_here_is_refused(stock, client, reader):
    assert_error(client.get(f"{IMAGES}/sha256:abc", headers=reader), 422, "invalid_request")
    missing = "sha256:" + "0" * 64
    body = assert_error(client.get(f"{IMAGES}/{missing}", headers=reader), 404, "not_found")
    assert missing in body["error"]["message"]
    assert_error(
        client.get(f"{API}/repositories/{IMAGES_REPO}/images/{stock.edge.digest}", headers=reader),
        404,
        "not_found",
    )


# -- delete-images ----------------------------------------------------------------------------


def delete_images_dry_run_json(*digests_: str) -> dict:
    out = StringIO()
    call_command("delete_images", REPO, *digests_, "--dry-run", "--json", stdout=out)
    return json.loads(out.getvalue())


def test_a_dry_run_answers_the_command_lines_plan_with_its_fingerprint(stock, client, deleter):
    selection = [stock.index.digest, stock.old.digest]
    response = post_json(
        client, DELETE, {"digests": selection, "dry_run": True}, headers=bearer(deleter)
    )

    assert response.status_code == 200
    body = response.json()
    plan = planning.plan_deletion(repository=Repository.objects.get(name=REPO), digests=selection)
    flags = {"in_use", "active", "latest", "signed", "signature"}
    assert {
        **body,
        "delete": [{k: v for k, v in i.items() if k not in flags} for i in body["delete"]],
        "keep": [{k: v for k, v in i.items() if k != "in_use"} for i in body["keep"]],
    } == {
        **delete_images_dry_run_json(*selection),
        "fingerprint": plan.fingerprint,
        "refused": [],
    }
    # Beside each item, the guard rails the UI shows (SPEC §13): nothing here is in use.
    items = {item["digest"]: item for item in body["delete"]}
    assert {k: items[stock.index.digest][k] for k in flags} == {
        "in_use": [],
        "active": True,
        "latest": True,
        "signed": False,
        "signature": False,
    }
    assert items[stock.old.digest]["active"] is False and not items[stock.old.digest]["latest"]
    assert all(item["in_use"] == [] for item in body["keep"])
    assert {item["digest"] for item in body["delete"]} == {
        stock.index.digest,
        stock.amd.digest,
        stock.arm.digest,
        *(a.digest for a in stock.attestations),
        stock.old.digest,
    }
    assert body["tags_removed"] == ["1.0", "latest"] and body["reclaimable_bytes"] > 6_000
    assert not Job.objects.exists()


def test_the_dry_run_flags_a_signed_image_and_its_signature(stock, client, deleter):
    body = post_json(
        client, DELETE, {"digests": [stock.edge.digest]}, headers=bearer(deleter)
    ).json()

    items = {item["digest"]: item for item in body["delete"]}
    assert (items[stock.edge.digest]["signed"], items[stock.edge.digest]["signature"]) == (
        True,
        False,
    )
    assert (
        items[stock.signature.digest]["signed"],
        items[stock.signature.digest]["signature"],
    ) == (
        False,
        True,
    )


def test_a_dry_run_is_the_default_and_names_what_cannot_be_deleted(stock, client, deleter):
    response = post_json(
        client, DELETE, {"digests": [stock.amd.hex, stock.main.digest]}, headers=bearer(deleter)
    )

    assert response.status_code == 200
    body = response.json()
    assert [item["digest"] for item in body["delete"]] == [stock.main.digest]
    assert body["refused"] == [
        {
            "digest": stock.amd.digest,
            "reason": f"used by index {stock.index.digest[:19]}, which stays — delete the index "
            "instead or remove it from the index first",
        }
    ]
    assert not Job.objects.exists()


def test_deleting_with_the_fingerprint_starts_a_job_that_deletes_exactly_the_plan(
    stock, client, deleter, registry_client
):
    token = bearer(deleter)
    stale = [
        item["digest"]
        for item in client.get(IMAGES, {"status": "stale"}, headers=token).json()["results"]
    ]
    plan = post_json(client, DELETE, {"digests": stale}, headers=token).json()

    response = post_json(
        client,
        DELETE,
        {"digests": stale, "dry_run": False, "fingerprint": plan["fingerprint"]},
        headers=token,
    )

    assert response.status_code == 202
    job = Job.objects.get()
    assert response.json() == {"id": job.pk, "url": f"/api/v1/jobs/{job.pk}"}
    assert response["Location"] == f"/api/v1/jobs/{job.pk}"
    assert (job.kind, job.user, job.params["fingerprint"]) == (
        "deletion",
        deleter,
        plan["fingerprint"],
    )
    queued = client.get(response["Location"], headers=token).json()
    assert queued["status"] == "queued" and queued["outcome"] == {}

    run_tasks()

    done = client.get(response["Location"], headers=token).json()
    assert done["status"] == "succeeded" and done["message"] == ""
    assert {item["digest"] for item in done["outcome"]["deleted"]} == set(stale)
    assert done["outcome"]["reclaimed_bytes"] == plan["reclaimable_bytes"]
    assert done["outcome"]["failed"] == [] and done["finished_at"]
    assert all(registry_client.head_manifest(REPO, digest) is None for digest in stale)
    assert client.get(IMAGES, {"status": "stale"}, headers=token).json()["count"] == 0


def test_a_plan_that_changed_answers_409_with_the_new_plan_and_deletes_nothing(
    stock, client, deleter, pusher, sync, registry_client
):
    token = bearer(deleter)
    old_plan = post_json(client, DELETE, {"digests": [stock.old.digest]}, headers=token).json()
    pusher.tag(REPO, "still-used", stock.old)  # someone tags it meanwhile
    sync()

    response = post_json(
        client,
        DELETE,
        {"digests": [stock.old.digest], "dry_run": False, "fingerprint": old_plan["fingerprint"]},
        headers=token,
    )

    body = assert_error(response, 409, "plan_changed")
    assert body["plan"]["tags_removed"] == ["1.0", "still-used"]
    assert body["plan"]["fingerprint"] != old_plan["fingerprint"]
    assert (
        body["plan"]
        == post_json(client, DELETE, {"digests": [stock.old.digest]}, headers=token).json()
    )
    assert not Job.objects.exists()
    assert registry_client.head_manifest(REPO, stock.old.digest) is not None


def test_a_plan_that_changes_after_the_job_started_deletes_nothing_and_the_job_says_so(
    stock, client, deleter, pusher
):
    token = bearer(deleter)
    plan = post_json(client, DELETE, {"digests": [stock.old.digest]}, headers=token).json()
    started = post_json(
        client,
        DELETE,
        {"digests": [stock.old.digest], "dry_run": False, "fingerprint": plan["fingerprint"]},
        headers=token,
    )
    pusher.tag(REPO, "late", stock.old)  # only the worker's re-read of the registry sees it

    run_tasks()

    job = client.get(started["Location"], headers=token).json()
    assert job["status"] == "failed" and job["outcome"]["stale"] is True
    assert job["outcome"]["deleted"] == [] and "late" in job["outcome"]["plan"]["tags_removed"]
    assert Manifest.objects.filter(digest=stock.old.digest).exists()


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"digests": ["OLD"], "dry_run": False}, 422, "fingerprint_required"),
        ({"digests": []}, 422, "invalid_request"),
        ({"digests": ["sha256:nothex"]}, 422, "invalid_request"),
        ({"digests": ["OLD"], "dryrun": False}, 422, "invalid_request"),  # a typo never deletes
        ({"digests": "OLD"}, 422, "invalid_request"),
        ({"digests": ["OLD"], "dry_run": "no"}, 422, "invalid_request"),
    ],
)
def test_a_bad_delete_request_is_refused_and_deletes_nothing(
    stock, client, deleter, body, status, code
):
    body = json.loads(json.dumps(body).replace("OLD", stock.old.digest))

    assert_error(post_json(client, DELETE, body, headers=bearer(deleter)), status, code)
    assert not Job.objects.exists()


HEX = "0123456789abcdef" * 4


@pytest.mark.parametrize(
    "digest",
    [
        "",
        "sha256:abc",
        "SHA256:" + HEX.upper(),
        "sha256:" + HEX.upper(),
        " sha256:" + HEX,
        "sha256:" + HEX + "\n",
        "sha512:" + HEX,
        "md5:" + HEX,
    ],
)
def test_a_selected_digest_the_api_refuses_is_one_its_document_forbids(client, deleter, digest):
    Repository.objects.create(name=REPO)
    token = bearer(deleter)

    refused = post_json(client, DELETE, {"digests": [digest]}, headers=token)

    body = assert_error(refused, 422, "invalid_request")
    assert body["error"]["fields"][0]["field"] == "digests[0]"
    assert not documented(client, token, "DeleteImagesIn").is_valid({"digests": [digest]})


def test_an_image_path_with_a_digest_the_document_forbids_is_refused(stock, client, reader):
    upper = "sha256:" + stock.edge.hex.upper()

    assert_error(client.get(f"{IMAGES}/{upper}", headers=reader), 422, "invalid_request")
    assert client.get(f"{IMAGES}/{stock.edge.digest}", headers=reader).status_code == 200


def test_the_selected_digests_the_api_accepts_are_ones_its_document_allows(client, deleter):
    Repository.objects.create(name=REPO)
    token = bearer(deleter)
    schema = documented(client, token, "DeleteImagesIn")
    for digest in ["sha256:" + HEX, HEX, "sha512:" + HEX * 2]:
        selection = {"digests": [digest]}
        assert post_json(client, DELETE, selection, headers=token).status_code == 200
        assert schema.is_valid(selection)


def test_the_document_says_that_deleting_needs_the_fingerprint(client, deleter):
    Repository.objects.create(name=REPO)
    token = bearer(deleter)
    schema = documented(client, token, "DeleteImagesIn")
    selection = ["sha256:" + HEX]

    for body in [
        {"digests": selection, "dry_run": False},
        {"digests": selection, "dry_run": False, "fingerprint": None},
        {"digests": selection, "dry_run": False, "fingerprint": ""},
    ]:
        refused = post_json(client, DELETE, body, headers=token)
        assert_error(refused, 422, "fingerprint_required")
        assert not schema.is_valid(body)
    assert schema.is_valid({"digests": selection})
    assert schema.is_valid({"digests": selection, "dry_run": True, "fingerprint": None})
    assert schema.is_valid({"digests": selection, "dry_run": False, "fingerprint": "f" * 64})


def test_running_a_plan_that_refuses_part_of_the_selection_is_refused(stock, client, deleter):
    token = bearer(deleter)
    selection = {"digests": [stock.amd.digest, stock.old.digest]}
    plan = post_json(client, DELETE, selection, headers=token).json()

    response = post_json(
        client,
        DELETE,
        {**selection, "dry_run": False, "fingerprint": plan["fingerprint"]},
        headers=token,
    )

    body = assert_error(response, 422, "plan_refused")
    assert body["plan"]["refused"][0]["digest"] == stock.amd.digest
    assert not Job.objects.exists()


def test_a_token_never_deletes_more_than_its_user_may(stock, client, viewer, deleter):
    selection = {"digests": [stock.old.digest]}
    read_token = bearer(deleter, ApiToken.Scope.READ)
    viewers_token = bearer(viewer, ApiToken.Scope.READ_DELETE)

    scope = assert_error(
        post_json(client, DELETE, selection, headers=read_token), 403, "insufficient_scope"
    )
    assert "read+delete" in scope["error"]["message"]
    denied = assert_error(
        post_json(client, DELETE, selection, headers=viewers_token), 403, "permission_denied"
    )
    assert "viewer" in denied["error"]["message"]
    # ... and the same walls for a run with a genuine fingerprint.
    fingerprint = post_json(client, DELETE, selection, headers=bearer(deleter)).json()[
        "fingerprint"
    ]
    run = {**selection, "dry_run": False, "fingerprint": fingerprint}
    assert_error(post_json(client, DELETE, run, headers=read_token), 403, "insufficient_scope")
    assert_error(post_json(client, DELETE, run, headers=viewers_token), 403, "permission_denied")
    assert not Job.objects.exists()
    # Reading is open to both.
    assert client.get(IMAGES, headers=read_token).status_code == 200
    assert client.get(IMAGES, headers=viewers_token).status_code == 200


def test_a_user_who_loses_the_permission_loses_it_for_their_tokens_too(stock, client, deleter):
    from django.contrib.auth.models import Permission

    token = bearer(deleter)
    assert (
        post_json(client, DELETE, {"digests": [stock.old.digest]}, headers=token).status_code == 200
    )
    deleter.user_permissions.remove(Permission.objects.get(codename="delete_manifest"))

    # Without the permission (which read as every role everywhere) nothing is left to see.
    assert_error(
        post_json(client, DELETE, {"digests": [stock.old.digest]}, headers=token),
        404,
        "not_found",
    )


def test_lowering_a_users_role_holds_for_their_token_at_the_next_request(
    stock, client, django_user_model
):
    user = django_user_model.objects.create_user("carol")
    team = services.create_team("api-team", by=Actor(name="tests"))
    services.add_members(team, [user], by=Actor(name="tests"))
    services.grant(team, "deleter", "org/**", by=Actor(name="tests"))
    token = bearer(user)
    dry_run = {"digests": [stock.old.digest]}
    assert post_json(client, DELETE, dry_run, headers=token).status_code == 200

    services.revoke(team, "deleter", "org/**", by=Actor(name="tests"))
    services.grant(team, "viewer", "org/**", by=Actor(name="tests"))
    assert client.get(IMAGES, headers=token).status_code == 200
    body = assert_error(post_json(client, DELETE, dry_run, headers=token), 403, "permission_denied")
    assert "deleter role" in body["error"]["message"]

    services.revoke(team, "viewer", "org/**", by=Actor(name="tests"))
    assert_error(client.get(IMAGES, headers=token), 404, "not_found")
    assert client.get(f"{API}/repositories", headers=token).json()["count"] == 0


# -- sessions and CSRF --------------------------------------------------------------------------


def test_a_browser_session_reads_without_a_token(stock, viewer_client):
    response = viewer_client.get(IMAGES, {"status": "stale"})

    assert response.status_code == 200 and response.json()["count"] == 2


def test_a_session_needs_the_csrf_token_on_unsafe_methods(stock, client_factory, deleter):
    web = client_factory(deleter, enforce_csrf_checks=True)
    selection = {"digests": [stock.old.digest]}

    refused = post_json(web, DELETE, selection)

    body = assert_error(refused, 403, "csrf_failed")
    assert "X-CSRFToken" in body["error"]["message"]
    web.get("/")  # any page sets the CSRF cookie, as in a browser
    csrf = web.cookies["csrftoken"].value
    allowed = post_json(web, DELETE, selection, headers={"X-CSRFToken": csrf})
    assert allowed.status_code == 200 and allowed.json()["delete"]


def test_a_token_needs_no_csrf_token_even_beside_a_session(stock, client_factory, deleter):
    web = client_factory(deleter, enforce_csrf_checks=True)

    response = post_json(web, DELETE, {"digests": [stock.old.digest]}, headers=bearer(deleter))

    assert response.status_code == 200


def test_a_bad_token_is_refused_even_beside_a_valid_session(stock, viewer_client):
    response = viewer_client.get(IMAGES, headers={"Authorization": "Bearer hubi_nothing"})

    assert_error(response, 401, "invalid_token")


# -- jobs -------------------------------------------------------------------------------------


@pytest.fixture
def deletion_job(stock, client, deleter):
    token = bearer(deleter)
    plan = post_json(client, DELETE, {"digests": [stock.old.digest]}, headers=token).json()
    response = post_json(
        client,
        DELETE,
        {"digests": [stock.old.digest], "dry_run": False, "fingerprint": plan["fingerprint"]},
        headers=token,
    )
    return response["Location"]


def test_a_job_is_seen_by_whoever_started_it_and_by_admins_only(
    deletion_job, client, viewer, django_user_model, deleter
):
    admin = django_user_model.objects.create_superuser("boss", password="x")

    assert client.get(deletion_job, headers=bearer(deleter, ApiToken.Scope.READ)).status_code == 200
    assert (
        client.get(deletion_job, headers=bearer(admin, ApiToken.Scope.READ)).json()["started_by"]
        == "deleter"
    )
    assert_error(
        client.get(deletion_job, headers=bearer(viewer, ApiToken.Scope.READ)), 404, "not_found"
    )


def test_a_running_job_shows_its_progress(deletion_job, client, deleter):
    Job.objects.update(state=Job.State.RUNNING, progress="Deleting 1 of 1", attempts=1)

    job = client.get(deletion_job, headers=bearer(deleter)).json()

    assert (job["status"], job["progress"], job["attempts"]) == ("running", "Deleting 1 of 1", 1)
    assert job["outcome"] == {}


# -- errors -----------------------------------------------------------------------------------


def test_every_error_answers_json_with_a_code_and_a_message(stock, client, deleter, viewer):
    token = bearer(deleter)
    cases = [
        (client.get(f"{API}/repositories"), 401, "not_authenticated"),
        (
            client.get(f"{API}/repositories", headers={"Authorization": "Bearer hubi_x"}),
            401,
            "invalid_token",
        ),
        (
            client.get(f"{API}/repositories", headers={"Authorization": "Basic dXNlcjpwdw=="}),
            401,
            "invalid_token",
        ),
        (post_json(client, DELETE, {"digests": ["x"]}), 401, "not_authenticated"),
        (
            client.post(DELETE, "{not json", content_type="application/json", headers=token),
            400,
            "bad_request",
        ),
        (
            post_json(client, DELETE, {"digests": [stock.old.digest]}, headers=bearer(viewer)),
            403,
            "permission_denied",
        ),
        (client.get(f"{API}/repositories/nope/images", headers=token), 404, "not_found"),
        (client.get(f"{API}/no-such-endpoint", headers=token), 404, "not_found"),
        (client.post(f"{API}/no-such-endpoint", headers=token), 404, "not_found"),
        (client.get("/api/v2/repositories", headers=token), 404, "not_found"),
        (client.get(f"{API}/jobs/999999", headers=token), 404, "not_found"),
        (client.delete(f"{API}/repositories", headers=token), 405, "method_not_allowed"),
        (client.get(DELETE, headers=token), 405, "method_not_allowed"),
        (client.get(IMAGES, {"page_size": 500}, headers=token), 422, "invalid_request"),
    ]
    for response, status, code in cases:
        assert_error(response, status, code)
    assert cases[0][0]["WWW-Authenticate"] == 'Bearer realm="hubimages"'
    assert cases[11][0]["Allow"] == "GET"


def test_no_url_under_api_answers_a_csrf_failure_page(client_factory, viewer):
    web = client_factory(viewer, enforce_csrf_checks=True)

    assert_error(web.post(f"{API}/"), 405, "method_not_allowed")
    assert_error(web.post(f"{API}/openapi.json"), 405, "method_not_allowed")
    assert_error(web.post(f"{API}/no-such-endpoint"), 404, "not_found")
    assert_error(web.put(f"{API}/repositories"), 405, "method_not_allowed")
    assert_error(post_json(web, DELETE, {"digests": ["x"]}), 403, "csrf_failed")
    index = web.get(f"{API}/").json()
    assert index == {
        "openapi": "/api/v1/openapi.json",
        "docs": "/api/v1/docs",
        "swagger": "/api/v1/docs/swagger",
    }
    assert_error(web.post(f"{API}/docs/swagger"), 405, "method_not_allowed")


def test_an_unexpected_failure_is_a_json_500_and_is_logged_with_its_traceback(
    stock, client, monkeypatch, caplog
):
    def broken(*args, **kwargs):
        raise RuntimeError("the database fell over")

    monkeypatch.setattr(inventory_repositories, "repository_overview", broken)
    with caplog.at_level(logging.ERROR, logger="hubimages.api"):
        response = client.get(f"{API}/repositories", headers=bearer_for_anyone())

    body = assert_error(response, 500, "internal_error")
    assert "fell over" not in body["error"]["message"]  # internals stay in the log
    record = next(r for r in caplog.records if r.name == "hubimages.api")
    assert record.exc_info and "the database fell over" in str(record.exc_info[1])


def bearer_for_anyone() -> dict[str, str]:
    """A read token of a user who sees every repository of `default` through a team."""
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user("someone", password="x")
    team = services.create_team("everyone", by=Actor(name="tests"))
    services.grant(team, "viewer", "**", by=Actor(name="tests"))
    services.add_members(team, [user], by=Actor(name="tests"))
    return bearer(user, ApiToken.Scope.READ)


def test_djangos_own_error_pages_answer_json_under_api_and_html_elsewhere(db):
    factory = RequestFactory()
    for handler, status in (
        (api_errors.handler400, 400),
        (api_errors.handler403, 403),
        (api_errors.handler404, 404),
    ):
        assert_error(
            handler(factory.get("/api/v1/x"), Exception("x")), status, api_errors.CODES[status]
        )
        assert handler(factory.get("/x"), Exception("x"))["Content-Type"].startswith("text/html")
    assert_error(api_errors.handler500(factory.get("/api/v1/x")), 500, "internal_error")
    assert api_errors.handler500(factory.get("/x"))["Content-Type"].startswith("text/html")


def test_every_operation_documents_the_400_django_may_answer_before_any_view(client, viewer):
    """A Host the settings do not allow, too many fields, a body over the limit: Django
    refuses these for any URL, before the view, with a JSON 400 under /api/."""
    reader = bearer(viewer, ApiToken.Scope.READ)

    refused = client.get(f"{API}/storage", headers={**reader, "Host": "elsewhere.example"})

    assert_error(refused, 400, "bad_request")
    document = client.get(f"{API}/openapi.json", headers=reader).json()
    operations = [op for path in document["paths"].values() for op in path.values()]
    assert len(operations) >= 16  # every operation, the Trash's and In use's too
    assert [op["operationId"] for op in operations if "400" not in op["responses"]] == []


def test_an_oversized_body_is_a_json_400(stock, client, deleter, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000

    response = post_json(
        client, DELETE, {"digests": [stock.old.digest] * 50}, headers=bearer(deleter)
    )

    assert_error(response, 400, "bad_request")


# -- query counts -------------------------------------------------------------------------------


def test_list_queries_stay_the_same_whatever_the_page_size(
    db, client, django_assert_max_num_queries
):
    repository = Repository.objects.create(name="big/repo")
    now = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(40):
        children = [
            builders.manifest(repository, f"child-{i}-{arch}", pushed_at=now, architecture=arch)
            for arch in ("amd64", "arm64")
        ]
        builders.manifest(
            repository,
            f"index-{i}",
            pushed_at=now - timedelta(hours=2 * i),  # every page starts with an index
            kind=Manifest.Kind.INDEX,
            tags=[f"v{i}", f"r{i}"],
            children=children,
        )
        builders.manifest(
            repository, f"image-{i}", pushed_at=now - timedelta(hours=2 * i + 1), tags=[f"i{i}"]
        )
    builders.finish(repository)
    token = bearer_for_anyone()
    client.get(f"{API}/repositories", headers=token)  # the token's first use is recorded once

    counts = {}
    for size in (1, 10, 100):
        with CaptureQueriesContext(connection) as images:
            response = client.get(
                f"{API}/repositories/big/repo/images", {"page_size": size}, headers=token
            )
        assert len(response.json()["results"]) == min(size, 80)
        with CaptureQueriesContext(connection) as repositories:
            assert (
                client.get(f"{API}/repositories", {"page_size": size}, headers=token).json()[
                    "count"
                ]
                == 1
            )
        counts[size] = (len(images), len(repositories))
    assert counts[1] == counts[10] == counts[100], counts
    # One more than before statuses cascaded: the index entries above the children shown.
    with django_assert_max_num_queries(13):
        client.get(f"{API}/repositories/big/repo/images", {"page_size": 100}, headers=token)


# -- the docs page and the document ---------------------------------------------------------------


def test_the_docs_pages_are_pages_behind_the_login_wall(client, viewer_client):
    for docs in (f"{API}/docs", f"{API}/docs/swagger"):
        anonymous = client.get(docs)
        assert anonymous.status_code == 302, docs
        assert anonymous["Location"].startswith("/accounts/login/"), docs


def test_the_reference_page_is_drawn_from_the_document_with_every_operation_and_schema(
    viewer_client,
):
    document = viewer_client.get(f"{API}/openapi.json").json()

    page = viewer_client.get(f"{API}/docs").content.decode()

    assert '<html lang="en">' in page and 'name="viewport"' in page
    assert '<a href="/">Repositories</a>' in page  # the way back
    assert 'href="/api/v1/docs" aria-current="page">API</a>' in page  # in the header
    assert "<script>" not in page and "swagger-ui" not in page
    operations = [(m.upper(), p) for p, item in document["paths"].items() for m in item]
    shown = re.findall(
        r'<h3 id="[^"]+"><span class="method method-\w+">(\w+)</span> '
        r'<code class="api-path">([^<]+)</code></h3>',
        page,
    )
    assert shown == operations
    for name in document["components"]["schemas"]:
        assert f'<h3 id="schema-{name.lower()}"><code>{name}</code></h3>' in page
    # Types link to their schema; descriptions keep their code and emphasis, escaped.
    assert '<a href="#schema-deleteimagesin"><code>DeleteImagesIn</code></a>' in page
    assert "<strong>Authentication</strong>" in page
    assert "<code>Authorization: Bearer &lt;token&gt;</code>" in page
    assert 'href="/api/v1/openapi.json"' in page and 'href="/api/v1/docs/swagger"' in page


def test_swagger_ui_stays_for_trying_calls_out(viewer_client):
    page = viewer_client.get(f"{API}/docs/swagger").content.decode()

    assert '<div id="swagger-ui"></div>' in page
    assert '"url": "/api/v1/openapi.json"' in page and '"validatorUrl": null' in page
    assert "<script>" not in page  # code comes from files only (a JSON data block is data)
    assert "cdn" not in page.lower()


def test_the_document_needs_credentials_like_the_rest(client, viewer_client, viewer):
    assert_error(client.get(f"{API}/openapi.json"), 401, "not_authenticated")
    assert_error(
        client.get(f"{API}/openapi.json", headers={"Authorization": "Bearer hubi_no"}),
        401,
        "invalid_token",
    )
    assert viewer_client.get(f"{API}/openapi.json").json()["info"]["title"] == "hubimages API"
    by_token = client.get(f"{API}/openapi.json", headers=bearer(viewer, ApiToken.Scope.READ))
    assert by_token.json()["paths"]


def test_the_storage_figures_are_the_storage_page_s_and_a_stale_figure_is_a_dry_run(
    stock, client, reader, deleter
):
    from hubimages.storage import figures as storage_figures

    storage_figures.refresh()  # what the workers do after a sync
    figures = client.get(f"{API}/storage", headers=reader).json()

    kept = storage_figures.kept()
    assert figures == {
        **storage_figures.figures(),
        "computed_at": formatting.iso(kept.computed_at),
        "current": True,
        "computing": False,
    }
    assert set(figures) == {
        "registry",
        "stored_bytes",
        "stale_reclaimable_bytes",
        "untagged_bytes",
        "complete",
        "repositories",
        "history",
        "computed_at",
        "current",
        "computing",
    }
    assert figures["complete"] is True  # the reader sees every repository of `default`
    mine = next(row for row in figures["repositories"] if row["name"] == REPO)
    stale = client.get(IMAGES, {"status": "stale"}, headers=reader)
    plan = client.post(
        DELETE,
        {"digests": digests(stale), "dry_run": True},
        content_type="application/json",
        headers=bearer(deleter),
    )
    assert digests(stale) and mine["stale_reclaimable_bytes"] == plan.json()["reclaimable_bytes"]
