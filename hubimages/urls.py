from django.contrib import admin
from django.urls import include, path, re_path

from hubimages.accounts import oidc
from hubimages.api import api
from hubimages.api import errors as api_errors
from hubimages.web import (
    audit,
    deletion,
    health,
    history,
    images,
    in_use,
    jobs,
    registries,
    repositories,
    retention,
    search,
    signin,
    storage,
    tokens,
    trash,
    webhooks,
)

# Repository names hold "/", so a repository's own pages sit under "/-/" (no OCI name
# component starts with "-") and come before the catch-all list route. A repository lives
# in a registry: /r/<registry>/<repository>/ (SPEC §11).
urlpatterns = [
    path("", repositories.repositories, name="repositories"),
    path("sync/", jobs.sync_now, name="sync_now"),
    path("search/", search.search_everywhere, name="search"),
    path("registries/", registries.registry_list, name="registries"),
    path("registries/<slug:registry>/sync/", jobs.sync_now, name="sync_registry"),
    path(
        "r/<slug:registry>/<path:name>/-/images/<str:digest>/",
        images.image_detail,
        name="image_detail",
    ),
    path("r/<slug:registry>/<path:name>/-/delete/", deletion.delete_preview, name="delete_preview"),
    path(
        "r/<slug:registry>/<path:name>/-/delete/confirm",
        deletion.delete_execute,
        name="delete_execute",
    ),
    path("r/<slug:registry>/<path:name>/-/sync/", jobs.sync_now, name="sync_repository"),
    path("r/<slug:registry>/<path:name>/-/selection/", images.selection, name="selection"),
    path("r/<slug:registry>/<path:name>/", images.image_management, name="image_management"),
    # Before several registries, a repository's pages were /repositories/<name>/…: those
    # addresses (bookmarks, links in tickets) lead to the same page of `default`.
    re_path(r"^repositories/(?P<rest>.+)$", registries.legacy_repository_url),
    path("storage/", storage.storage_insights, name="storage"),
    path("in-use/", in_use.in_use_sources, name="in_use"),
    path("history/", history.deletion_history, name="deletion_history"),
    path("history/export.csv", history.deletion_history_csv, name="deletion_history_csv"),
    path("history/<int:deletion>/export.csv", history.deletion_csv, name="deletion_csv"),
    path("trash/", trash.trash, name="trash"),
    path("trash/check", trash.trash_check, name="trash_check"),
    path("trash/<int:operation>/restore", trash.trash_restore, name="trash_restore"),
    path("audit/", audit.audit_log, name="audit"),
    path("audit/export.csv", audit.audit_csv, name="audit_csv"),
    path("audit/export.json", audit.audit_json, name="audit_json"),
    path("jobs/", jobs.job_list, name="jobs"),
    path("jobs/<int:job_id>/", jobs.job, name="job"),
    path("retention/", retention.retention_policies, name="retention_policies"),
    path("retention/new/", retention.retention_new, name="retention_new"),
    path("retention/new/save", retention.retention_save, name="retention_create"),
    path("retention/preview", retention.retention_preview, name="retention_preview"),
    path("retention/import", retention.retention_import, name="retention_import"),
    path("retention/policies/<str:name>/", retention.retention_policy, name="retention_policy"),
    path("retention/policies/<str:name>/save", retention.retention_save, name="retention_save"),
    path("retention/policies/<str:name>/run", retention.retention_run, name="retention_run"),
    path(
        "retention/policies/<str:name>/delete", retention.retention_delete, name="retention_delete"
    ),
    path(
        "retention/policies/<str:name>/export.json",
        retention.retention_export,
        name="retention_export",
    ),
    path("account/api-tokens/", tokens.api_tokens, name="api_tokens"),
    path(
        "account/api-tokens/<int:token_id>/revoke",
        tokens.revoke_api_token,
        name="revoke_api_token",
    ),
    path("api/v1/", api.urls),
    # Whatever else is under /api/ answers a JSON 404, never an HTML page.
    re_path(r"^api/", api_errors.not_found),
    path("registry/events", webhooks.registry_events, name="registry_events"),
    path("registry/<slug:registry>/events", webhooks.registry_events, name="registry_events_of"),
    path("healthz", health.healthz, name="healthz"),
    # Before Django's own: the same login view, with the identity provider's button.
    path("accounts/login/", signin.login_page, name="login"),
    path("accounts/oidc/<str:provider_id>/login/", oidc.login, name="openid_connect_login"),
    path(
        "accounts/oidc/<str:provider_id>/login/callback/",
        oidc.callback,
        name="openid_connect_callback",
    ),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
]

handler400 = api_errors.handler400
handler403 = api_errors.handler403
handler404 = api_errors.handler404
handler500 = api_errors.handler500
