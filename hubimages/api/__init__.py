"""The HTTP API under `/api/v1/` (SPEC §9), built with django-ninja: typed schemas
(`schemas`), the OpenAPI document generated from them at `/api/v1/openapi.json`, and its
reference page at `/api/v1/docs`, drawn by the server from that document (`reference`).

For trying calls out, ninja's Swagger UI is at `/api/v1/docs/swagger`, served from ninja's
own static files (WhiteNoise, like ours); its settings travel in a JSON data block read by
a script file, so it runs under our Content Security Policy, with no CDN, inline script or
eval. Both are pages, so the login wall sends strangers to sign in; everything else here
answers JSON to a session or a token, and JSON errors to anyone else (`errors`).

May import every feature package and `hubimages.accounts`; never `hubimages.web`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.urls import URLPattern, path, reverse
from ninja import NinjaAPI, Swagger

from hubimages.api import errors, in_use, jobs, repositories, retention, storage, trash
from hubimages.api.auth import AUTH
from hubimages.api.errors import ApiError, error_response
from hubimages.api.reference import ReferencePage

DESCRIPTION = """\
What hubimages knows of the registry, and safe deletion, for scripts and CI pipelines.

**Authentication**: a personal access token, `Authorization: Bearer <token>` (create one
on the API tokens page, or with `manage.py create_api_token`), or the signed-in browser
session with its CSRF token (`X-CSRFToken`) on POST, PUT and DELETE. A token does what its
user may do now, never more: a `read` token reads what they may see; deleting needs a
`read+delete` token and the `deleter` role on the repository, and writing, deleting or
running a retention policy the `policy_admin` role on everything it covers.

**Not found or forbidden**: a repository (or policy) you may not see answers 404, as one
that does not exist; an action on something you see but may not change answers 403.

**Errors** are always `{"error": {"code": "...", "message": "..."}}`.

**Deleting** takes two calls: a dry run answers the plan and its `fingerprint`; sending
that fingerprint back starts a job that deletes exactly that plan, or nothing (409 with
the new plan).
"""


def _json_only(view: Callable[..., HttpResponse], *, read_only: bool = False) -> Callable:
    """Every URL of the API answers JSON, even a method it lacks (ninja's own 405 is plain
    text), and is exempt from Django's CSRF middleware, whose refusal is an HTML page: the
    operations that change things check the session's CSRF token themselves (`auth`).
    `read_only` views (the document, the docs page, the index) take GET and HEAD only."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        if read_only and request.method not in ("GET", "HEAD"):
            response = HttpResponseNotAllowed(["GET", "HEAD"])
        else:
            response = view(request, *args, **kwargs)
        if response.status_code == 405 and not response.get("Content-Type", "").startswith(
            "application/json"
        ):
            allowed = response.get("Allow", "")
            answer = error_response(
                405, "method_not_allowed", f"{request.method} is not allowed here: use {allowed}"
            )
            answer["Allow"] = allowed
            return answer
        return response

    wrapper.csrf_exempt = True  # type: ignore[attr-defined]
    return wrapper


def _credentials_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """The OpenAPI document (and docs page) for whoever may call the API, like the rest."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        try:
            if not any(auth(request) for auth in AUTH):
                return error_response(401, "not_authenticated", errors.NOT_AUTHENTICATED)
        except ApiError as refused:
            return error_response(refused.status, refused.code, refused.message)
        return view(request, *args, **kwargs)

    return wrapper


def index(request: HttpRequest, **kwargs: object) -> JsonResponse:
    """`/api/v1/`: where the document and its docs are."""
    return JsonResponse(
        {
            "openapi": reverse("api:openapi-json"),
            "docs": reverse("api:openapi-view"),
            "swagger": reverse("api:swagger"),
        }
    )


class HubimagesAPI(NinjaAPI):
    """ninja's API, its URLs adjusted: JSON answers only, no login wall but for the docs
    pages (pages like the others), an index at the root, and Swagger UI beside the
    reference page."""

    def _get_urls(self) -> list:
        patterns = super()._get_urls()
        swagger = _credentials_required(lambda request: SWAGGER.render_page(request, self))
        patterns.insert(0, path("docs/swagger", swagger, name="swagger"))
        for pattern in patterns:
            if not isinstance(pattern, URLPattern):
                continue
            if pattern.name == "api-root":
                pattern.callback = index
            read_only = pattern.name in ("api-root", "openapi-json", "openapi-view", "swagger")
            pattern.callback = _json_only(pattern.callback, read_only=read_only)
            if pattern.name not in ("openapi-view", "swagger"):
                pattern.callback.login_required = False
        return patterns


SWAGGER = Swagger(settings={"validatorUrl": None, "persistAuthorization": False})

api = HubimagesAPI(
    title="hubimages API",
    version="1",
    description=DESCRIPTION,
    urls_namespace="api",
    auth=AUTH,
    docs=ReferencePage(),
    docs_decorator=_credentials_required,
)
errors.install(api)
api.add_router("", repositories.router)
api.add_router("", jobs.router)
api.add_router("", retention.router)
api.add_router("", storage.router)
api.add_router("", in_use.router)
api.add_router("", trash.router)
