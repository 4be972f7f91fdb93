"""The client's address behind a proxy (SPEC §7, §14): `X-Forwarded-For` is read only when
the request comes from a proxy listed in `TRUSTED_PROXIES`, and every limit — failed
sign-ins as failed tokens — counts on that address, so one client behind the proxy never
locks out the others; the audit log records it."""

from __future__ import annotations

import pytest
from django.test import Client, RequestFactory

from hubimages.lib.addresses import client_address
from hubimages.models import AuditEntry
from tests.api_helpers import API, bearer, post_json
from tests.conftest import PASSWORD
from tests.test_hardening import manage

PROXY = "10.0.0.2"


def address_of(remote: str, forwarded: str | None = None) -> str:
    headers = {"HTTP_X_FORWARDED_FOR": forwarded} if forwarded is not None else {}
    return client_address(RequestFactory().get("/", REMOTE_ADDR=remote, **headers))


def test_without_trusted_proxies_x_forwarded_for_is_ignored(settings):
    settings.TRUSTED_PROXIES = []

    assert address_of(PROXY, "203.0.113.5") == PROXY


@pytest.mark.parametrize(
    ("remote", "forwarded", "expected"),
    [
        # The proxy appends the address it saw: what the client wrote before it is its own.
        (PROXY, "203.0.113.5", "203.0.113.5"),
        (PROXY, "6.6.6.6, 203.0.113.5", "203.0.113.5"),
        (PROXY, "junk, 203.0.113.5", "203.0.113.5"),
        # A chain of trusted proxies: the address the first of them saw.
        (PROXY, "203.0.113.5, 10.0.0.9", "203.0.113.5"),
        (PROXY, "6.6.6.6, 203.0.113.5, 10.0.0.9, 10.0.0.3", "203.0.113.5"),
        (PROXY, "2001:db8::7", "2001:db8::7"),
        # The proxy speaking for itself (a health check), or a header with nothing usable.
        (PROXY, None, PROXY),
        (PROXY, "", PROXY),
        (PROXY, "junk", PROXY),
        # From anywhere else the header is the client's own word, and ignored.
        ("192.0.2.66", "203.0.113.5", "192.0.2.66"),
        ("10.0.1.2", "203.0.113.5", "10.0.1.2"),
    ],
)
def test_x_forwarded_for_is_read_only_from_a_trusted_proxy(settings, remote, forwarded, expected):
    settings.TRUSTED_PROXIES = ["10.0.0.0/24"]

    assert address_of(remote, forwarded) == expected


def test_a_trusted_proxy_may_be_one_address(settings):
    settings.TRUSTED_PROXIES = ["10.0.0.2"]

    assert address_of("10.0.0.2", "203.0.113.5") == "203.0.113.5"
    assert address_of("10.0.0.3", "203.0.113.5") == "10.0.0.3"


def test_a_failed_sign_in_lock_out_behind_a_trusted_proxy_concerns_only_that_client(
    db, django_user_model, settings
):
    settings.AXES_FAILURE_LIMIT = 3
    settings.TRUSTED_PROXIES = ["10.0.0.0/24"]
    django_user_model.objects.create_user("alice", password=PASSWORD)
    guesser = Client(REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR="203.0.113.5")
    alice = Client(REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR="203.0.113.6")

    for _ in range(3):
        guesser.post("/accounts/login/", {"username": "alice", "password": "wrong"})
    locked = guesser.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    signed_in = alice.post("/accounts/login/", {"username": "alice", "password": PASSWORD})

    assert locked.status_code == 429
    assert signed_in.status_code == 302 and "_auth_user_id" in alice.session


def test_the_audit_log_names_the_client_behind_a_trusted_proxy_never_a_forged_one(
    db, client, django_user_model, deleter, settings
):
    settings.TRUSTED_PROXIES = ["10.0.0.0/24"]
    django_user_model.objects.create_user("alice", password=PASSWORD)
    token = bearer(deleter)
    policy = {"name": "ci", "rules": [{"keep": "always"}]}

    client.post(
        "/accounts/login/",
        {"username": "alice", "password": "wrong"},
        REMOTE_ADDR=PROXY,
        HTTP_X_FORWARDED_FOR="203.0.113.5",
    )
    post_json(
        client,
        f"{API}/retention-policies",
        policy,
        headers=token,
        REMOTE_ADDR=PROXY,
        HTTP_X_FORWARDED_FOR="6.6.6.6, 203.0.113.6",
    )
    post_json(  # not through the proxy: the header is the sender's own word
        client,
        f"{API}/retention-policies",
        {**policy, "name": "ci2"},
        headers=token,
        REMOTE_ADDR="192.0.2.66",
        HTTP_X_FORWARDED_FOR="203.0.113.7",
    )

    entries = AuditEntry.objects.exclude(action=AuditEntry.Action.TOKEN_CREATED).order_by("id")
    assert [(entry.action, entry.address) for entry in entries] == [
        ("sign_in_failed", "203.0.113.5"),
        ("policy_created", "203.0.113.6"),
        ("policy_created", "192.0.2.66"),
    ]


def test_trusted_proxies_must_be_addresses_or_ranges(tmp_path):
    result = manage(
        "check",
        DEBUG="true",
        TRUSTED_PROXIES="10.0.0.0/8,proxy.internal",
        DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite3",
    )

    assert result.returncode != 0
    assert "TRUSTED_PROXIES must list IP addresses or CIDR ranges" in result.stderr
    assert "'proxy.internal'" in result.stderr
