"""Shared fixtures: a real CNCF distribution registry per test, an image pusher, users,
and the task worker."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest

from devtools.faultproxy import FaultProxy
from devtools.pusher import ImagePusher
from devtools.server import LocalRegistry
from devtools.worker import task_worker
from hubimages.storage.figures import after_full_sync
from hubimages.sync.service import SyncSummary, sync_registry
from registry.client import RegistryClient

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

# Fixtures through which a test reaches the database (pytest-django's, and Django's test
# client, which signs in and keeps sessions there).
DATABASE_FIXTURES = {"db", "transactional_db", "django_db_setup", "live_server", "client"}


def touches_the_database(item: pytest.Item) -> bool:
    fixtures = set(getattr(item, "fixturenames", ()))
    return bool(fixtures & DATABASE_FIXTURES) or item.get_closest_marker("django_db") is not None


def drives_a_browser(item: pytest.Item) -> bool:
    """The browser tests (tests/test_browser_*.py): what a person sees and does on the
    pages. Their database work is the views' own, which the tests driving the same views
    through Django's client run on both databases."""
    return item.path.name.startswith("test_browser_")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With HUBIMAGES_DATABASE_TESTS_ONLY=1 (scripts/test's PostgreSQL run), only the tests
    that reach the database and do not drive a browser run: the others (media types,
    policy parsing, the registry client, settings; layouts, focus, accessibility) cannot
    answer differently on another database, and already ran on SQLite."""
    if os.environ.get("HUBIMAGES_DATABASE_TESTS_ONLY") != "1":
        return
    kept = [item for item in items if touches_the_database(item) and not drives_a_browser(item)]
    config.hook.pytest_deselected(items=[item for item in items if item not in kept])
    items[:] = kept


@pytest.fixture(autouse=True)
def plain_static_files(settings):
    """Pages render without `collectstatic` (the production-shape test runs it for real)."""
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


# -- tasks ---------------------------------------------------------------------------------


@pytest.fixture
def worker_thread(transactional_db) -> Iterator[None]:
    """A worker running tasks in a thread of the test process while the test runs (for
    browser tests, where the page waits for a job)."""
    from django.db import connection

    worker = task_worker(batch=False, worker_id="test-worker")

    def run() -> None:
        try:
            worker.run()
        finally:
            connection.close()

    thread = threading.Thread(target=run, name="test-worker", daemon=True)
    thread.start()
    yield
    worker.running = False
    thread.join(timeout=30)


@pytest.fixture
def registry_server(tmp_path) -> Iterator[LocalRegistry]:
    """A fresh registry process on a free loopback port, delete enabled, own storage."""
    with LocalRegistry(tmp_path / "registry") as server:
        yield server


@pytest.fixture
def fault_proxy(registry_server: LocalRegistry) -> Iterator[FaultProxy]:
    """A fault-injecting proxy on a free loopback port in front of `registry_server`;
    tests add faults (`devtools.faultproxy`) and point hubimages at `fault_proxy.url`."""
    with FaultProxy(registry_server.url) as proxy:
        yield proxy


@pytest.fixture
def pusher(registry_server: LocalRegistry) -> ImagePusher:
    return ImagePusher(registry_server.url)


@pytest.fixture
def registry_url(registry_server: LocalRegistry, settings) -> str:
    settings.REGISTRY_URL = registry_server.url
    return registry_server.url


@pytest.fixture
def registry_client(registry_url: str) -> Iterator[RegistryClient]:
    with RegistryClient(registry_url) as client:
        yield client


@pytest.fixture
def sync(registry_client: RegistryClient, db):
    """Sync the test registry into the database; fails the test on sync errors unless
    `expect_errors=True`."""

    def run(*repositories: str, expect_errors: bool = False, workers: int = 4) -> SyncSummary:
        summary = sync_registry(
            registry_client,
            repositories=repositories or None,
            workers=workers,
            after_full_sync=after_full_sync,
        )
        if not expect_errors:
            assert summary.errors == []
        return summary

    return run


# -- people --------------------------------------------------------------------------------

PASSWORD = "correct horse battery staple"


@pytest.fixture
def viewer(django_user_model):
    """Signed-in user who may look but not delete: a member of a team granted `viewer` on
    every repository of `default` (SPEC §14: without a grant, a user sees nothing)."""
    from hubimages.lib.audit import Actor
    from hubimages.teams import services

    user = django_user_model.objects.create_user("viewer", password=PASSWORD)
    team = services.create_team("viewers", by=Actor(name="tests"))
    services.grant(team, "viewer", "**", by=Actor(name="tests"))
    services.add_members(team, [user], by=Actor(name="tests"))
    return user


@pytest.fixture
def deleter(django_user_model):
    """A user holding the legacy delete permission (not a superuser): `policy_admin` on
    every repository of every registry, as it was before teams."""
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("deleter", password=PASSWORD)
    user.user_permissions.add(Permission.objects.get(codename="delete_manifest"))
    return user


@pytest.fixture
def viewer_client(client_factory, viewer):
    return client_factory(viewer)


@pytest.fixture
def deleter_client(client_factory, deleter):
    return client_factory(deleter)


@pytest.fixture
def client_factory(db):
    """Django test clients signed in as a given user (CSRF checks on, as in production)."""
    from django.test import Client

    def make(user, *, enforce_csrf_checks: bool = False) -> Client:
        web = Client(enforce_csrf_checks=enforce_csrf_checks)
        web.force_login(user)
        return web

    return make


# -- browser -------------------------------------------------------------------------------

CHROMIUM = "/usr/lib/chromium/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def browser():
    """Debian's chromium driven by Playwright (no browser download, ever)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture
def signed_in_page(browser, live_server, django_user_model):
    """A page in a fresh browser context, signed in as a superuser via the login form.

    Yields a function so a test can ask for JavaScript to be disabled."""
    contexts = []

    def open_page(*, javascript: bool = True, username: str = "admin"):
        if not django_user_model.objects.filter(username=username).exists():
            django_user_model.objects.create_superuser(username, password=PASSWORD)
        context = browser.new_context(java_script_enabled=javascript, base_url=live_server.url)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(10_000)
        page.goto("/accounts/login/")
        page.fill("input[name=username]", username)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit], input[type=submit]")
        return page

    yield open_page
    for context in contexts:
        context.close()


# -- identity provider ---------------------------------------------------------------------

OIDC_CALLBACK = "/accounts/oidc/oidc/login/callback/"


@pytest.fixture(scope="session")
def oidc_provider():
    """A real OpenID Connect provider process (django-oauth-toolkit), one per test session
    (`devtools.oidc_provider`); `oidc` sets it up for a test."""
    from devtools.oidc_provider import OidcProvider

    with OidcProvider() as provider:
        yield provider


@pytest.fixture
def oidc(oidc_provider, settings):
    """hubimages configured to sign in through `oidc_provider`, its switches at their
    defaults, its client allowed back to the test client's host (browser tests add the
    live server's)."""
    from devtools.oidc_provider import CLIENT_ID
    from hubimages.settings import oidc_form_action, oidc_providers

    oidc_provider.switch()
    oidc_provider.client([f"http://testserver{OIDC_CALLBACK}"])
    settings.SOCIALACCOUNT_PROVIDERS = oidc_providers(
        issuer=oidc_provider.issuer,
        client_id=CLIENT_ID,
        secret=oidc_provider.client_secret,
        name="Test IdP",
        scopes=["openid", "profile", "email"],
    )
    settings.OIDC_GROUPS_CLAIM = "groups"
    settings.SECURE_CSP = {
        **settings.SECURE_CSP,
        "form-action": ["'self'", *oidc_form_action(oidc_provider.issuer)],
    }
    return oidc_provider


# -- hubimages's own processes ---------------------------------------------------------------


@pytest.fixture
def live(tmp_path, transactional_db):
    """gunicorn and `db_worker` processes on the test database, started on demand
    (`tests.live.Live`; a test sets `live.env` first, e.g. REGISTRY_URL)."""
    from tests.live import Live

    processes = Live(tmp_path)
    try:
        yield processes
    finally:
        processes.stop()
