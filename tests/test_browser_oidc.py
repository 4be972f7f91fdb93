"""Signing in through a real OpenID Connect provider in a real browser (Debian's
chromium): the whole redirect flow with groups in the ID token and only in userinfo, a
group removed at the provider gone at the next sign-in, a forged `state` refused; the
login page (with and without local accounts) and the Audit page accessible (axe-core) and
within the Content Security Policy; the Audit page's filters without JavaScript."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from playwright.sync_api import expect

from hubimages.lib.audit import Actor
from hubimages.models import AuditEntry, UserGroup
from hubimages.teams import services
from hubimages.teams.rights import rights_for
from tests.conftest import OIDC_CALLBACK, PASSWORD
from tests.test_browser_ui import axe_problems

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def idp(oidc, live_server):
    """The provider, its client allowed back to the live server; alice in two groups."""
    oidc.client([f"{live_server.url}{OIDC_CALLBACK}", f"http://testserver{OIDC_CALLBACK}"])
    oidc.user("alice", password=PASSWORD, groups=["platform", "everyone"])
    return oidc


@pytest.fixture
def new_page(browser, live_server):
    contexts = []

    def make(*, javascript: bool = True):
        context = browser.new_context(java_script_enabled=javascript, base_url=live_server.url)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.csp_violations = []
        page.on(
            "console",
            lambda message: (
                page.csp_violations.append(message.text)
                if "Content Security Policy" in message.text or "Refused to" in message.text
                else None
            ),
        )
        return page

    yield make
    for context in contexts:
        context.close()


def sign_in_through_the_provider(page, username: str = "alice", start: str = "/storage/"):
    page.goto(start)  # the login wall sends us to the login page
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next="))
    page.get_by_role("button", name="Sign in with Test IdP").click()
    expect(page.get_by_role("heading", name="Test identity provider")).to_be_visible()
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in to the provider").click()


def test_signing_in_with_groups_in_the_id_token(idp, new_page, live_server):
    page = new_page()
    sign_in_through_the_provider(page)
    expect(page).to_have_url(f"{live_server.url}/storage/")
    expect(page.locator(".user-name")).to_have_text("alice")
    assert sorted(UserGroup.objects.values_list("name", flat=True)) == ["everyone", "platform"]
    assert page.csp_violations == []


def test_signing_in_with_groups_only_in_userinfo(idp, new_page, live_server):
    idp.switch(groups_in="userinfo")
    page = new_page()
    sign_in_through_the_provider(page, start="/")
    expect(page.locator(".user-name")).to_have_text("alice")
    assert sorted(UserGroup.objects.values_list("name", flat=True)) == ["everyone", "platform"]
    assert AuditEntry.objects.get(action="sign_in").details["groups"] == ["everyone", "platform"]


def test_a_group_removed_at_the_provider_takes_its_rights_at_the_next_sign_in(
    idp, new_page, django_user_model
):
    boss = Actor(name="boss")
    team = services.create_team("platform", by=boss)
    services.bind_group(team, "platform", by=boss)
    services.grant(team, "deleter", "team/**", by=boss)
    page = new_page()
    sign_in_through_the_provider(page, start="/")
    expect(page.locator(".user-name")).to_have_text("alice")
    alice = django_user_model.objects.get(username="alice")
    assert rights_for(alice).may_delete("default", "team/api")

    idp.user("alice", groups=["everyone"])
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/accounts/login/"))
    # Still signed in at the provider: straight back, with the provider's groups of now.
    page.get_by_role("button", name="Sign in with Test IdP").click()
    expect(page.locator(".user-name")).to_have_text("alice")
    assert list(alice.identity_groups.values_list("name", flat=True)) == ["everyone"]
    assert not rights_for(alice).may_view("default", "team/api")


def test_a_forged_state_on_the_way_back_is_refused(idp, new_page, live_server):
    """The provider shows where it would send the browser back (`pause_redirects`): the
    same answer with another `state` is refused, then the real one signs in."""
    idp.switch(pause_redirects=True)
    page = new_page()
    sign_in_through_the_provider(page, start="/")
    back = page.locator("#continue").get_attribute("href")
    parts = urlsplit(back)
    assert parts.path == OIDC_CALLBACK
    query = [(k, "forged" if k == "state" else v) for k, v in parse_qsl(parts.query)]
    page.goto(f"{parts.path}?{urlencode(query)}")
    expect(page.get_by_role("heading", name="Sign-in refused")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("unknown state")
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/accounts/login/"))
    assert not UserGroup.objects.exists()
    assert AuditEntry.objects.filter(action="sign_in_failed").count() == 1

    page.goto(back)
    expect(page.locator(".user-name")).to_have_text("alice")


def test_the_login_pages_are_accessible_and_within_the_csp(idp, new_page, settings):
    page = new_page()
    page.goto("/accounts/login/")
    expect(page.get_by_label("Password")).to_be_visible()
    problems = {"login": axe_problems(page)}
    settings.LOCAL_ACCOUNTS = False
    page.goto("/accounts/login/")
    expect(page.get_by_label("Password")).to_have_count(0)
    expect(page.get_by_role("button", name="Sign in with Test IdP")).to_be_visible()
    problems["login, provider only"] = axe_problems(page)
    idp.switch(id_token_nonce="forged")
    page.get_by_role("button", name="Sign in with Test IdP").click()
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in to the provider").click()
    expect(page.get_by_role("heading", name="Sign-in refused")).to_be_visible()
    problems["refused"] = axe_problems(page)
    assert {name: found for name, found in problems.items() if found} == {}
    assert page.csp_violations == []


def test_the_audit_page_is_accessible_and_filters_without_javascript(
    new_page, django_user_model, live_server
):
    django_user_model.objects.create_user("auditor", password=PASSWORD, is_staff=True)
    for name in ("alice", "bob"):
        services.create_team(f"team-{name}", by=Actor(name=name, address="192.0.2.1"))
    for javascript in (True, False):
        page = new_page(javascript=javascript)
        page.goto("/accounts/login/")
        page.get_by_label("Username").fill("auditor")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in", exact=True).click()
        page.get_by_role("link", name="Audit log").click()
        expect(page.get_by_role("heading", name="Audit log")).to_be_visible()
        if javascript:
            assert axe_problems(page) == []
        page.get_by_label("Who").fill("bob")
        page.get_by_label("Action").select_option(label="Created a team")
        page.get_by_role("button", name="Filter").click()
        expect(page.locator("tr.audit-entry")).to_have_count(1)
        expect(page.locator("tr.audit-entry")).to_contain_text("team-bob")
        assert "who=bob" in page.url and "action=team_created" in page.url
        if javascript:
            assert axe_problems(page) == []
            assert page.csp_violations == []
