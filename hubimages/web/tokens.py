"""The signed-in user's own "API tokens" page: create, list, revoke (SPEC §9).

A new token is shown once, in the answer to the POST that made it, never stored in the
session or a message (those live in the database and in cookies); that answer is marked
`no-store` so no cache keeps it either.
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from hubimages.accounts import tokens
from hubimages.lib.audit import Actor
from hubimages.models import ApiToken
from hubimages.teams.rights import Role
from hubimages.web.access import rights

DEFAULT_EXPIRY_DAYS = 90


class TokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What uses it, e.g. “CI cleanup of team/api”.")
    scope = forms.ChoiceField(choices=ApiToken.Scope.choices, initial=ApiToken.Scope.READ)
    expires_in_days = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=tokens.MAX_EXPIRY_DAYS,
        initial=DEFAULT_EXPIRY_DAYS,
        label="Expires in (days)",
        help_text="Empty: never expires.",
    )


@never_cache
@require_http_methods(["GET", "POST"])
def api_tokens(request: HttpRequest) -> HttpResponse:
    """The list of the user's tokens, and the form that makes a new one."""
    issued = None
    form = TokenForm(request.POST if request.method == "POST" else None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            issued = tokens.issue(
                user=request.user,
                name=form.cleaned_data["name"],
                scope=form.cleaned_data["scope"],
                expires_in_days=form.cleaned_data["expires_in_days"],
                by=Actor.of(request),
            )
            form = TokenForm()
        else:
            status = 422
    now = timezone.now()
    rows = list(request.user.api_tokens.all())
    context = {
        "form": form,
        "issued": issued,
        "tokens": [(row, tokens.state(row, now)) for row in rows],
        "can_delete": rights(request).holds(Role.DELETER),
        "docs_url": reverse("api:openapi-view"),
    }
    return render(request, "api_tokens.html", context, status=status)


@require_POST
def revoke_api_token(request: HttpRequest, token_id: int) -> HttpResponse:
    """Revoke one of the user's own tokens (another user's is not found)."""
    row = get_object_or_404(ApiToken, pk=token_id, user=request.user)
    tokens.revoke(row, by=Actor.of(request))
    messages.success(request, f"Revoked token {row.name} ({row.prefix}…): it no longer works.")
    return HttpResponseRedirect(reverse("api_tokens"), status=303)
