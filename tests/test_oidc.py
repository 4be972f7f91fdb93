"""Signing in through a real OpenID Connect provider (django-oauth-toolkit, its own
process: `devtools.oidc_provider`), the browser's part played by `requests` against the
provider and Django's test client against hubimages: PKCE, the nonce, the issuer, groups
from the ID token or userinfo, refreshed at each sign-in; local accounts switched off.
tests/test_browser_oidc.py drives the same flow in a real browser."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
import requests

from hubimages.lib.audit import Actor
from hubimages.models import AuditEntry, UserGroup
from hubimages.teams import services
from hubimages.teams.rights import rights_for
from tests.conftest import OIDC_CALLBACK, PASSWORD

pytestmark = pytest.mark.django_db
LOGIN = "/accounts/oidc/oidc/login/"


def start(client, next_url: str = "/") -> str:
    """Press "Sign in with …": the provider's authorization URL hubimages redirects to."""
    response = client.post(LOGIN, {"next": next_url})
    assert response.status_code == 302, response.content[:300]
    return response["Location"]


def at_provider(authorize: str, username: str, password: str = PASSWORD) -> str:
    """Sign in at the provider; the URL it sends the browser back to (not followed)."""
    browser = requests.Session()
    page = browser.get(authorize, timeout=10)  # to the provider's login form
    assert "Test identity provider" in page.text, page.text[:300]
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)[1]
    answer = browser.post(
        page.url,
        {
            "csrfmiddlewaretoken": token,
            "username": username,
            "password": password,
            "next": parse_qs(urlsplit(page.url).query)["next"][0],
        },
        headers={"Referer": page.url},
        allow_redirects=False,
        timeout=10,
    )
    assert answer.status_code == 302, answer.text[:300]
    back = browser.get(urljoin(page.url, answer.headers["Location"]), allow_redirects=False)
    assert back.status_code == 302, back.text[:500]
    return back.headers["Location"]


def sign_in(client, username: str, next_url: str = "/"):
    """The whole flow; hubimages's answer to the provider's redirect."""
    callback = at_provider(start(client, next_url), username)
    parts = urlsplit(callback)
    assert parts.path == OIDC_CALLBACK
    return client.get(f"{parts.path}?{parts.query}")


@pytest.fixture
def alice(oidc):
    oidc.user("alice", password=PASSWORD, groups=["platform", "everyone"], email="a@x.test")
    return "alice"


def signed_in_as(client) -> str | None:
    response = client.get("/", follow=False)
    if response.status_code != 200:
        return None
    return re.search(r'<span class="user-name">([^<]+)</span>', response.content.decode())[1]


def test_the_authorization_request_uses_pkce_and_a_nonce(client, oidc):
    query = parse_qs(urlsplit(start(client)).query)
    assert query["code_challenge_method"] == ["S256"]
    assert len(query["code_challenge"][0]) >= 43
    assert len(query["nonce"][0]) >= 32 and len(query["state"][0]) >= 16
    assert sorted(query["scope"][0].split()) == ["email", "openid", "profile"]
    assert urlsplit(start(client)).path == "/o/authorize/"


def test_signing_in_makes_the_user_with_the_groups_of_the_id_token(client, alice):
    response = sign_in(client, alice, next_url="/storage/")
    assert (response.status_code, response["Location"]) == (302, "/storage/")
    assert signed_in_as(client) == "alice"
    user = UserGroup.objects.get(name="platform").user
    assert user.username == "alice" and user.email == "a@x.test"
    assert not user.has_usable_password()
    assert sorted(user.identity_groups.values_list("name", flat=True)) == ["everyone", "platform"]
    entry = AuditEntry.objects.get(action="sign_in")
    assert (entry.actor, entry.address) == ("alice", "127.0.0.1")
    assert entry.details == {
        "method": "oidc",
        "provider": "Test IdP",
        "groups": ["everyone", "platform"],
    }


def test_groups_only_in_userinfo_are_read_there(client, alice, oidc):
    oidc.switch(groups_in="userinfo")
    sign_in(client, alice)
    assert signed_in_as(client) == "alice"
    assert sorted(UserGroup.objects.values_list("name", flat=True)) == ["everyone", "platform"]


def test_a_nested_claim_path_and_keycloaks_leading_slash(client, alice, oidc, settings):
    oidc.switch(groups_claim="realm_access.roles", group_prefix="/")
    settings.OIDC_GROUPS_CLAIM = "realm_access.roles"
    sign_in(client, alice)
    assert sorted(UserGroup.objects.values_list("name", flat=True)) == ["everyone", "platform"]


def test_a_group_removed_at_the_provider_is_gone_at_the_next_sign_in(client, alice, oidc):
    team = services.create_team("platform", by=Actor(name="boss"))
    services.bind_group(team, "platform", by=Actor(name="boss"))
    services.grant(team, "deleter", "team/**", by=Actor(name="boss"))
    sign_in(client, alice)
    user = UserGroup.objects.get(name="platform").user
    assert rights_for(user).may_delete("default", "team/api")

    oidc.user("alice", groups=["everyone"])
    client.post("/accounts/logout/")
    sign_in(client, alice)
    assert signed_in_as(client) == "alice"
    assert list(user.identity_groups.values_list("name", flat=True)) == ["everyone"]
    assert not rights_for(user).may_view("default", "team/api")


def test_a_second_sign_in_finds_the_same_user(client, alice, django_user_model):
    sign_in(client, alice)
    client.post("/accounts/logout/")
    sign_in(client, alice)
    assert django_user_model.objects.filter(username__startswith="alice").count() == 1


def refused(response, reason: str) -> None:
    assert response.status_code == 403, response.content[:500]
    page = response.content.decode()
    assert "Sign-in refused" in page and reason in page, page
    entry = AuditEntry.objects.filter(action="sign_in_failed").latest("id")
    assert entry.details["method"] == "oidc" and reason in entry.details["reason"]


def test_a_wrong_state_is_refused(client, alice):
    callback = at_provider(start(client), alice)
    parts = urlsplit(callback)
    tampered = re.sub(r"state=[^&]+", "state=forged", parts.query)
    refused(client.get(f"{parts.path}?{tampered}"), "unknown state")
    assert signed_in_as(client) is None
    # A state that is not this browser's (another session started it) is refused alike.
    other = type(client)()
    refused(other.get(f"{parts.path}?{parts.query}"), "unknown state")
    assert signed_in_as(other) is None


def test_a_wrong_nonce_in_the_id_token_is_refused(client, alice, oidc):
    oidc.switch(id_token_nonce="not-the-nonce-we-sent")
    refused(sign_in(client, alice), "nonce")
    assert signed_in_as(client) is None
    assert not UserGroup.objects.exists()


def test_an_id_token_from_another_issuer_is_refused(client, alice, oidc):
    oidc.switch(id_token_issuer="https://evil.example")
    refused(sign_in(client, alice), "the ID token is not valid: Invalid issuer")
    assert signed_in_as(client) is None


def test_a_discovery_document_naming_another_issuer_is_refused(client, alice, oidc):
    oidc.switch(discovery_issuer="https://evil.example")
    refused(client.post(LOGIN, {"next": "/"}), "https://evil.example")
    assert signed_in_as(client) is None


def test_a_malformed_groups_claim_refuses_the_sign_in(client, alice, oidc, settings):
    settings.OIDC_GROUPS_CLAIM = "email_verified"  # a boolean, not a list of names
    refused(sign_in(client, alice), "not a list of group names")
    assert signed_in_as(client) is None


def test_the_provider_saying_no_is_refused_and_recorded(client, oidc):
    query = parse_qs(urlsplit(start(client)).query)
    response = client.get(f"{OIDC_CALLBACK}?error=access_denied&state={query['state'][0]}")
    refused(response, "cancelled")


# -- the login page and local accounts -----------------------------------------------------


def test_the_login_page_offers_the_provider_beside_the_password_form(client, oidc):
    page = client.get("/accounts/login/?next=/storage/").content.decode()
    assert 'name="password"' in page
    assert f'action="{LOGIN}"' in page and "Sign in with Test IdP" in page
    assert '<input type="hidden" name="next" value="/storage/">' in page


def test_without_a_provider_the_login_page_is_the_password_form_alone(client):
    page = client.get("/accounts/login/").content.decode()
    assert 'name="password"' in page and "Sign in with" not in page
    assert client.post(LOGIN).status_code == 404


@pytest.fixture
def local_user(django_user_model):
    return django_user_model.objects.create_user("local", password=PASSWORD)


def test_local_accounts_switched_off_leave_only_the_provider(client, oidc, settings, local_user):
    settings.LOCAL_ACCOUNTS = False
    page = client.get("/accounts/login/").content.decode()
    assert 'name="password"' not in page and "Sign in with Test IdP" in page
    response = client.post("/accounts/login/", {"username": "local", "password": PASSWORD})
    assert response.status_code == 403
    assert "switched off" in response.content.decode()
    assert signed_in_as(client) is None
    # Nor through the admin's form, nor any other caller of authenticate().
    client.post("/admin/login/", {"username": "local", "password": PASSWORD})
    assert signed_in_as(client) is None


def test_local_accounts_switched_off_still_let_the_provider_sign_in(client, alice, settings):
    settings.LOCAL_ACCOUNTS = False
    sign_in(client, alice)
    assert signed_in_as(client) == "alice"


def test_a_user_disabled_in_hubimages_cannot_sign_in_through_the_provider(
    client, alice, django_user_model
):
    sign_in(client, alice)
    client.post("/accounts/logout/")
    django_user_model.objects.filter(username="alice").update(is_active=False)
    response = sign_in(client, alice)
    assert response.status_code == 403 and "disabled" in response.content.decode()
    assert signed_in_as(client) is None


def test_a_provider_user_is_never_matched_to_a_local_account_by_email(
    client, oidc, django_user_model
):
    local = django_user_model.objects.create_user("alice", password=PASSWORD, email="a@x.test")
    oidc.user("alice", password=PASSWORD, groups=["platform"], email="a@x.test")
    sign_in(client, "alice")
    name = signed_in_as(client)
    assert name is not None and name != "alice"
    assert not local.identity_groups.exists()
    assert django_user_model.objects.get(username=name).identity_groups.count() == 1
