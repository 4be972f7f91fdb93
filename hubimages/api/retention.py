"""Retention policies over the API (SPEC §8–9): list, read, create, replace, delete, dry-run
and run, in the policy JSON that `retention_policy export` prints and import reads.

Bodies are checked by `retention.parse_policy`, the one checker the editor, the import and
the command line use, so a 422 names each problem by its JSON path (`rules[1].count`).
A policy shows to whoever sees a repository it covers (or administers all it may cover);
its dry run shows only the repositories the caller sees. Creating, replacing, deleting and
running one decide what will be deleted: they need a read+delete token, and the
`policy_admin` role on everything the policy covers, before and after a change (403
otherwise, saying what is beyond).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from ninja import Path, Query, Router, Status

from hubimages.api.auth import require_write_scope
from hubimages.api.errors import ApiError
from hubimages.api.paging import paginate, reject_unknown_parameters
from hubimages.api.schemas import (
    DryRunChangedOut,
    DryRunOut,
    JobStartedOut,
    PageQuery,
    PolicyPage,
    RetentionPolicy,
    RunIn,
    error_responses,
)
from hubimages.jobs import queue
from hubimages.lib.audit import Actor
from hubimages.models import RetentionPolicy as PolicyRow
from hubimages.retention import engine, policies
from hubimages.teams.rights import may_see_policy, policy_refusal, rights_of

router = Router(tags=["retention policies"])
NAME = Path(pattern=policies.NAME_RE.pattern, description="The policy's name.")

POLICY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/RetentionPolicy"}}
        },
    }
}


@router.get(
    "/retention-policies",
    response={200: PolicyPage, **error_responses(404, 422)},
    exclude_unset=True,
    summary="List retention policies",
)
def list_policies(request: HttpRequest, query: Query[PageQuery]) -> dict:
    """The policies the caller may see, by name."""
    reject_unknown_parameters(request, PageQuery)
    mine = rights_of(request)
    rows = [
        row
        for row in PolicyRow.objects.order_by("name")
        if may_see_policy(mine, *_patterns(policies.policy_of(row)))
    ]
    return paginate(request, rows, query, lambda page: [policy_json(row) for row in page])


@router.post(
    "/retention-policies",
    response={201: RetentionPolicy, **error_responses(400, 403, 409, 422)},
    exclude_unset=True,
    openapi_extra=POLICY_BODY,
    summary="Create a retention policy",
)
def create_policy(request: HttpRequest, response: HttpResponse) -> Status:
    require_write_scope(request, "writing policies")
    policy = _policy_in(request)
    _refuse_unless_admin(request, policy, "save")
    try:
        row = policies.save_policy(policy, by=Actor.of(request))
    except policies.PolicyExists as exists:
        raise ApiError(
            409, "policy_exists", f"{exists}: replace it with PUT {_url(policy.name)}"
        ) from None
    response["Location"] = _url(row.name)
    return Status(201, policy_json(row))


@router.get(
    "/retention-policies/{name}",
    response={200: RetentionPolicy, **error_responses(404, 422)},
    exclude_unset=True,
    summary="One retention policy",
)
def get_policy(request: HttpRequest, name: str = NAME) -> dict:
    return policy_json(_row(request, name))


@router.put(
    "/retention-policies/{name}",
    response={200: RetentionPolicy, **error_responses(400, 403, 404, 409, 422)},
    exclude_unset=True,
    openapi_extra=POLICY_BODY,
    summary="Replace a retention policy",
)
def replace_policy(request: HttpRequest, name: str = NAME) -> dict:
    """The body replaces the policy whole; a different `name` renames it."""
    row = _row(request, name)
    require_write_scope(request, "writing policies")
    _refuse_unless_admin(request, policies.policy_of(row), "change")
    policy = _policy_in(request)
    _refuse_unless_admin(request, policy, "save")
    try:
        row = policies.save_policy(policy, original=row, by=Actor.of(request))
    except policies.PolicyExists as exists:
        raise ApiError(409, "policy_exists", str(exists)) from None
    return policy_json(row)


@router.delete(
    "/retention-policies/{name}",
    response={204: None, **error_responses(403, 404, 422)},
    summary="Delete a retention policy",
)
def delete_policy(request: HttpRequest, name: str = NAME) -> Status:
    """Its past runs stay on record, under its name."""
    row = _row(request, name)
    require_write_scope(request, "deleting policies")
    _refuse_unless_admin(request, policies.policy_of(row), "delete")
    policies.delete_policy(row, by=Actor.of(request))
    return Status(204, None)


@router.post(
    "/retention-policies/{name}/dry-run",
    response={200: DryRunOut, **error_responses(403, 404, 422)},
    summary="Dry-run a retention policy",
)
def dry_run_policy(request: HttpRequest, name: str = NAME) -> dict:
    """What a run would delete now, per repository (each plan as `delete-images` answers
    it), and its `now` and `fingerprint`: send both to `run` to delete exactly that. Only
    the repositories the caller sees (their totals and fingerprint too): whoever may run
    the policy sees all it covers."""
    policy = policies.policy_of(_row(request, name))
    return dry_run_out(_dry_run(policy, within=rights_of(request).within()))


@router.post(
    "/retention-policies/{name}/run",
    response={202: JobStartedOut, **error_responses(400, 403, 404, 422), 409: DryRunChangedOut},
    summary="Run a retention policy",
)
def run_policy(
    request: HttpRequest, payload: RunIn, response: HttpResponse, name: str = NAME
) -> Status:
    """Starts a job that deletes exactly the dry run `now` and `fingerprint` name, or
    nothing: 409 with a fresh dry run when it would differ already."""
    row = _row(request, name)
    require_write_scope(request, "running policies")
    policy = policies.policy_of(row)
    _refuse_unless_admin(request, policy, "run")
    if _dry_run(policy, now=payload.now).fingerprint != payload.fingerprint:
        raise ApiError(
            409,
            "plan_changed",
            "the registry changed since that dry run (or it was another one): nothing was "
            "deleted; check the new dry run and send its now and fingerprint",
            dry_run=dry_run_out(_dry_run(policy)),
        )
    job = queue.start_retention(
        policy=row.name,
        now=payload.now,
        fingerprint=payload.fingerprint,
        user=request.user,
        by=Actor.of(request),
    )
    url = reverse("api:get_job", kwargs={"job_id": job.pk})
    response["Location"] = url
    return Status(202, {"id": job.pk, "url": url})


def policy_json(row: PolicyRow) -> dict[str, Any]:
    return policies.policy_of(row).as_json()


def _dry_run(
    policy: policies.Policy, now: datetime | None = None, *, within: Q | None = None
) -> engine.DryRun:
    """The dry run (of the repositories `within` lets through: those the caller sees), or
    422 naming the pattern that took too long (`PatternClock`)."""
    try:
        return engine.dry_run(policy, now=now, within=within)
    except policies.PatternTooSlow as slow:
        raise ApiError(
            422,
            "pattern_too_slow",
            f"nothing was decided: {slow}",
            fields=[{"field": e.field, "message": e.message} for e in slow.errors],
        ) from None


def dry_run_out(result: engine.DryRun) -> dict[str, Any]:
    return {**result.as_dict(), "fingerprint": result.fingerprint}


def _row(request: HttpRequest, name: str) -> PolicyRow:
    """The stored policy; 404 for one the caller may not see, as for one that is not."""
    row = PolicyRow.objects.filter(name=name).first()
    if row is not None:
        policy = policies.policy_of(row)
        if not may_see_policy(rights_of(request), policy.registries, policy.repositories):
            row = None
    if row is None:
        raise ApiError(404, "not_found", f"no retention policy {name}")
    return row


def _patterns(policy: policies.Policy) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return policy.registries, policy.repositories


def _refuse_unless_admin(request: HttpRequest, policy: policies.Policy, doing: str) -> None:
    refusal = policy_refusal(
        rights_of(request), policy.registries, policy.repositories, doing=doing
    )
    if refusal:
        raise ApiError(403, "permission_denied", refusal)


def _url(name: str) -> str:
    return reverse("api:get_policy", kwargs={"name": name})


def _policy_in(request: HttpRequest) -> policies.Policy:
    if len(request.body) > policies.MAX_IMPORT_BYTES:
        raise ApiError(
            400, "bad_request", f"a policy is at most {policies.MAX_IMPORT_BYTES // 1000} kB"
        )
    try:
        data = json.loads(request.body)
    except ValueError:
        raise ApiError(400, "bad_request", "the request body is not valid JSON") from None
    try:
        return policies.parse_policy(data)
    except policies.InvalidPolicy as invalid:
        raise ApiError(
            422,
            "invalid_policy",
            str(invalid),
            fields=[{"field": e.field, "message": e.message} for e in invalid.errors],
        ) from None
