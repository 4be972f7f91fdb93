"""Signing in through an OpenID Connect provider, with django-allauth's `openid_connect`
provider and these changes to it:

- a `nonce` in every authorization request, kept in the sign-in's state and required in
  the ID token (allauth sends none);
- the provider's discovery document must name the configured issuer (OpenID Connect
  Discovery §4.3), and the ID token is checked against that issuer, our client id and
  the provider's published keys, always (allauth skips the signature when the token came
  straight from the token endpoint);
- an ID token is required (a plain OAuth 2 answer is no OpenID Connect sign-in);
- the groups come from the claim `OIDC_GROUPS_CLAIM` names (a dotted path such as
  `realm_access.roles`), in the ID token or else in userinfo (GitLab puts them there),
  and replace the user's groups at every sign-in (`teams.services.refresh_groups`);
- every refusal (a wrong state, nonce or issuer, the provider's own error) is shown on
  our page and recorded as a failed sign-in.

PKCE (S256) is switched on in the provider's settings (`settings.oidc_providers`).
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

import requests
from allauth.account.adapter import DefaultAccountAdapter
from allauth.account.internal.decorators import login_not_required
from allauth.core.exceptions import ImmediateHttpResponse
from allauth.socialaccount.adapter import DefaultSocialAccountAdapter
from allauth.socialaccount.internal import jwtkit
from allauth.socialaccount.models import SocialApp
from allauth.socialaccount.providers.base.constants import AuthError
from allauth.socialaccount.providers.oauth2.client import OAuth2Error
from allauth.socialaccount.providers.oauth2.views import OAuth2CallbackView, OAuth2LoginView
from allauth.socialaccount.providers.openid_connect.provider import OpenIDConnectProvider
from allauth.socialaccount.providers.openid_connect.views import OpenIDConnectOAuth2Adapter
from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from hubimages.accounts.signin import OIDC_SIGN_IN
from hubimages.lib import audit
from hubimages.lib.audit import Action, Actor
from hubimages.teams import services

log = logging.getLogger("hubimages.signin")
GROUPS = "hubimages_groups"  # the groups of this sign-in, on its SocialLogin


class InvalidClaim(Exception):
    """The groups claim is there but is not a list of names."""


def configured() -> dict[str, str] | None:
    """The provider's id and name when one is configured, for the login page."""
    apps = settings.SOCIALACCOUNT_PROVIDERS.get("openid_connect", {}).get("APPS", [])
    return {"id": apps[0]["provider_id"], "name": apps[0]["name"]} if apps else None


def claim(data: dict, path: str) -> Any:
    """The value at a dotted path (`realm_access.roles`); None when absent."""
    value: Any = data
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def groups_from(extra_data: dict, path: str) -> list[str]:
    """The groups the ID token names at `path`, else userinfo's; none when neither has the
    claim. A claim that is there but not a string or a list of strings is refused."""
    for source in ("id_token", "userinfo"):
        value = claim(extra_data.get(source) or {}, path)
        if value is None:
            continue
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise InvalidClaim(f"the {source}'s {path} claim is not a list of group names")
        return [name for name in (services.group_name(item) for item in value) if name]
    return []


class OAuth2Adapter(OpenIDConnectOAuth2Adapter):
    @property
    def openid_config(self) -> dict:
        config = OpenIDConnectOAuth2Adapter.openid_config.fget(self)
        expected = self.get_provider().app.settings["server_url"]
        if str(config.get("issuer", "")).rstrip("/") != expected.rstrip("/"):
            raise OAuth2Error(
                f"the provider's discovery document names the issuer {config.get('issuer')!r}, "
                f"not the configured {expected!r}"
            )
        return config

    def complete_login(self, request: HttpRequest, app, token, **kwargs):
        if not kwargs["response"].get("id_token"):
            raise OAuth2Error("the provider sent no ID token")
        return super().complete_login(request, app, token, **kwargs)

    def _decode_id_token(self, app: SocialApp, id_token: str) -> dict:
        """Checked in full, signature included, whichever way the token came."""
        try:
            return jwtkit.verify_and_decode(
                credential=id_token,
                keys_url=self.openid_config["jwks_uri"],
                issuer=self.openid_config["issuer"],
                audience=app.client_id,
                lookup_kid=jwtkit.lookup_kid_jwk,
                verify_signature=True,
            )
        except OAuth2Error as error:
            cause = f": {error.__cause__}" if error.__cause__ else ""
            raise OAuth2Error(f"the ID token is not valid{cause}") from error


class Provider(OpenIDConnectProvider):
    oauth2_adapter_class = OAuth2Adapter

    def redirect(self, request: HttpRequest, process, next_url=None, data=None, **kwargs):
        """Send the user to the provider with a fresh nonce, kept in the state."""
        nonce = secrets.token_urlsafe(32)
        auth_params = dict(kwargs.pop("auth_params", None) or self.get_auth_params())
        auth_params["nonce"] = nonce
        return super().redirect(
            request, process, next_url, data, auth_params=auth_params, nonce=nonce, **kwargs
        )


@login_not_required
def login(request: HttpRequest, provider_id: str) -> HttpResponse:
    """Off to the provider; a provider that cannot be reached or whose discovery document
    is wrong is refused here, before the user leaves."""
    adapter = OAuth2Adapter(request, provider_id)
    try:
        return OAuth2LoginView.adapter_view(adapter)(request)
    except SocialApp.DoesNotExist:
        raise Http404 from None
    except OAuth2Error as error:
        return refused(request, adapter.get_provider(), str(error))
    except requests.RequestException as error:
        reason = f"the provider did not answer ({type(error).__name__})"
        return refused(request, adapter.get_provider(), reason)


@login_not_required
def callback(request: HttpRequest, provider_id: str) -> HttpResponse:
    try:
        return OAuth2CallbackView.adapter_view(OAuth2Adapter(request, provider_id))(request)
    except SocialApp.DoesNotExist:
        raise Http404 from None


def refused(request: HttpRequest, provider, reason: str, *, username: str = "") -> HttpResponse:
    """Record a failed sign-in and answer our page saying why."""
    log.warning("sign-in through %s refused: %s", getattr(provider, "name", "?"), reason)
    audit.record(
        Action.SIGN_IN_FAILED,
        by=Actor(name=username, address=Actor.of(request).address),
        method="oidc",
        reason=reason,
    )
    context = {"provider_name": getattr(provider, "name", ""), "reason": reason}
    return render(request, "registration/sign_in_refused.html", context, status=403)


class SocialAccountAdapter(DefaultSocialAccountAdapter):
    def pre_social_login(self, request: HttpRequest, sociallogin) -> None:
        """Before anyone is signed in: the nonce must be ours, the groups readable. Those
        of a known user are stored now; a new user's once saved (`save_user`)."""
        provider = sociallogin.account.get_provider()
        id_token = sociallogin.account.extra_data.get("id_token") or {}
        username = str(id_token.get("preferred_username") or id_token.get("sub") or "")
        expected = (sociallogin.state or {}).get("nonce")
        if not expected or not secrets.compare_digest(
            str(id_token.get("nonce", "")), str(expected)
        ):
            raise ImmediateHttpResponse(
                refused(
                    request,
                    provider,
                    "the ID token's nonce is not this sign-in's",
                    username=username,
                )
            )
        try:
            groups = groups_from(sociallogin.account.extra_data, settings.OIDC_GROUPS_CLAIM)
        except InvalidClaim as invalid:
            raise ImmediateHttpResponse(
                refused(request, provider, str(invalid), username=username)
            ) from None
        setattr(sociallogin, GROUPS, groups)
        setattr(
            request, OIDC_SIGN_IN, {"method": "oidc", "provider": provider.name, "groups": groups}
        )
        if sociallogin.is_existing:
            services.refresh_groups(sociallogin.user, groups)

    def save_user(self, request: HttpRequest, sociallogin, form=None):
        user = super().save_user(request, sociallogin, form)
        services.refresh_groups(user, getattr(sociallogin, GROUPS, []))
        return user

    def on_authentication_error(
        self, request, provider, error=None, exception=None, extra_context=None
    ) -> None:
        if exception is not None:
            reason = str(exception)
        elif error == AuthError.CANCELLED:
            reason = "the sign-in was cancelled at the provider"
        elif "state_id" in (extra_context or {}):
            reason = "the answer does not belong to a sign-in started here (unknown state)"
        else:
            reason = f"the provider answered {request.GET.get('error', 'with an error')}"
        raise ImmediateHttpResponse(refused(request, provider, reason[:500]))

    def is_open_for_signup(self, request: HttpRequest, sociallogin) -> bool:
        return True


class AccountAdapter(DefaultAccountAdapter):
    """No sign-up form, no e-mail: local accounts are made by administrators."""

    def is_open_for_signup(self, request: HttpRequest) -> bool:
        return False

    def add_message(self, *args, **kwargs) -> None:
        """Signing in says nothing, as with a password."""

    def respond_user_inactive(self, request: HttpRequest, user) -> HttpResponse:
        return refused(
            request, None, "this account is disabled in hubimages", username=user.get_username()
        )
