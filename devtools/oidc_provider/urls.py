from django.contrib.auth import views as auth_views
from django.urls import include, path

from devtools.oidc_provider import views

urlpatterns = [
    path(
        "o/.well-known/openid-configuration",
        views.Discovery.as_view(),
        name="discovery-with-switch",
    ),
    path("o/", include("oauth2_provider.urls", namespace="oauth2_provider")),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("control/client", views.client),
    path("control/user", views.user),
    path("control/switch", views.switch),
]
