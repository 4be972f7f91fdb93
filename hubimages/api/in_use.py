"""In-use reports (SPEC §13): `PUT /in-use/{source}` with a token of scope `report`.

The body is read here rather than by ninja: a cluster's report may hold tens of thousands
of references, past the size Django lets any other request carry (2.5 MB), so this one
endpoint reads up to MAX_REPORT_BYTES itself and checks the JSON against its schema.
"""

from __future__ import annotations

from django.http import HttpRequest
from ninja import Path, Router
from pydantic import ValidationError

from hubimages.api.auth import ReportToken
from hubimages.api.errors import ApiError, field_problem
from hubimages.api.schemas import InUseReportIn, InUseReportOut, error_responses
from hubimages.inuse import reports
from registry.errors import ContentTooComplex
from registry.media import load_json

router = Router(tags=["in use"])

MAX_REPORT_BYTES = 64 * 1024 * 1024
PERMISSION = "hubimages.add_inusesource"


def _inline(schema: dict) -> dict:
    """The body's JSON schema with its `$defs` written in place, for the OpenAPI document."""
    definitions = schema.pop("$defs", {})

    def resolve(node: object) -> object:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    return resolve(schema)


@router.put(
    "/in-use/{source}",
    auth=[ReportToken()],
    response={200: InUseReportOut, **error_responses(400, 403, 413, 422)},
    summary="Replace a source's in-use report",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _inline(InUseReportIn.model_json_schema())}},
        }
    },
)
def report_in_use(
    request: HttpRequest,
    source: str = Path(..., pattern=reports.SOURCE_NAME_RE.pattern, max_length=100),
) -> dict:
    """What `source` (a cluster, a CI system) runs now: it replaces the source's last
    report whole. References are kept by digest; a tag is resolved to its digest now, and
    one hubimages does not know comes back in `unresolved`; references to registries
    hubimages does not serve are counted in `other_registries`. Items a live report names
    are never deleted without an explicit override; a `required` source whose report is
    older than `ttl_seconds` stops retention on the registries it names."""
    if not request.user.has_perm(PERMISSION):
        raise ApiError(
            403,
            "permission_denied",
            f"reporting needs the {PERMISSION} permission, which "
            f"{request.user.get_username()} does not have",
        )
    payload = _payload(request)
    try:
        received = reports.replace(
            source=source,
            images=[image.model_dump() for image in payload.images],
            ttl_seconds=payload.ttl_seconds,
            required=payload.required,
            reported_by=request.user.get_username(),
        )
    except reports.InvalidReport as invalid:
        fields = [{"field": field, "message": message} for field, message in invalid.problems]
        raise ApiError(422, "invalid_report", str(invalid), fields=fields) from None
    return received.as_dict()


def _payload(request: HttpRequest) -> InUseReportIn:
    length = request.META.get("CONTENT_LENGTH") or "0"
    if not length.isdigit() or int(length) > MAX_REPORT_BYTES:
        raise ApiError(413, "too_large", f"a report is at most {MAX_REPORT_BYTES:,} bytes")
    body = request.read(MAX_REPORT_BYTES + 1)
    if len(body) > MAX_REPORT_BYTES:
        raise ApiError(413, "too_large", f"a report is at most {MAX_REPORT_BYTES:,} bytes")
    try:
        data = load_json(body, "report")
    except ContentTooComplex as error:
        raise ApiError(400, "bad_request", str(error)) from None
    except ValueError:
        raise ApiError(400, "bad_request", "the request body is not valid JSON") from None
    try:
        return InUseReportIn.model_validate(data)
    except ValidationError as invalid:
        fields = [field_problem(error) for error in invalid.errors()]
        message = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:20])
        raise ApiError(422, "invalid_request", message, fields=fields[:20]) from None
