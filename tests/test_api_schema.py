"""The API against its own OpenAPI document (SPEC §9), by schemathesis: for every operation
`/api/v1/openapi.json` lists, generated requests — valid ones and ones the document
forbids — sent in-process to the WSGI application with a read+delete token, once with
generated path parameters and once naming things that exist (in a second registry, for
operations that take `?registry=`). No answer is a 500, and every answer is one the
document describes (status, content type, body, headers), valid requests are accepted
and invalid ones refused.

The example count is kept small so the whole runs in about a minute; set
`HUBIMAGES_SCHEMA_EXAMPLES` to search longer."""

from __future__ import annotations

import os
from collections import defaultdict
from datetime import UTC, datetime

import jsonschema_rs
import pytest
import schemathesis
from django.contrib.auth.models import Permission
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.core import NOT_SET
from schemathesis.specs.openapi.checks import (
    negative_data_rejection,
    positive_data_acceptance,
)

from hubimages.jobs import queue
from hubimages.models import (
    ApiToken,
    Deletion,
    DeletionRecord,
    KeptManifest,
    Manifest,
    Registry,
    Repository,
    RetentionPolicy,
)
from hubimages.registries import rows as registry_rows
from hubimages.retention import policies
from hubimages.storage import figures
from tests import builders
from tests.api_helpers import bearer

EXAMPLES = int(os.environ.get("HUBIMAGES_SCHEMA_EXAMPLES", "10"))
REPOSITORY = "team/api"
OTHER_REGISTRY = "staging"
POLICY = {"name": "keep-two", "rules": [{"keep": "latest_pushed", "count": 2}]}


@pytest.fixture
def token(deleter, settings) -> str:
    # schemathesis checks that bad tokens get 401: the limit that turns the sixth into a
    # 429 has its own tests (test_api_tokens.py).
    settings.AXES_FAILURE_LIMIT = 1_000_000
    return bearer(deleter)["Authorization"].removeprefix("Bearer ")


@pytest.fixture
def report_token(django_user_model) -> str:
    """The one kind of token the in-use reports take (and that takes nothing else)."""
    reporter = django_user_model.objects.create_user("reporter")
    reporter.user_permissions.add(Permission.objects.get(codename="add_inusesource"))
    return bearer(reporter, ApiToken.Scope.REPORT)["Authorization"].removeprefix("Bearer ")


def served_schema(application, token: str, report_token: str):
    """The OpenAPI document as served, every case sent with `token`, but the in-use
    reports' (security scheme ReportToken) with `report_token`."""
    schemes = {"BearerToken": {"bearer": token}, "ReportToken": {"bearer": report_token}}
    config = schemathesis.Config.from_dict({"auth": {"openapi": schemes}})
    return schemathesis.openapi.from_wsgi(
        "/api/v1/openapi.json",
        application,
        config=config,
        headers={"Authorization": f"Bearer {token}"},
    )


@pytest.fixture
def application(db):
    """Django's WSGI application, in this process: requests share the test's database
    connection, which is left open between them (as Django's test client does)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield WSGIHandler()
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def existing(deleter) -> dict[str, object]:
    """Something behind the path parameters: in the default registry and in a second one,
    a repository with an index, its image and a tagged image, and their storage figures
    (computed, as the workers do); a job, and a retention policy (put back before each
    request, since requests delete and rename it)."""
    registries = [registry_rows.get(), Registry.objects.create(name=OTHER_REGISTRY)]
    for registry in registries:
        index = stock(Repository.objects.create(registry=registry, name=REPOSITORY))
    figures.refresh()
    job = queue.start_sync(user=deleter, started_by=deleter.username, repository=REPOSITORY)
    return {
        "name": REPOSITORY,
        "digest": index.digest,
        "job_id": job.pk,
        "operation": trashed(deleter).pk,
        "source": "cluster",
    }


def trashed(user) -> Deletion:
    """A deletion whose one image the Trash holds (its kept bytes), for the Trash's paths."""
    deletion = Deletion.objects.create(
        user=user, username=user.username, repository=REPOSITORY, state=Deletion.State.DONE
    )
    body = b'{"schemaVersion": 2}'
    record = DeletionRecord.objects.create(
        operation=deletion,
        username=user.username,
        repository=REPOSITORY,
        digest="sha256:" + "a" * 64,
        kind="image",
    )
    KeptManifest.objects.create(
        record=record, media_type="application/vnd.oci.image.manifest.v1+json", body=body
    )
    return deletion


def stock(repository: Repository) -> Manifest:
    """An index with one image, and a tagged image; the index."""
    when = datetime(2024, 5, 1, tzinfo=UTC)
    child = builders.manifest(repository, "amd", pushed_at=when)
    index = builders.manifest(
        repository, "index", pushed_at=when, kind=Manifest.Kind.INDEX, children=[child]
    )
    builders.manifest(repository, "edge", pushed_at=when, tags=["edge"])
    builders.finish(repository)
    return index


def restore_policy() -> None:
    if not RetentionPolicy.objects.filter(name=POLICY["name"]).exists():
        policies.save_policy(policies.parse_policy(POLICY))


def rounds(operation, existing: dict[str, object]) -> list[tuple[dict | None, dict | None]]:
    """(path parameters, query parameters) fixed in each round of an operation: none, then,
    where it takes any, path parameters naming what exists and the second registry."""
    names = [part[1:-1] for part in operation.path.split("/") if part.startswith("{")]
    known = {**existing, "name": POLICY["name"]} if "retention" in operation.path else existing
    path = {name: known[name] for name in names} or None
    query = {"registry": OTHER_REGISTRY} if operation.get_parameter("registry", "query") else None
    return [(None, None), (path, query)] if path or query else [(None, None)]


class Document:
    """The OpenAPI document as served, to tell whether a case's body and path are valid.

    schemathesis's "negative" cases are now and then valid after all (a mutation inside
    one branch of a oneOf the body still matches through another, or shrinking that drops
    the invalid part), and its check then reports valid data accepted as a failure. A
    negative case whose body and path parameters the document allows is not held to be
    refused; every other check still applies to it."""

    def __init__(self, document: dict) -> None:
        self.document = document

    def allows(self, case) -> bool:
        operation = self.document["paths"][case.operation.path][case.method.lower()]
        path = [p for p in operation.get("parameters", []) if p["in"] == "path"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        return self._valid(body, case.body) and all(
            self._valid(p["schema"], case.path_parameters[p["name"]]) for p in path
        )

    def _valid(self, schema: dict, value: object) -> bool:
        root = {**schema, "components": self.document["components"]}
        try:
            return jsonschema_rs.Draft202012Validator(root).is_valid(value)
        except ValueError:  # not JSON at all (raw bytes): no valid body either
            return False


def examples(strategy, document: Document, statuses: set[int]) -> None:
    """Send the strategy's cases and check each answer against the document."""

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case) -> None:
        restore_policy()
        response = case.call()
        statuses.add(response.status_code)
        excluded = [negative_data_rejection]
        if "/in-use/" in case.operation.path:
            # An image reference is Docker's grammar (a host, a path of lowercase parts, a
            # tag and a digest, normalised as Docker does), which the document describes in
            # words; a body the schema allows may still hold references the endpoint
            # refuses with a 422 naming each one (tests/test_inuse_reports.py).
            excluded.append(positive_data_acceptance)
        case.validate_response(response, excluded_checks=excluded)
        if case.body is NOT_SET or not document.allows(case):
            case.validate_response(response, checks=[negative_data_rejection])

    check()


def test_every_answer_is_documented_and_none_is_a_500(application, token, report_token, existing):
    """Each operation with valid requests and with requests its document forbids; every
    failure is collected, so one run shows them all. The in-use reports are sent with a
    report token (the only kind they take), everything else with a read+delete one."""
    schema = served_schema(application, token, report_token)
    document = Document(schema.raw_schema)
    failures: list[str] = []
    answered: dict[str, set[int]] = defaultdict(set)
    in_other_registry: dict[str, set[int]] = defaultdict(set)
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for path, query in rounds(operation, existing):
                strategy = operation.as_strategy(
                    generation_mode=mode, path_parameters=path, query=query
                )
                statuses: set[int] = set()
                try:
                    examples(strategy, document, statuses)
                except (Exception, BaseExceptionGroup) as failure:  # reported together below
                    where = "existing" if path or query else "generated"
                    failures.append(f"{operation.label} ({mode.value}, {where}):\n{failure}")
                answered[operation.label] |= statuses
                if query:
                    in_other_registry[operation.label] |= statuses
    assert not failures, "\n\n".join(failures)
    # The requests reached the views, not only the authentication wall: each operation
    # succeeded at least once, but for running a policy, which needs a dry run's
    # fingerprint (its 409 is a view's answer).
    failed = {label for label, statuses in answered.items() if min(statuses) >= 300}
    assert failed <= {"POST /api/v1/retention-policies/{name}/run"}, dict(answered)
    documented = schema.raw_schema["paths"]
    assert len(answered) == sum(len(methods) for methods in documented.values())
    assert 409 in answered["POST /api/v1/retention-policies/{name}/run"]
    # and so did each operation that takes `?registry=`, naming the second registry.
    taking_registry = [
        operation
        for methods in documented.values()
        for operation in methods.values()
        if any(p["name"] == "registry" for p in operation.get("parameters", []))
    ]
    assert len(in_other_registry) == len(taking_registry) >= 6, dict(in_other_registry)
    assert all(min(statuses) < 300 for statuses in in_other_registry.values()), dict(
        in_other_registry
    )
