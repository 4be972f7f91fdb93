"""The sign-in page: the password form while local accounts are on, and the identity
provider's button when one is configured."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.contrib.auth.views import LoginView
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect

from hubimages.accounts import oidc


@login_not_required
@never_cache
@csrf_protect
def login_page(request: HttpRequest) -> HttpResponse:
    """Django's login view with the provider's button; while `LOCAL_ACCOUNTS` is false the
    password form is not shown and a password sent anyway is refused (403)."""
    context = {"provider": oidc.configured(), "local_accounts": settings.LOCAL_ACCOUNTS}
    if request.method == "POST" and not settings.LOCAL_ACCOUNTS:
        context |= {"local_refused": True, "next": request.POST.get("next", "")}
        return render(request, "registration/login.html", context, status=403)
    return LoginView.as_view(extra_context=context)(request)
