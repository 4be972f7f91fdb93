from django.contrib import admin
from django.urls import include, path

from hubimages import health, views, webhooks

# Repository names hold "/", so a repository's own pages sit under "/-/" (no OCI name
# component starts with "-") and come before the catch-all list route.
urlpatterns = [
    path("", views.repositories, name="repositories"),
    path("sync/", views.sync_now, name="sync_now"),
    path(
        "repositories/<path:name>/-/images/<str:digest>/",
        views.image_detail,
        name="image_detail",
    ),
    path("repositories/<path:name>/-/delete/", views.delete_preview, name="delete_preview"),
    path(
        "repositories/<path:name>/-/delete/confirm",
        views.delete_execute,
        name="delete_execute",
    ),
    path("repositories/<path:name>/-/sync/", views.sync_now, name="sync_repository"),
    path("repositories/<path:name>/-/selection/", views.selection, name="selection"),
    path("repositories/<path:name>/", views.image_management, name="image_management"),
    path("history/", views.deletion_history, name="deletion_history"),
    path("jobs/", views.job_list, name="jobs"),
    path("jobs/<int:job_id>/", views.job, name="job"),
    path("retention/", views.retention_policies, name="retention_policies"),
    path("retention/new/", views.retention_new, name="retention_new"),
    path("retention/new/save", views.retention_save, name="retention_create"),
    path("retention/preview", views.retention_preview, name="retention_preview"),
    path("retention/import", views.retention_import, name="retention_import"),
    path("retention/policies/<str:name>/", views.retention_policy, name="retention_policy"),
    path("retention/policies/<str:name>/save", views.retention_save, name="retention_save"),
    path("retention/policies/<str:name>/run", views.retention_run, name="retention_run"),
    path("retention/policies/<str:name>/delete", views.retention_delete, name="retention_delete"),
    path(
        "retention/policies/<str:name>/export.json",
        views.retention_export,
        name="retention_export",
    ),
    path("registry/events", webhooks.registry_events, name="registry_events"),
    path("healthz", health.healthz, name="healthz"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
]
