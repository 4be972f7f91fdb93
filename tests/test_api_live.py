"""The HTTP API over real HTTP (`live_server`): the OpenAPI document validates and every
endpoint in it answers as it documents; a script holding only a token finds a repository's
stale images, dry-runs their deletion, deletes them and follows the job to its end (the
README's own curl script, run as it is, with a task worker); Swagger UI works in a real
browser under the Content Security Policy."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from django.core.management import call_command
from django.test import Client
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate as validate_spec
from playwright.sync_api import expect

from hubimages.accounts import tokens
from hubimages.models import ApiToken, Job
from hubimages.storage import figures as storage_figures
from tests.api_helpers import API, REPO, push_stock

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
ARTIFACTS = ROOT / "test-artifacts"
POLICY = {
    "name": "api-doc-check",
    "repositories": ["org/**"],
    "rules": [{"keep": "always", "tags": ["latest", "edge", "main", "2.*"]}],
}


@pytest.fixture
def stock(pusher, sync):
    return push_stock(pusher, sync)


@pytest.fixture
def admin(django_user_model):
    return django_user_model.objects.create_superuser("admin", password="x")


def session(user, scope: str = ApiToken.Scope.READ_DELETE) -> requests.Session:
    """An HTTP client holding nothing but a token of `user`."""
    web = requests.Session()
    web.headers["Authorization"] = f"Bearer {tokens.issue(user=user, name='t', scope=scope).token}"
    return web


# -- the document -------------------------------------------------------------------------


class Documented:
    """Calls endpoints and checks each answer against the document: its status is one the
    operation lists, and its body validates against that status's schema."""

    def __init__(self, document: dict, base: str) -> None:
        self.document = document
        self.base = base
        self.seen: set[tuple[str, str, int]] = set()

    def call(
        self, web: requests.Session, method: str, template: str, *, expect: int, **kwargs
    ) -> requests.Response:
        path_params = kwargs.pop("path", {})
        url = self.base + template.format(**{k: v for k, v in path_params.items()})
        response = web.request(method, url, timeout=30, **kwargs)
        assert response.status_code == expect, (method, url, response.text[:500])
        operation = self.document["paths"][template][method.lower()]
        documented = operation["responses"]
        assert str(expect) in documented, f"{method} {template} answers {expect}, undocumented"
        content = documented[str(expect)].get("content")
        if content is None:
            assert response.content == b""
        else:
            assert response.headers["Content-Type"].startswith("application/json")
            schema = content["application/json"]["schema"]
            OAS31Validator({**schema, "components": self.document["components"]}).validate(
                response.json()
            )
        self.seen.add((method.lower(), template, expect))
        return response

    def operations(self) -> set[tuple[str, str]]:
        return {
            (method, path)
            for path, item in self.document["paths"].items()
            for method in item
            if method in ("get", "post", "put", "delete", "patch")
        }


def test_the_openapi_document_validates_and_every_endpoint_answers_as_documented(
    stock, live_server, admin, viewer
):
    assert requests.get(f"{live_server.url}{API}/openapi.json", timeout=30).status_code == 401
    web = session(admin)
    document = web.get(f"{live_server.url}{API}/openapi.json", timeout=30).json()
    validate_spec(document)
    assert document["openapi"].startswith("3.1")
    assert set(document["components"]["securitySchemes"]) == {
        "BearerToken",
        "SessionCookie",
        "ReportToken",
    }

    api = Documented(document, live_server.url)
    repositories, images = f"{API}/repositories", f"{API}/repositories/{{name}}/images"
    detail, delete = f"{images}/{{digest}}", f"{API}/repositories/{{name}}/delete-images"
    policies, policy = f"{API}/retention-policies", f"{API}/retention-policies/{{name}}"
    repo = {"name": REPO}
    reader = session(viewer, ApiToken.Scope.READ)

    api.call(web, "GET", repositories, expect=200, params={"ordering": "-size", "page_size": 1})
    api.call(web, "GET", repositories, expect=422, params={"ordering": "bogus"})
    api.call(requests.Session(), "GET", repositories, expect=401)
    stale = api.call(web, "GET", images, path=repo, expect=200, params={"status": "stale"})
    api.call(web, "GET", images, path=repo, expect=404, params={"page": 9})
    api.call(web, "GET", images, path={"name": "no/such"}, expect=404)
    api.call(web, "GET", detail, path={**repo, "digest": stock.index.digest}, expect=200)
    api.call(web, "GET", detail, path={**repo, "digest": stock.edge.digest}, expect=200)
    api.call(web, "GET", detail, path={**repo, "digest": "sha256:" + "0" * 64}, expect=404)
    api.call(web, "GET", detail, path={**repo, "digest": "sha256:zz"}, expect=422)

    selection = {"digests": [item["digest"] for item in stale.json()["results"]]}
    plan = api.call(web, "POST", delete, path=repo, json=selection, expect=200).json()
    api.call(reader, "POST", delete, path=repo, json=selection, expect=403)
    api.call(web, "POST", delete, path=repo, json={"digests": []}, expect=422)
    api.call(web, "POST", delete, path=repo, data="{", expect=400)
    wrong = {**selection, "dry_run": False, "fingerprint": "0" * 64}
    assert "plan" in api.call(web, "POST", delete, path=repo, json=wrong, expect=409).json()
    run = {**selection, "dry_run": False, "fingerprint": plan["fingerprint"]}
    started = api.call(web, "POST", delete, path=repo, json=run, expect=202)
    assert started.headers["Location"] == started.json()["url"]

    job = f"{API}/jobs/{{job_id}}"
    api.call(web, "GET", job, path={"job_id": started.json()["id"]}, expect=200)
    api.call(reader, "GET", job, path={"job_id": started.json()["id"]}, expect=404)

    api.call(web, "POST", policies, json=POLICY, expect=201)
    api.call(web, "POST", policies, json=POLICY, expect=409)
    api.call(web, "POST", policies, json={"name": "x"}, expect=422)
    api.call(reader, "POST", policies, json=POLICY, expect=403)
    api.call(web, "GET", policies, expect=200)
    named = {"name": POLICY["name"]}
    api.call(web, "GET", policy, path=named, expect=200)
    api.call(web, "GET", policy, path={"name": "nope"}, expect=404)
    api.call(web, "PUT", policy, path=named, json={**POLICY, "enabled": False}, expect=200)
    dry_run = api.call(web, "POST", f"{policy}/dry-run", path=named, expect=200).json()
    stale_run = {"now": dry_run["now"], "fingerprint": "0" * 64}
    api.call(web, "POST", f"{policy}/run", path=named, json=stale_run, expect=409)
    good_run = {"now": dry_run["now"], "fingerprint": dry_run["fingerprint"]}
    api.call(web, "POST", f"{policy}/run", path=named, json=good_run, expect=202)
    api.call(web, "DELETE", policy, path=named, expect=204)

    trash = f"{API}/trash"
    api.call(web, "GET", trash, expect=200)
    restore = f"{trash}/{{operation}}/restore"
    api.call(web, "POST", restore, path={"operation": 999_999}, json={}, expect=404)

    in_use = f"{API}/in-use/{{source}}"
    reporter = session(admin, ApiToken.Scope.REPORT)
    # A Docker Hub reference: no registry here has that host, so it is counted, not kept.
    report = {"images": [{"reference": f"{REPO}:1.0", "where": "ci/x"}], "ttl_seconds": 600}
    answer = api.call(reporter, "PUT", in_use, path={"source": "ci"}, json=report, expect=200)
    assert answer.json()["other_registries"] == {"docker.io": 1}
    api.call(web, "PUT", in_use, path={"source": "ci"}, json=report, expect=403)
    api.call(reporter, "PUT", in_use, path={"source": "ci"}, json={"images": []}, expect=422)
    api.call(reporter, "PUT", in_use, path={"source": "ci"}, data="{", expect=400)
    api.call(reporter, "GET", repositories, expect=403)

    api.call(reader, "GET", f"{API}/storage", expect=503)  # no worker computed them yet
    storage_figures.refresh()
    figures = api.call(reader, "GET", f"{API}/storage", expect=200).json()
    assert storage_figures.figures_of(figures) == storage_figures.figures()
    api.call(requests.Session(), "GET", f"{API}/storage", expect=401)

    assert {(method, path) for method, path, _ in api.seen} == api.operations()
    assert Job.objects.count() == 2


def test_every_documented_operation_lists_its_errors_in_the_one_shape(admin, live_server):
    document = session(admin).get(f"{live_server.url}{API}/openapi.json", timeout=30).json()

    for path, item in document["paths"].items():
        for method, operation in item.items():
            statuses = set(operation["responses"])
            assert {"401", "429"} <= statuses, (method, path)
            for status in statuses - {"200", "201", "202", "204"}:
                schema = operation["responses"][status]["content"]["application/json"]["schema"]
                target = schema["$ref"].rsplit("/", 1)[-1]
                properties = document["components"]["schemas"][target]["properties"]
                assert "error" in properties, (method, path, status)


def test_repository_names_may_be_sent_with_encoded_slashes(stock, live_server, viewer):
    web = session(viewer, ApiToken.Scope.READ)

    plain = web.get(f"{live_server.url}{API}/repositories/{REPO}/images", timeout=30)
    encoded = web.get(
        f"{live_server.url}{API}/repositories/{quote(REPO, safe='')}/images", timeout=30
    )

    assert "%2F" in encoded.url
    assert encoded.status_code == 200 and encoded.json() == plain.json()


# -- done when ----------------------------------------------------------------------------


def readme_cleanup_script() -> str:
    """The README's example script, as it is printed there."""
    text = README.read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    [script] = [block for block in blocks if block.startswith('auth=(-H "Authorization')]
    return script


def test_a_script_with_only_a_token_cleans_up_a_repositorys_stale_images(
    stock, live_server, worker_thread, deleter, registry_client
):
    token = tokens.issue(user=deleter, name="ci", scope=ApiToken.Scope.READ_DELETE).token
    stale = {stock.old.digest, stock.orphan.digest}

    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", readme_cleanup_script()],
        env={"PATH": "/usr/bin:/bin", "HUBIMAGES": live_server.url, "TOKEN": token, "REPO": REPO},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    plan, outcome = (json.loads(part) for part in split_json(result.stdout))
    assert set(plan["delete"]) == stale and plan["refused"] == []
    assert plan["reclaimable_bytes"] > 7_000
    assert outcome["status"] == "succeeded" and outcome["message"] == ""
    assert set(outcome["deleted"]) == stale
    assert outcome["reclaimed_bytes"] == plan["reclaimable_bytes"]
    assert all(registry_client.head_manifest(REPO, digest) is None for digest in stale)
    assert registry_client.head_manifest(REPO, stock.rebuilt.digest) is not None
    # Run again, nothing is stale any more.
    again = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", readme_cleanup_script()],
        env={"PATH": "/usr/bin:/bin", "HUBIMAGES": live_server.url, "TOKEN": token, "REPO": REPO},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0 and again.stdout == f"nothing stale in {REPO}\n"


def split_json(text: str) -> list[str]:
    """The top-level JSON documents jq printed one after the other."""
    decoder, position, parts = json.JSONDecoder(), 0, []
    while position < len(text.rstrip()):
        _, end = decoder.raw_decode(text, position)
        parts.append(text[position:end])
        position = end
        while position < len(text) and text[position].isspace():
            position += 1
    return parts


def test_a_token_script_follows_a_job_until_it_ends(stock, live_server, worker_thread, deleter):
    """The same steps in Python, for the job's states on the way."""
    web = session(deleter)
    base = f"{live_server.url}{API}/repositories/{REPO}"
    digests = [i["digest"] for i in web.get(f"{base}/images?status=stale").json()["results"]]
    plan = web.post(f"{base}/delete-images", json={"digests": digests}).json()
    started = web.post(
        f"{base}/delete-images",
        json={"digests": digests, "dry_run": False, "fingerprint": plan["fingerprint"]},
    )
    statuses = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = web.get(live_server.url + started.json()["url"]).json()
        statuses.append(job["status"])
        if job["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.1)
    assert statuses[-1] == "succeeded", job
    assert set(statuses) <= {"queued", "running", "succeeded"}
    assert {item["digest"] for item in job["outcome"]["deleted"]} == set(digests)


# -- Swagger UI -------------------------------------------------------------------------------


@pytest.mark.browser
def test_swagger_ui_works_under_the_content_security_policy(stock, signed_in_page, live_server):
    page = signed_in_page()
    problems: list[str] = []
    page.on(
        "console",
        lambda message: problems.append(message.text) if message.type == "error" else None,
    )
    page.on("pageerror", lambda error: problems.append(str(error)))
    hosts: set[str] = set()
    page.on("request", lambda request: hosts.add(request.url.split("/")[2]))

    response = page.goto("/api/v1/docs/swagger")

    policy = response.headers["content-security-policy"]
    assert (
        "script-src 'self'" in policy
        and "unsafe-inline" not in policy
        and "unsafe-eval" not in policy
    )
    assert page.locator("body").get_attribute("data-api-csrf") == "true"  # for Try it out
    operations = page.locator(".opblock")
    expect(operations.first).to_be_visible()
    document = page.request.get("/api/v1/openapi.json").json()  # with the session
    assert operations.count() == sum(len(item) for item in document["paths"].values()) >= 16
    # Try it out, with the session: the list of repositories comes back.
    listing = page.locator("#operations-repositories-hubimages_api_repositories_list_repositories")
    listing.locator(".opblock-summary").click()
    listing.get_by_role("button", name="Try it out").click()
    listing.get_by_role("button", name="Execute").click()
    expect(listing.locator(".live-responses-table tbody .response-col_status")).to_have_text("200")
    expect(listing.locator(".live-responses-table")).to_contain_text(REPO)
    assert problems == []
    assert hosts == {live_server.url.split("/")[2]}  # no CDN, nothing from elsewhere


def test_swagger_ui_s_files_are_collected_and_served_by_the_app_itself(admin, settings, tmp_path):
    """As in production: collectstatic with hashed names, WhiteNoise serving them."""
    settings.STATIC_ROOT = tmp_path / "static"
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
    }
    call_command("collectstatic", "--no-input", verbosity=0)
    web = Client()  # a new handler: WhiteNoise reads the collected files when it starts
    web.force_login(admin)

    page = web.get(f"{API}/docs/swagger").content.decode()

    assets = re.findall(r'(?:src|href)="(/static/ninja/[^"]+)"', page)
    assert {Path(asset).suffix for asset in assets} >= {".js", ".css"}
    for asset in assets:
        assert re.search(r"\.[0-9a-f]{12}\.", asset), asset  # hashed, cached for ever
        served = web.get(asset)
        assert served.status_code == 200 and "immutable" in served["Cache-Control"], asset


@pytest.mark.browser
def test_a_token_is_created_shown_once_copied_and_revoked_in_the_browser(
    signed_in_page, live_server
):
    page = signed_in_page()
    page.get_by_role("link", name="API tokens").click()
    page.get_by_label("Name").fill("nightly cleanup")
    page.get_by_label("Scope").select_option("read+delete")
    page.get_by_label("Expires in (days)").fill("30")
    page.get_by_role("button", name="Create token").click()

    token = page.locator("#new-token-value").inner_text()
    assert token.startswith("hubi_")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.get_by_role("button", name="Copy the new token").click()
    assert page.evaluate("navigator.clipboard.readText()") == token
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "api-tokens.png", full_page=True)
    works = requests.get(
        f"{live_server.url}{API}/repositories", headers={"Authorization": f"Bearer {token}"}
    )
    assert works.status_code == 200

    page.goto("/account/api-tokens/")
    expect(page.locator("#new-token-value")).to_have_count(0)  # shown once
    row = page.locator("tr.api-token")
    expect(row).to_contain_text("nightly cleanup")
    expect(row).to_contain_text("Read and delete")
    expect(row.locator(".last-used time")).to_have_count(1)
    row.get_by_role("button", name="Revoke").click()
    expect(page.locator(".messages")).to_contain_text("Revoked token nightly cleanup")
    expect(row).to_contain_text("Revoked")
    revoked = requests.get(
        f"{live_server.url}{API}/repositories", headers={"Authorization": f"Bearer {token}"}
    )
    assert revoked.status_code == 401
