"""Who may do what, URL by URL (SPEC §14): a table of every URL pattern of
`hubimages/urls.py` and every operation of the API with its rule, visited as each of

- `owner`: in team `web`, `deleter` and `policy_admin` on `alpha/web`;
- `other`: in team `api`, `policy_admin` on `beta/api` (another repository);
- `viewer`: in team `readers`, `viewer` on `alpha/web`;
- `stranger`: signed in, in no team;
- `anonymous`: not signed in;
- `admin`: a superuser and staff (sees everything).

A repository (or policy) someone may not see answers 404, as one that does not exist; an
action on something they see but may not change answers 403. Lists (`lists=True`) name
`alpha/web` exactly to those who see it and `beta/api` exactly to those who see that. Every
request reads the grants at most once. A URL pattern or API operation without a row fails
`test_every_url_pattern_and_api_operation_has_a_rule`: a new URL needs a rule.

Adding a URL is one line in TABLE (the failing test prints one to start from):
`Row(key, RULE, method, url, ok=<its own answer>, data=… or body=…)`. The url and the
data may name the world's things: `{web_digest}` (alpha/web's image), `{web_operation}`
and `{api_operation}` (a deletion in alpha/web, in beta/api: what a Trash restores),
`{job}` (the owner's job), `{owner_token}`. The rules a new page usually needs are here:
SIGNED_IN (a list showing only what the user may see), VIEW and DELETE (one repository;
RESTORE, undoing a deletion, is DELETE's), STAFF, POLICY_ADMIN.

`python manage.py shell -c "from tests.test_rights import as_text; print(as_text())"`
prints the table.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlencode

import pytest
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import URLPattern, URLResolver, clear_url_caches, get_resolver

from hubimages.accounts import tokens
from hubimages.inuse import reports
from hubimages.lib.audit import Actor
from hubimages.models import (
    ApiToken,
    Deletion,
    DeletionRecord,
    Job,
    KeptManifest,
    Manifest,
    Registry,
    Repository,
    RetentionPolicy,
)
from hubimages.registries import rows as registry_rows
from hubimages.retention import policies
from hubimages.storage import figures as storage_figures
from hubimages.teams import services
from tests import builders

PERSONAS = ("anonymous", "stranger", "other", "viewer", "owner", "admin")
SEES = {"alpha/web": {"owner", "viewer", "admin"}, "beta/api": {"other", "admin"}}
OK = "ok"  # the row's own answer for who may
LOGIN = "login"  # pages send to the sign-in page; the API answers 401
BY = Actor(name="tests")


@dataclass(frozen=True)
class Rule:
    text: str
    answers: dict[str, int | str]


def rule(text: str, **answers: int | str) -> Rule:
    """Who gets what: personas not named get `OK`, but `anonymous`, who gets `LOGIN`."""
    return Rule(text, {p: answers.get(p, LOGIN if p == "anonymous" else OK) for p in PERSONAS})


PUBLIC = rule("anyone, signed in or not", anonymous=OK)
SIGN_IN = rule(
    "anyone: a step of signing in (404 with no identity provider configured)", anonymous=OK
)
REGISTRY = rule(
    "the registry alone, with its events token (401 to everyone else)",
    **{p: 401 for p in PERSONAS},
)
SIGNED_IN = rule("anyone signed in; shows only what they may see")
OWN_JOBS = rule(
    "anyone signed in; the jobs they started (staff: also every full sync and the jobs in "
    "repositories they see)"
)
OWN_TOKENS = rule("anyone signed in; their own tokens")
REGISTRIES = rule(
    "anyone signed in; the registries where a grant lets them see, counting only the "
    "repositories they see (staff: every registry)"
)
REDIRECT = rule("anyone signed in: a redirect to /r/default/…, whose page decides")
DOCUMENT = rule("anyone signed in (a session or a token of any scope)")
VIEW = rule(
    "viewer or above on the repository (404 otherwise: its existence does not leak)",
    stranger=404,
    other=404,
)
DELETE = rule(
    "deleter or above on the repository (404 if they may not see it, 403 if they only see it)",
    stranger=404,
    other=404,
    viewer=403,
)
RESTORE = rule(
    "deleter or above on the deletion's repository (404 if they may not see it, 403 if they "
    "only see it)",
    stranger=404,
    other=404,
    viewer=403,
)
TRASH_CHECK = rule(
    "deleter or above somewhere in the registry (403 otherwise)",
    stranger=403,
    viewer=403,
)
STAFF_VIEW = rule(
    "staff who may see the repository (404 if they may not see it, 403 if not staff)",
    stranger=404,
    other=404,
    viewer=403,
    owner=403,
)
STAFF = rule("staff (403 otherwise)", stranger=403, other=403, viewer=403, owner=403)
ADMIN_SITE = rule(
    "Django's admin: staff (anyone else is sent to its sign-in)",
    anonymous=302,
    stranger=302,
    other=302,
    viewer=302,
    owner=302,
)
OWN_JOB = rule(
    "who started the job, or staff who see its repository (a full sync: any staff; 404 otherwise)",
    stranger=404,
    other=404,
    viewer=404,
)
OWN_TOKEN = rule(
    "the token's owner (404 to anyone else, admins too)",
    stranger=404,
    other=404,
    viewer=404,
    admin=404,
)
POLICY_VIEW = rule(
    "whoever may see a repository the policy covers or could cover (404 otherwise)",
    stranger=404,
    other=404,
)
POLICY_ADMIN = rule(
    "policy_admin on everything the policy covers (404 if they may not see the policy, "
    "403 otherwise)",
    stranger=404,
    other=404,
    viewer=403,
)
POLICY_WRITER = rule("policy_admin somewhere (403 otherwise)", stranger=403, viewer=403)
REPORT = rule(
    "a `report` token of a user holding hubimages.add_inusesource (403 to any other token)",
    stranger=403,
    other=403,
    viewer=403,
    owner=403,
    admin=403,
)
POLICY_CREATE = rule(
    "policy_admin on everything the new policy covers (403 otherwise)",
    stranger=403,
    viewer=403,
    other=403,
)


@dataclass(frozen=True)
class Row:
    """How to visit one URL pattern (or API operation) and the rule it answers by.
    `url` and string values of `data` are formatted with the world's names."""

    key: str
    rule: Rule
    method: str = "get"
    url: str = ""
    ok: int = 200
    data: dict = field(default_factory=dict)
    body: object = None  # a JSON body (the API)
    lists: bool = False
    page: bool = False  # under /api/ but a page: visited signed in, not with a token


WEB = "/r/default/alpha/web"
POLICY_FORM = {
    "name": "{new_policy}",
    "registries": "default",
    "repositories": "alpha/web",
    "rule-0-keep": "always",
    "rule-0-tags": "*",
    "max_delete_fraction": "0.5",
}
POLICY_JSON = {
    "name": "new-policy",
    "registries": ["default"],
    "repositories": ["alpha/web"],
    "rules": [{"keep": "always", "tags": ["*"]}],
}

TABLE = [
    Row("", SIGNED_IN, url="/", lists=True),
    Row("sync/", STAFF, "post", "/sync/", ok=303),
    Row("search/", SIGNED_IN, url="/search/?q=a", lists=True),
    Row("registries/", REGISTRIES, url="/registries/"),
    Row("registries/<slug:registry>/sync/", STAFF, "post", "/registries/default/sync/", ok=303),
    Row(
        "r/<slug:registry>/<path:name>/-/images/<str:digest>/",
        VIEW,
        url=WEB + "/-/images/{web_digest}/",
    ),
    Row(
        "r/<slug:registry>/<path:name>/-/delete/",
        DELETE,
        url=WEB + "/-/delete/?digest={web_digest}",
    ),
    Row(
        "r/<slug:registry>/<path:name>/-/delete/confirm",
        DELETE,
        "post",
        WEB + "/-/delete/confirm",
        ok=409,
        data={"digest": "{web_digest}", "fingerprint": "stale", "confirm": "yes"},
    ),
    Row("r/<slug:registry>/<path:name>/-/sync/", STAFF_VIEW, "post", WEB + "/-/sync/", ok=303),
    Row(
        "r/<slug:registry>/<path:name>/-/selection/",
        DELETE,
        "post",
        WEB + "/-/selection/",
        ok=303,
        data={"action": "clear"},
    ),
    Row("r/<slug:registry>/<path:name>/", VIEW, url=WEB + "/"),
    Row("^repositories/(?P<rest>.+)$", REDIRECT, url="/repositories/alpha/web/", ok=308),
    Row("storage/", SIGNED_IN, url="/storage/", lists=True),
    Row("history/", SIGNED_IN, url="/history/", lists=True),
    Row("history/export.csv", SIGNED_IN, url="/history/export.csv", lists=True),
    Row("history/<int:deletion>/export.csv", VIEW, url="/history/{web_operation}/export.csv"),
    Row("audit/", STAFF, url="/audit/"),
    Row("audit/export.csv", STAFF, url="/audit/export.csv"),
    Row("audit/export.json", STAFF, url="/audit/export.json"),
    Row("jobs/", OWN_JOBS, url="/jobs/"),
    Row("jobs/<int:job_id>/", OWN_JOB, url="/jobs/{job}/"),
    Row("retention/", SIGNED_IN, url="/retention/", lists=True),
    Row("retention/new/", POLICY_WRITER, url="/retention/new/"),
    Row(
        "retention/new/save", POLICY_CREATE, "post", "/retention/new/save", ok=303, data=POLICY_FORM
    ),
    Row("retention/preview", POLICY_WRITER, "post", "/retention/preview", data=POLICY_FORM),
    Row(
        "retention/import",
        POLICY_CREATE,
        "post",
        "/retention/import",
        ok=303,
        data={"policy": json.dumps(POLICY_JSON).replace("{", "{{").replace("}", "}}")},
    ),
    Row("retention/policies/<str:name>/", POLICY_VIEW, url="/retention/policies/web-cleanup/"),
    Row(
        "retention/policies/<str:name>/save",
        POLICY_ADMIN,
        "post",
        "/retention/policies/web-cleanup/save",
        ok=303,
        data={**POLICY_FORM, "name": "web-cleanup"},
    ),
    Row(
        "retention/policies/<str:name>/run",
        POLICY_ADMIN,
        "post",
        "/retention/policies/web-cleanup/run",
        ok=409,
        data={"now": "2026-01-01T00:00:00+00:00", "fingerprint": "stale", "confirm": "yes"},
    ),
    Row(
        "retention/policies/<str:name>/delete",
        POLICY_ADMIN,
        "post",
        "/retention/policies/web-cleanup/delete",
        ok=303,
    ),
    Row(
        "retention/policies/<str:name>/export.json",
        POLICY_VIEW,
        url="/retention/policies/web-cleanup/export.json",
    ),
    Row("trash/", SIGNED_IN, url="/trash/", lists=True),
    Row("trash/check", TRASH_CHECK, "post", "/trash/check", ok=303, data={"registry": "default"}),
    Row(
        "trash/<int:operation>/restore",
        RESTORE,
        "post",
        "/trash/{web_operation}/restore",
        ok=303,
        data={"scope": "all"},
    ),
    Row("in-use/", SIGNED_IN, url="/in-use/"),
    Row("account/api-tokens/", OWN_TOKENS, url="/account/api-tokens/"),
    Row(
        "account/api-tokens/<int:token_id>/revoke",
        OWN_TOKEN,
        "post",
        "/account/api-tokens/{owner_token}/revoke",
        ok=303,
    ),
    Row("API GET /api/v1/ (index)", PUBLIC, url="/api/v1/"),
    Row("API GET /api/v1/openapi.json", DOCUMENT, url="/api/v1/openapi.json"),
    Row("API GET /api/v1/docs", DOCUMENT, url="/api/v1/docs", page=True),
    Row("API GET /api/v1/docs/swagger", DOCUMENT, url="/api/v1/docs/swagger", page=True),
    Row("API GET /repositories", SIGNED_IN, url="/api/v1/repositories", lists=True),
    Row(
        "API GET /repositories/{path:name}/images",
        VIEW,
        url="/api/v1/repositories/alpha/web/images",
    ),
    Row(
        "API GET /repositories/{path:name}/images/{oci_digest:digest}",
        VIEW,
        url="/api/v1/repositories/alpha/web/images/{web_digest}",
    ),
    Row(
        "API POST /repositories/{path:name}/delete-images",
        DELETE,
        "post",
        "/api/v1/repositories/alpha/web/delete-images",
        body={"digests": ["{web_digest}"]},
    ),
    Row("API GET /jobs/{int:job_id}", OWN_JOB, url="/api/v1/jobs/{job}"),
    Row("API GET /retention-policies", SIGNED_IN, url="/api/v1/retention-policies", lists=True),
    Row(
        "API POST /retention-policies",
        POLICY_CREATE,
        "post",
        "/api/v1/retention-policies",
        ok=201,
        body=POLICY_JSON,
    ),
    Row(
        "API GET /retention-policies/{name}",
        POLICY_VIEW,
        url="/api/v1/retention-policies/web-cleanup",
    ),
    Row(
        "API PUT /retention-policies/{name}",
        POLICY_ADMIN,
        "put",
        "/api/v1/retention-policies/web-cleanup",
        body={**POLICY_JSON, "name": "web-cleanup"},
    ),
    Row(
        "API DELETE /retention-policies/{name}",
        POLICY_ADMIN,
        "delete",
        "/api/v1/retention-policies/web-cleanup",
        ok=204,
    ),
    Row(
        "API POST /retention-policies/{name}/dry-run",
        rule(
            "as GET of the policy; shows only the repositories the caller sees",
            stranger=404,
            other=404,
        ),
        "post",
        "/api/v1/retention-policies/web-cleanup/dry-run",
    ),
    Row(
        "API POST /retention-policies/{name}/run",
        POLICY_ADMIN,
        "post",
        "/api/v1/retention-policies/web-cleanup/run",
        ok=409,
        body={"now": "2026-01-01T00:00:00Z", "fingerprint": "stale"},
    ),
    Row("API GET /storage", SIGNED_IN, url="/api/v1/storage", lists=True),
    Row("API GET /trash", SIGNED_IN, url="/api/v1/trash", lists=True),
    Row(
        "API POST /trash/{int:operation}/restore",
        RESTORE,
        "post",
        "/api/v1/trash/{web_operation}/restore",
        ok=202,
        body={"digests": []},
    ),
    Row(
        "API PUT /in-use/{source}",
        REPORT,
        "put",
        "/api/v1/in-use/ci",
        body={"images": [], "ttl_seconds": 600},
    ),
    Row(
        "^api/",
        rule("anyone: a JSON 404 for an address under /api/ that is none", anonymous=OK),
        url="/api/no/such/endpoint",
        ok=404,
    ),
    Row("registry/events", REGISTRY, "post", "/registry/events", data={"events": "[]"}),
    Row(
        "registry/<slug:registry>/events",
        REGISTRY,
        "post",
        "/registry/default/events",
        data={"events": "[]"},
    ),
    Row("healthz", PUBLIC, url="/healthz"),
    Row("accounts/login/", PUBLIC, url="/accounts/login/"),
    Row(
        "accounts/oidc/<str:provider_id>/login/", SIGN_IN, url="/accounts/oidc/oidc/login/", ok=404
    ),
    Row(
        "accounts/oidc/<str:provider_id>/login/callback/",
        SIGN_IN,
        url="/accounts/oidc/oidc/login/callback/",
        ok=404,
    ),
    Row(
        "accounts/ (django.contrib.auth.urls)",
        rule("Django's own account pages: signed in (the sign-in form itself: anyone)"),
        url="/accounts/password_change/",
    ),
    Row("admin/ (the admin site)", ADMIN_SITE, url="/admin/"),
]


# -- the table covers the URL configuration -------------------------------------------------


def url_keys() -> set[str]:
    """Each top-level pattern of the URL configuration; an `include` as one key (its
    pattern and what it includes), and the API as its pages and its operations."""
    from hubimages.api import api

    keys = set()
    for entry in get_resolver().url_patterns:
        pattern = str(entry.pattern)
        if isinstance(entry, URLPattern):
            keys.add(pattern)
        elif pattern == "api/v1/":
            operations = set()
            for _prefix, router in api._routers:
                for path, view in router.path_operations.items():
                    for operation in view.operations:
                        keys.update(f"API {method} {path}" for method in operation.methods)
                        operations.add(
                            getattr(operation, "url_name", None) or operation.view_func.__name__
                        )
            for page in entry.url_patterns:
                if page.name in API_PAGES:
                    keys.add(API_PAGES[page.name])
                elif page.name not in operations:  # an API page the table does not know
                    keys.add(f"API {page.pattern}")
        elif isinstance(entry, URLResolver):
            included = getattr(entry.urlconf_module, "__name__", "")
            keys.add(
                f"{pattern} (django.contrib.auth.urls)"
                if included == "django.contrib.auth.urls"
                else f"{pattern} (the admin site)"
                if pattern == "admin/"
                else f"{pattern} ({included})"
            )
    return keys


def suggested_row(key: str) -> str:
    """A row to start from for a URL the table lacks: pick its rule, fill its address."""
    method, _, path = (
        key.partition(" ")[2].partition(" ") if key.startswith("API ") else ("", "", "")
    )
    if method:
        return f'    Row("{key}", SIGNED_IN, "{method.lower()}", "/api/v1{path}"),'
    return f'    Row("{key}", SIGNED_IN, url="/{key}"),'


API_PAGES = {
    "api-root": "API GET /api/v1/ (index)",
    "openapi-json": "API GET /api/v1/openapi.json",
    "openapi-view": "API GET /api/v1/docs",
    "swagger": "API GET /api/v1/docs/swagger",
}


def test_every_url_pattern_and_api_operation_has_a_rule():
    table = [row.key for row in TABLE]
    assert len(table) == len(set(table)), "a key twice in the table"
    missing = url_keys() - set(table)
    assert not missing, "URLs without a rule in tests/test_rights.py's TABLE; add a row each:\n" + (
        "\n".join(suggested_row(key) for key in sorted(missing))
    )
    assert not set(table) - url_keys(), "rows for URLs that no longer exist"


def test_the_completeness_check_notices_a_new_url(monkeypatch):
    from django.urls import path

    from hubimages import urls

    monkeypatch.setattr(urls, "urlpatterns", [*urls.urlpatterns, path("new/", lambda r: None)])
    clear_url_caches()
    try:
        assert "new/" in url_keys() - {row.key for row in TABLE}
    finally:
        monkeypatch.undo()
        clear_url_caches()


# -- the world every row is visited in ---------------------------------------------------------


@pytest.fixture
def world(db, django_user_model, settings) -> dict:
    """Two repositories of `default` (with an image, a deletion and a policy each), the
    personas' teams, a job the owner started and a token of theirs."""
    settings.REGISTRY_URL = "http://127.0.0.1:9"  # nothing answers: no request reaches it
    settings.REGISTRY_EVENTS_TOKEN = "events-secret"
    registry = registry_rows.get()
    when = datetime(2026, 1, 1, tzinfo=UTC)
    digests, operations = {}, {}
    for name in ("alpha/web", "beta/api"):
        repository = Repository.objects.create(registry=registry, name=name)
        image = builders.manifest(repository, name, pushed_at=when, tags=["v1"])
        builders.finish(repository)
        digests[name] = image.digest
        operation = Deletion.objects.create(
            username="someone", repository=name, selected=[image.digest], fingerprint="x"
        )
        operations[name] = operation.pk
        record = DeletionRecord.objects.create(
            operation=operation,
            username="someone",
            repository=name,
            digest=builders.digest_for(f"{name} gone"),
            kind=Manifest.Kind.IMAGE,
        )
        KeptManifest.objects.create(  # in the Trash
            record=record, media_type="application/vnd.oci.image.manifest.v1+json", body=b"{}"
        )
        short = name.split("/")[1]
        policies.save_policy(
            policies.parse_policy(
                {**POLICY_JSON, "name": f"{short}-cleanup", "repositories": [name]}
            )
        )
    users = {
        persona: django_user_model.objects.create_user(persona)
        for persona in ("stranger", "other", "viewer", "owner")
    }
    users["admin"] = django_user_model.objects.create_superuser("admin")
    for team, member, grants in (
        ("web", "owner", [("deleter", "alpha/web"), ("policy_admin", "alpha/web")]),
        ("api", "other", [("policy_admin", "beta/api")]),
        ("readers", "viewer", [("viewer", "alpha/web")]),
    ):
        row = services.create_team(team, by=BY)
        services.add_members(row, [users[member]], by=BY)
        for role, pattern in grants:
            services.grant(row, role, pattern, by=BY)
    storage_figures.refresh(registry)  # what the workers do after a sync
    job = Job.objects.create(
        kind=Job.Kind.DELETION, user=users["owner"], started_by="owner", repository="alpha/web"
    )
    bearer = {
        persona: tokens.issue(user=user, name="t", scope=ApiToken.Scope.READ_DELETE).token
        for persona, user in users.items()
    }
    return {
        "users": users,
        "bearer": bearer,
        "web_digest": digests["alpha/web"],
        "web_operation": operations["alpha/web"],
        "api_operation": operations["beta/api"],
        "job": job.pk,
        "owner_token": ApiToken.objects.get(user=users["owner"]).pk,
        "new_policy": "new-policy",
    }


def _format(value: object, names: dict) -> object:
    if isinstance(value, str):
        return value.format(**names)
    if isinstance(value, list):
        return [_format(item, names) for item in value]
    if isinstance(value, dict):
        return {key: _format(item, names) for key, item in value.items()}
    return value


def visit(row: Row, persona: str, world: dict):
    """The answer `persona` gets, in a transaction rolled back afterwards (what one
    persona changes, the next does not see), and how many queries read the grants."""
    names = {k: v for k, v in world.items() if not isinstance(v, dict)}
    url = row.url.format(**names)
    is_api = row.key.startswith("API ") and not row.page
    web = Client()
    headers = {}
    if persona != "anonymous":
        if is_api:
            headers["Authorization"] = f"Bearer {world['bearer'][persona]}"
        else:
            web.force_login(world["users"][persona])
    options = {"headers": headers}
    if row.body is not None:
        options.update(data=json.dumps(_format(row.body, names)), content_type="application/json")
    elif row.data:
        data = _format(row.data, names)
        options["data"] = urlencode(data) if row.method != "post" else data
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        response = getattr(web, row.method)(url, **options)
        transaction.set_rollback(True)
    grant_reads = [q for q in queries.captured_queries if "hubimages_grant" in q["sql"]]
    return response, len(grant_reads)


def expected(row: Row, persona: str) -> int:
    answer = row.rule.answers[persona]
    if answer == OK:
        return row.ok
    if answer == LOGIN:
        return 401 if row.key.startswith("API ") and not row.page else 302
    return answer


@pytest.mark.parametrize("row", TABLE, ids=[row.key for row in TABLE])
def test_each_url_answers_each_persona_by_its_rule(row, world):
    for persona in PERSONAS:
        response, grant_reads = visit(row, persona, world)
        want = expected(row, persona)
        assert response.status_code == want, (persona, response.content[:300])
        if want == 302 and row.rule.answers[persona] == LOGIN:
            assert response["Location"].startswith("/accounts/login/"), persona
        assert grant_reads <= 1, (persona, "the grants were read more than once")
        if row.lists and persona != "anonymous":
            body = b"".join(response.streaming_content) if response.streaming else response.content
            text = body.decode()
            for repository, who in SEES.items():
                assert (repository in text) == (persona in who), (persona, repository)


# -- the table as text ---------------------------------------------------------------------


def as_text() -> str:
    keys = [row.key or '"" (the Repositories page, /)' for row in TABLE]
    width = max(len(key) for key in keys)
    return "\n".join(
        f"{key:<{width}}  {row.rule.text}" for key, row in zip(keys, TABLE, strict=True)
    )


# -- what each page and operation shows, in detail ---------------------------------------------


def signed_in(world: dict, persona: str) -> Client:
    web = Client()
    web.force_login(world["users"][persona])
    return web


def token_of(world: dict, persona: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {world['bearer'][persona]}"}


def test_storage_figures_of_a_partial_view_are_the_sum_of_its_repositories(world):
    whole = storage_figures.kept(registry_rows.get()).document
    mine = next(row for row in whole["repositories"] if row["name"] == "alpha/web")

    api = Client().get("/api/v1/storage", headers=token_of(world, "viewer")).json()
    assert api["complete"] is False and api["history"] == []
    assert [row["name"] for row in api["repositories"]] == ["alpha/web"]
    for key in ("stored_bytes", "stale_reclaimable_bytes", "untagged_bytes"):
        assert api[key] == mine[key]
    page = signed_in(world, "viewer").get("/storage/").content.decode()
    assert "You see only some of this registry’s repositories" in page
    assert "For those who see every repository of the registry." in page  # shared layers

    everything = Client().get("/api/v1/storage", headers=token_of(world, "admin")).json()
    assert everything["complete"] is True
    assert everything["stored_bytes"] == whole["stored_bytes"]
    assert "only some" not in signed_in(world, "admin").get("/storage/").content.decode()


def test_a_user_who_sees_every_repository_of_a_registry_gets_its_own_totals(world):
    team = services.create_team("all-readers", by=BY)
    services.add_members(team, [world["users"]["stranger"]], by=BY)
    services.grant(team, "viewer", "*/*", by=BY)

    figures = Client().get("/api/v1/storage", headers=token_of(world, "stranger")).json()

    assert figures["complete"] is True
    assert {row["name"] for row in figures["repositories"]} == {"alpha/web", "beta/api"}


def test_the_repositories_page_counts_only_what_the_user_sees(world):
    page = signed_in(world, "viewer").get("/").content.decode()

    assert "All 1 repository" in page
    assert "alpha/web" in page and "beta/api" not in page
    assert "All 2 repositories" in signed_in(world, "admin").get("/").content.decode()


def test_a_stranger_sees_no_registry_and_staff_every_one(world):
    assert "<td" not in signed_in(world, "stranger").get("/registries/").content.decode()
    header = signed_in(world, "stranger").get("/history/").content.decode()
    assert "none granted to you" in header and "127.0.0.1:9" not in header
    assert "127.0.0.1:9" in signed_in(world, "viewer").get("/history/").content.decode()
    viewer = signed_in(world, "viewer").get("/registries/").content.decode()
    assert "default" in viewer
    assert "default" in signed_in(world, "admin").get("/registries/").content.decode()


def test_the_registries_page_counts_only_the_repositories_the_user_sees(world):
    from hubimages.models import Registry

    Registry.objects.create(name="staging")  # nothing synced there yet
    team = services.create_team("staging-readers", by=BY)
    services.add_members(team, [world["users"]["viewer"]], by=BY)
    services.grant(team, "viewer", "**", registry="staging", by=BY)

    viewer = signed_in(world, "viewer").get("/registries/").content.decode()
    admin = signed_in(world, "admin").get("/registries/").content.decode()

    assert "1 repository" in viewer and "2 repositories" not in viewer
    assert "?registry=staging" in viewer  # a grant there, though nothing synced yet
    assert "2 repositories" in admin and "?registry=staging" in admin


def test_an_image_in_two_repositories_lists_only_the_copy_the_user_may_see(world):
    api = Repository.objects.get(name="beta/api")
    web = Repository.objects.get(name="alpha/web")
    copy = Manifest.objects.get(repository=web)
    copy.pk, copy.repository = None, api
    copy.save()  # the same digest in beta/api
    detail = f"/api/v1/repositories/alpha/web/images/{world['web_digest']}"

    seen = Client().get(detail, headers=token_of(world, "owner")).json()
    everything = Client().get(detail, headers=token_of(world, "admin")).json()

    assert seen["also_in"] == []
    assert everything["also_in"] == [{"registry": "default", "repository": "beta/api"}]
    page = signed_in(world, "owner").get(f"{WEB}/-/images/{world['web_digest']}/")
    assert "beta/api" not in page.content.decode()


def test_search_finds_a_digest_only_where_the_user_may_see_it(world):
    digest = world["web_digest"]

    for persona, found in (("owner", True), ("other", False), ("stranger", False)):
        page = signed_in(world, persona).get("/search/", {"q": digest[7:19]}).content.decode()
        assert ("alpha/web" in page) == found, persona


def test_the_jobs_page_lists_only_the_users_own_jobs_and_staff_everyones(world):
    jobs = "/jobs/"
    assert f'href="/jobs/{world["job"]}/"' in signed_in(world, "owner").get(jobs).content.decode()
    assert f'href="/jobs/{world["job"]}/"' in signed_in(world, "admin").get(jobs).content.decode()
    viewer = signed_in(world, "viewer").get(jobs).content.decode()
    assert f'href="/jobs/{world["job"]}/"' not in viewer  # sees the repository, not the job


def test_an_admin_follows_syncs_and_the_jobs_of_the_repositories_they_see_only(world):
    """A staff user who is not a superuser, with a grant on alpha/web: every full sync (theirs
    to watch), the owner's deletion in alpha/web; not a job in beta/api nor another's
    retention run, which spans repositories."""
    ops = world["users"]["viewer"]
    ops.is_staff = True
    ops.save()
    other = world["users"]["other"]
    sync = Job.objects.create(kind=Job.Kind.SYNC, started_by="schedule", registry="default")
    beta = Job.objects.create(
        kind=Job.Kind.DELETION, user=other, started_by="other", repository="beta/api"
    )
    run = Job.objects.create(kind=Job.Kind.RETENTION, user=other, started_by="other")
    web = signed_in(world, "viewer")
    listing = web.get("/jobs/").content.decode()

    for job, shown in ((world["job"], True), (sync.pk, True), (beta.pk, False), (run.pk, False)):
        assert (f'href="/jobs/{job}/"' in listing) == shown, job
        assert web.get(f"/jobs/{job}/").status_code == (200 if shown else 404), job
        api = Client().get(f"/api/v1/jobs/{job}", headers=token_of(world, "viewer"))
        assert api.status_code == (200 if shown else 404), job
    admin = signed_in(world, "admin").get("/jobs/").content.decode()
    assert f'href="/jobs/{beta.pk}/"' in admin and f'href="/jobs/{run.pk}/"' in admin


def test_every_client_address_is_read_in_one_place():
    """`lib.addresses.client_address` says where a request comes from, for the audit log,
    the token limits and the sign-in limits (django-axes) alike: nothing else reads it."""
    from pathlib import Path

    from django.conf import settings

    root = Path(__file__).resolve().parent.parent / "hubimages"
    readers = [
        path.relative_to(root).as_posix()
        for path in root.rglob("*.py")
        if "migrations" not in path.parts
        and any(
            word in path.read_text()
            for word in ("REMOTE_ADDR", "get_client_ip", "HTTP_X_FORWARDED_FOR", "X-Forwarded-For")
        )
    ]
    assert [r for r in readers if r not in ("lib/addresses.py", "settings.py")] == []
    assert settings.AXES_CLIENT_IP_CALLABLE == "hubimages.lib.addresses.client_address"


def test_a_viewer_gets_no_selection_and_no_delete_button(world):
    for persona, controls in (("viewer", False), ("owner", True)):
        web = signed_in(world, persona)
        listing = web.get(f"{WEB}/").content.decode()
        detail = web.get(f"{WEB}/-/images/{world['web_digest']}/").content.decode()
        assert ('id="selection-bar"' in listing) == controls, persona
        assert ("Delete…" in detail) == controls, persona


def test_a_read_token_never_deletes_even_for_a_superuser(world):
    read = tokens.issue(user=world["users"]["admin"], name="r", scope=ApiToken.Scope.READ).token
    response = Client().post(
        "/api/v1/repositories/alpha/web/delete-images",
        json.dumps({"digests": [world["web_digest"]]}),
        content_type="application/json",
        headers={"Authorization": f"Bearer {read}"},
    )

    assert response.status_code == 403 and response.json()["error"]["code"] == "insufficient_scope"


# -- retention policies: a policy admin only for the repositories they hold -----------------


def post_policy(world: dict, persona: str, policy: dict):
    return Client().post(
        "/api/v1/retention-policies",
        json.dumps(policy),
        content_type="application/json",
        headers=token_of(world, persona),
    )


def test_a_policy_covering_a_repository_the_admin_does_not_hold_is_refused_and_named(world):
    response = post_policy(world, "owner", {**POLICY_JSON, "repositories": ["**"]})

    assert response.status_code == 403
    message = response.json()["error"]["message"]
    assert "default/beta/api" in message  # the repository beyond their grants
    assert "alpha/web in default" in message  # what they do administer
    assert not RetentionPolicy.objects.filter(name="new-policy").exists()


def test_a_policy_that_would_reach_a_repository_pushed_later_is_refused_too(world):
    """No repository outside the owner's grants matches `alpha/*` today; one pushed
    tomorrow would, so the patterns decide, not today's repositories."""
    response = post_policy(world, "owner", {**POLICY_JSON, "repositories": ["alpha/*"]})

    assert response.status_code == 403
    assert (
        "for example any repository named alpha/a in default"
        in (response.json()["error"]["message"])
    )


def test_a_policy_over_every_registry_is_refused_to_an_admin_of_one(world):
    response = post_policy(world, "owner", {**POLICY_JSON, "registries": ["*"]})

    assert response.status_code == 403
    assert "You may not save this policy" in response.json()["error"]["message"]


def test_a_policy_within_the_admins_grants_is_saved_and_they_may_run_it(world):
    response = post_policy(world, "owner", POLICY_JSON)

    assert response.status_code == 201
    dry_run = Client().post(
        "/api/v1/retention-policies/new-policy/dry-run", headers=token_of(world, "owner")
    )
    assert [r["repository"] for r in dry_run.json()["repositories"]] == ["alpha/web"]


def test_the_editor_refuses_with_the_reason_and_keeps_what_was_typed(world):
    response = signed_in(world, "owner").post(
        "/retention/new/save", {**POLICY_FORM, "name": "wide", "repositories": "**"}
    )

    assert response.status_code == 403
    page = response.content.decode()
    assert "You may not save this policy" in page and "default/beta/api" in page
    assert 'value="wide"' in page
    assert not RetentionPolicy.objects.filter(name="wide").exists()


def test_the_editor_starts_a_single_grant_admin_on_what_they_administer(world):
    page = signed_in(world, "owner").get("/retention/new/").content.decode()

    assert 'name="registries" value="default"' in page
    assert ">alpha/web</textarea>" in page


def test_the_editor_keeps_a_policys_registries(world):
    web = signed_in(world, "admin")
    response = web.post(
        "/retention/policies/web-cleanup/save",
        {**POLICY_FORM, "name": "web-cleanup", "registries": "default staging"},
    )

    assert response.status_code == 303
    assert RetentionPolicy.objects.get(name="web-cleanup").registries == ["default", "staging"]


def test_a_dry_run_shows_only_the_repositories_the_user_sees(world):
    policies.save_policy(
        policies.parse_policy({**POLICY_JSON, "name": "all", "repositories": ["**"]})
    )

    viewer = Client().post(
        "/api/v1/retention-policies/all/dry-run", headers=token_of(world, "viewer")
    )
    admin = Client().post(
        "/api/v1/retention-policies/all/dry-run", headers=token_of(world, "admin")
    )

    assert [r["repository"] for r in viewer.json()["repositories"]] == ["alpha/web"]
    assert [r["repository"] for r in admin.json()["repositories"]] == ["alpha/web", "beta/api"]
    page = signed_in(world, "viewer").get("/retention/policies/all/").content.decode()
    assert "alpha/web" in page and "beta/api" not in page


def test_a_policy_for_repositories_not_pushed_yet_shows_to_those_whose_grants_meet_it(world):
    policies.save_policy(
        policies.parse_policy({**POLICY_JSON, "name": "future", "repositories": ["alpha/new-*"]})
    )
    team = services.create_team("alpha-all", by=BY)
    services.add_members(team, [world["users"]["stranger"]], by=BY)
    services.grant(team, "viewer", "alpha/**", by=BY)

    for persona, status in (("stranger", 200), ("viewer", 404), ("other", 404)):
        response = signed_in(world, persona).get("/retention/policies/future/")
        assert response.status_code == status, persona


def test_a_run_that_touched_a_repository_the_user_may_not_see_is_left_out(world):
    from hubimages.models import RetentionRun

    policies.save_policy(
        policies.parse_policy({**POLICY_JSON, "name": "all", "repositories": ["**"]})
    )
    row = RetentionPolicy.objects.get(name="all")
    RetentionRun.objects.create(
        policy=row,
        policy_name="all",
        trigger="manual",
        started_at=datetime(2026, 1, 2, tzinfo=UTC),
        outcome="done",
        manifests_deleted=7,
        repositories=[
            {
                "registry": "default",
                "repository": "alpha/web",
                "deleted": 3,
                "reclaimed_bytes": 0,
                "note": "ok",
            },
            {
                "registry": "default",
                "repository": "beta/api",
                "deleted": 4,
                "reclaimed_bytes": 0,
                "note": "ok",
            },
        ],
    )

    viewer = signed_in(world, "viewer").get("/retention/policies/all/").content.decode()
    admin = signed_in(world, "admin").get("/retention/policies/all/").content.decode()

    assert (
        "7 manifests deleted" not in signed_in(world, "viewer").get("/retention/").content.decode()
    )
    assert "beta/api" not in viewer and "Runs that touched repositories you do not see" in viewer
    assert "beta/api" in admin and "7 manifests deleted" in (
        signed_in(world, "admin").get("/retention/").content.decode()
    )


def test_restoring_a_whole_retention_run_needs_the_deleter_role_on_each_of_its_repositories(
    world,
):
    from hubimages.models import RetentionRun

    run = RetentionRun.objects.create(
        policy_name="all", trigger="manual", started_at=datetime(2026, 1, 2, tzinfo=UTC)
    )
    Deletion.objects.filter(pk__in=[world["web_operation"], world["api_operation"]]).update(
        retention_run=run
    )
    restore = f"/trash/{world['web_operation']}/restore"

    refused = signed_in(world, "owner").post(restore, {"scope": "run"})
    api = Client().post(
        f"/api/v1/{restore.lstrip('/')}",
        json.dumps({"whole_run": True}),
        content_type="application/json",
        headers=token_of(world, "owner"),
    )

    assert refused.status_code == 403
    assert "restoring needs the deleter role on default/beta/api" in refused.content.decode()
    assert api.status_code == 403 and "default/beta/api" in api.json()["error"]["message"]
    assert not Job.objects.filter(kind=Job.Kind.RESTORE).exists()
    assert signed_in(world, "owner").post(restore, {"scope": "all"}).status_code == 303
    assert signed_in(world, "admin").post(restore, {"scope": "run"}).status_code == 303


def test_the_audit_log_has_the_actions_restore_and_in_use_override_will_need():
    from hubimages.lib import audit

    assert {"restore", "in_use_override"} <= set(audit.Action.values)


# -- a plan touches one repository, the one the user may delete in --------------------------


def test_deleting_an_image_touches_only_the_repository_the_user_may_delete_in(
    pusher, sync, registry_client, django_user_model
):
    """The same multi-arch image (the same digests) in two repositories; a deleter of one
    previews and deletes it there: the cascade (its images) stays in that repository, and
    the other copy, which they may not even see, keeps every manifest."""
    from devtools.pusher import random_layer
    from devtools.worker import run_tasks

    pushed = {}
    for name in ("acme/shop", "acme/copy"):
        amd = pusher.push_image(name, layers=[random_layer(2_000, "amd")])
        arm = pusher.push_image(name, layers=[random_layer(1_500, "arm")], architecture="arm64")
        pushed[name] = pusher.push_index(name, tag="2.0", images=[amd, arm])
    sync()
    release = pushed["acme/shop"]
    assert release.digest == pushed["acme/copy"].digest
    everything = [release.digest, *(child.digest for child in release.children)]
    owner = django_user_model.objects.create_user("owner")
    team = services.create_team("shop", by=BY)
    services.add_members(team, [owner], by=BY)
    services.grant(team, "deleter", "acme/shop", by=BY)
    web = Client()
    web.force_login(owner)

    page = web.get("/r/default/acme/shop/-/delete/", {"digest": release.digest}).content.decode()
    fingerprint = re.search(r'name="fingerprint" value="([0-9a-f]+)"', page)[1]
    response = web.post(
        "/r/default/acme/shop/-/delete/confirm",
        {
            "digest": release.digest,
            "fingerprint": fingerprint,
            "confirm": "yes",
            "confirm_active": "yes",
        },
    )
    assert response.status_code == 303
    run_tasks()

    def held(name: str) -> set[str]:
        return {d for d in everything if registry_client.head_manifest(name, d) is not None}

    assert held("acme/shop") == set()
    assert held("acme/copy") == set(everything)
    assert {r.repository for r in DeletionRecord.objects.all()} == {"acme/shop"}
    assert web.get("/r/default/acme/copy/-/delete/", {"digest": release.digest}).status_code == 404


def test_a_refusal_says_why_on_the_page(world):
    response = signed_in(world, "viewer").post("/retention/policies/web-cleanup/delete")

    assert response.status_code == 403
    assert "You may not delete this policy" in response.content.decode()
    refused = signed_in(world, "viewer").get(f"{WEB}/-/delete/", {"digest": world["web_digest"]})
    assert "needs the deleter role" in refused.content.decode()


def test_a_preview_names_no_repository_the_user_may_not_see_and_its_bytes_stay_exact(world):
    """beta/api's image uses alpha/web's layer: deleting alpha/web's image frees nothing
    of it, and the preview says a manifest elsewhere keeps it, without naming beta/api
    to whoever may not see it."""
    from hubimages.models import ManifestBlob

    web_image = Manifest.objects.get(repository__name="alpha/web")
    api_image = Manifest.objects.get(repository__name="beta/api")
    layer = web_image.blob_links.get().blob
    ManifestBlob.objects.create(
        manifest=api_image, blob=layer, role=ManifestBlob.Role.LAYER, position=1
    )
    preview = f"{WEB}/-/delete/?digest={world['web_digest']}"

    owner = signed_in(world, "owner").get(preview).content.decode()
    admin = signed_in(world, "admin").get(preview).content.decode()

    assert "beta/api" in admin
    assert "beta/api" not in owner
    assert "at least 1 more manifest" in owner  # counted, unnamed


def test_the_in_use_page_shows_each_user_the_sources_and_references_they_see(world):
    host = "127.0.0.1:9"  # the world's registry
    images = [
        {"reference": f"{host}/alpha/web@{world['web_digest']}", "where": "prod/web/pod/a"},
        {"reference": f"{host}/beta/api@{builders.digest_for('api 1')}", "where": "prod/api/1"},
        {"reference": f"{host}/beta/api@{builders.digest_for('api 2')}", "where": "prod/api/2"},
        {"reference": f"{host}/beta/api:no-such-tag", "where": "prod/api/3"},
        {"reference": "nginx:1.27", "where": "prod/edge/pod/n"},
    ]
    reports.replace(source="prod", images=images, ttl_seconds=600)

    def page(persona: str) -> str:
        return signed_in(world, persona).get("/in-use/").content.decode()

    def references(text: str) -> str:
        row = re.search(r'<tr class="in-use-source" data-source="prod">.*?</tr>', text, re.S)
        return re.search(r'<td class="col-count">(\d+)', row[0])[1]

    viewer, other, admin, stranger = page("viewer"), page("other"), page("admin"), page("stranger")
    assert (references(viewer), references(other), references(admin)) == ("1", "2", "3")
    for narrowed in (viewer, other):
        assert "in repositories you see" in narrowed
        # The unknown tag may name a repository the user may not see; other hosts are
        # the report's own, no registry's here.
        assert "beta/api" not in narrowed and "unknown tag" not in narrowed
        assert "+1 on other registries" in narrowed
    assert "1 unknown tag" in admin and "+1 on other registries" in admin
    assert "beta/api:no-such-tag" in admin
    assert 'data-source="prod"' not in stranger and "No reports on what you see" in stranger


def test_the_storage_page_of_a_registry_the_user_may_not_see_is_not_found(world):
    """Asking for a registry without a grant on it answers as for one that does not exist,
    never with another registry's figures under the name asked for."""
    Registry.objects.create(name="private", url="http://127.0.0.1:9")
    viewer = signed_in(world, "viewer")

    assert viewer.get("/storage/", {"registry": "private"}).status_code == 404
    assert viewer.get("/storage/", {"registry": "nowhere"}).status_code == 404
    assert viewer.get("/storage/", {"registry": "default"}).status_code == 200
    assert signed_in(world, "admin").get("/storage/", {"registry": "private"}).status_code == 200
