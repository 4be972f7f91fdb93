"""Personal access tokens (SPEC §9): stored as a hash and shown once, listed with their last
use, revocable, expiring, limited by their scope and their user, rate-limited on failure like
sign-ins; the API tokens page and `create_api_token`."""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from hubimages.accounts import tokens
from hubimages.models import ApiToken, ApiTokenFailure
from tests.api_helpers import API, assert_error

PAGE = "/account/api-tokens/"
REPOSITORIES = f"{API}/repositories"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def created_token(page: str) -> str:
    match = re.search(r'<code class="token-value" id="new-token-value">(hubi_[\w-]+)</code>', page)
    assert match, "no new token on the page"
    return match.group(1)


# -- storage ----------------------------------------------------------------------------------


def test_a_token_is_stored_only_as_its_hash(deleter):
    issued = tokens.issue(user=deleter, name="ci", scope=ApiToken.Scope.READ)

    row = ApiToken.objects.get()
    assert issued.token.startswith("hubi_") and len(issued.token) >= 40
    assert row.token_hash == hashlib.sha256(issued.token.encode()).hexdigest()
    assert row.prefix == issued.token[:12]
    stored = [str(value) for value in ApiToken.objects.values().get().values()]
    assert not any(issued.token in value for value in stored)
    # Two tokens never collide, and a token is not its hash.
    other = tokens.issue(user=deleter, name="ci", scope=ApiToken.Scope.READ)
    assert other.token != issued.token
    assert tokens.authenticate(issued.token, address="127.0.0.9") == row
    with pytest.raises(tokens.InvalidToken):
        tokens.authenticate(row.token_hash, address="127.0.0.9")


# -- the page ---------------------------------------------------------------------------------


def test_the_page_shows_a_new_token_once_and_then_lists_it_without_the_secret(
    viewer_client, viewer, client
):
    response = viewer_client.post(
        PAGE, {"name": "CI cleanup", "scope": "read", "expires_in_days": "30"}
    )

    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    token = created_token(response.content.decode())
    assert "Copy it now: it is shown this once" in response.content.decode()
    row = ApiToken.objects.get()
    assert (row.user, row.name, row.scope) == (viewer, "CI cleanup", "read")
    assert timedelta(days=29, hours=23) < row.expires_at - timezone.now() <= timedelta(days=30)
    assert client.get(REPOSITORIES, headers=auth(token)).status_code == 200

    later = viewer_client.get(PAGE).content.decode()
    assert token not in later
    assert f"<code>{row.prefix}…</code>" in later and "CI cleanup" in later
    assert '<span class="badge badge-active">Active</span>' in later
    assert re.search(r'<td class="last-used"><time datetime="[^"]+"', later)  # used just now


def test_the_page_lists_only_the_users_own_tokens(viewer_client, deleter):
    tokens.issue(user=deleter, name="someone else's", scope=ApiToken.Scope.READ)

    assert "someone else" not in viewer_client.get(PAGE).content.decode()


def test_a_token_that_never_expires_and_was_never_used_says_so(viewer_client):
    viewer_client.post(PAGE, {"name": "forever", "scope": "read+delete", "expires_in_days": ""})

    page = viewer_client.get(PAGE).content.decode()
    row = ApiToken.objects.get()
    assert row.expires_at is None and row.scope == "read+delete"
    assert '<td><span class="muted">never</span></td>' in page  # expires
    assert '<td class="last-used"><span class="muted">never</span></td>' in page
    # The viewer may not delete, and the page says the token cannot either.
    assert "you may delete nowhere, so yours cannot" in page


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"name": "", "scope": "read"}, "name"),
        ({"name": "x", "scope": "admin"}, "scope"),
        ({"name": "x", "scope": "read", "expires_in_days": "0"}, "expires_in_days"),
        ({"name": "x", "scope": "read", "expires_in_days": "99999"}, "expires_in_days"),
        ({"name": "x" * 101, "scope": "read"}, "name"),
    ],
)
def test_a_bad_form_creates_nothing_and_says_why(viewer_client, form, field):
    response = viewer_client.post(PAGE, form)

    assert response.status_code == 422
    page = response.content.decode()
    assert re.search(rf'id="id_{field}".*?<span class="field-error">', page, re.S)
    assert "new-token-value" not in page
    assert not ApiToken.objects.exists()


def test_the_header_links_to_the_api_tokens_page(viewer_client):
    page = viewer_client.get("/").content.decode()

    assert re.search(
        r'<span class="user-name">viewer</span>\s*<a href="/account/api-tokens/">', page
    )


def test_the_page_needs_a_signed_in_user(client, db):
    response = client.get(PAGE)

    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


# -- revocation and expiry --------------------------------------------------------------------


def test_revoking_a_token_stops_it_at_once(viewer_client, viewer, client):
    issued = tokens.issue(user=viewer, name="ci", scope=ApiToken.Scope.READ)
    assert client.get(REPOSITORIES, headers=auth(issued.token)).status_code == 200

    response = viewer_client.post(f"{PAGE}{issued.row.pk}/revoke")

    assert response.status_code == 303 and response["Location"] == PAGE
    body = assert_error(client.get(REPOSITORIES, headers=auth(issued.token)), 401, "invalid_token")
    assert body["error"]["message"] == "this token (ci) was revoked"
    page = viewer_client.get(PAGE).content.decode()
    assert "Revoked token ci" in page and '<span class="badge badge-warn">Revoked</span>' in page
    assert f'action="{PAGE}{issued.row.pk}/revoke"' not in page


def test_nobody_revokes_another_users_token(viewer_client, deleter, client):
    issued = tokens.issue(user=deleter, name="theirs", scope=ApiToken.Scope.READ)

    assert viewer_client.post(f"{PAGE}{issued.row.pk}/revoke").status_code == 404
    assert viewer_client.get(f"{PAGE}{issued.row.pk}/revoke").status_code == 405
    assert client.get(REPOSITORIES, headers=auth(issued.token)).status_code == 200


def test_an_expired_token_is_refused_and_listed_as_expired(viewer_client, viewer, client):
    issued = tokens.issue(user=viewer, name="old", scope=ApiToken.Scope.READ, expires_in_days=1)
    assert client.get(REPOSITORIES, headers=auth(issued.token)).status_code == 200
    ApiToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))

    body = assert_error(client.get(REPOSITORIES, headers=auth(issued.token)), 401, "invalid_token")

    assert body["error"]["message"].startswith("this token (old) expired on ")
    assert (
        '<span class="badge badge-stale">Expired</span>' in viewer_client.get(PAGE).content.decode()
    )


def test_an_inactive_users_token_is_refused(viewer, client):
    issued = tokens.issue(user=viewer, name="ci", scope=ApiToken.Scope.READ)
    viewer.is_active = False
    viewer.save()

    assert_error(client.get(REPOSITORIES, headers=auth(issued.token)), 401, "invalid_token")


# -- last used --------------------------------------------------------------------------------


def test_last_used_is_recorded_and_written_at_most_once_a_minute(viewer, client):
    issued = tokens.issue(user=viewer, name="ci", scope=ApiToken.Scope.READ)
    assert issued.row.last_used_at is None

    client.get(REPOSITORIES, headers=auth(issued.token))
    first = ApiToken.objects.get().last_used_at
    client.get(REPOSITORIES, headers=auth(issued.token))
    assert first is not None and ApiToken.objects.get().last_used_at == first

    ApiToken.objects.update(last_used_at=first - timedelta(minutes=2))
    client.get(REPOSITORIES, headers=auth(issued.token))
    assert ApiToken.objects.get().last_used_at > first


# -- failed attempts ----------------------------------------------------------------------------


def test_failed_token_attempts_lock_the_address_out_like_sign_ins(viewer, client, settings):
    settings.AXES_FAILURE_LIMIT = 3
    guesses = [f"hubi_guess{i}" for i in range(3)]

    for guess in guesses:
        assert_error(client.get(REPOSITORIES, headers=auth(guess)), 401, "invalid_token")
    locked = client.get(REPOSITORIES, headers=auth("hubi_guess3"))

    body = assert_error(locked, 429, "too_many_failures")
    assert "too many failed token attempts from this address" in body["error"]["message"]
    # Another address is not concerned.
    other = client.get(REPOSITORIES, headers=auth("hubi_guess4"), REMOTE_ADDR="127.0.0.2")
    assert_error(other, 401, "invalid_token")
    # After the cool-off the address may try again.
    ApiTokenFailure.objects.update(locked_until=timezone.now() - timedelta(seconds=1))
    assert_error(client.get(REPOSITORIES, headers=auth("hubi_guess5")), 401, "invalid_token")


def test_a_guesser_never_locks_out_a_valid_token_sent_from_its_own_address(
    viewer, client, settings
):
    """An office behind one NAT address, or every client behind a proxy not listed in
    TRUSTED_PROXIES, shares one address: the limit stops guesses, not the valid tokens."""
    settings.AXES_FAILURE_LIMIT = 3
    good = tokens.issue(user=viewer, name="ci", scope=ApiToken.Scope.READ).token

    for i in range(5):
        client.get(REPOSITORIES, headers=auth(f"hubi_guess{i}"))

    assert_error(client.get(REPOSITORIES, headers=auth("hubi_guess")), 429, "too_many_failures")
    assert client.get(REPOSITORIES, headers=auth(good)).status_code == 200


PROXY = "10.0.0.2"


def through_proxy(address: str) -> dict[str, str]:
    """What the TLS proxy sends on: its own address, and the client's in X-Forwarded-For."""
    return {"REMOTE_ADDR": PROXY, "HTTP_X_FORWARDED_FOR": address}


def test_clients_behind_a_trusted_proxy_are_each_limited_on_their_own_address(
    viewer, client, settings
):
    settings.AXES_FAILURE_LIMIT = 3
    settings.TRUSTED_PROXIES = ["10.0.0.0/24"]
    good = tokens.issue(user=viewer, name="ci", scope=ApiToken.Scope.READ).token
    guesser, honest, careless = "203.0.113.5", "203.0.113.6", "198.51.100.7"

    for i in range(3):
        client.get(REPOSITORIES, headers=auth(f"hubi_guess{i}"), **through_proxy(guesser))

    refused = client.get(REPOSITORIES, headers=auth("hubi_guess"), **through_proxy(guesser))
    assert_error(refused, 429, "too_many_failures")
    assert client.get(REPOSITORIES, headers=auth(good), **through_proxy(honest)).status_code == 200
    # Another client's own mistake is its own first failure, not a lock-out.
    typo = client.get(REPOSITORIES, headers=auth(good[:-1]), **through_proxy(careless))
    assert_error(typo, 401, "invalid_token")
    counted = dict(
        ApiTokenFailure.objects.filter(key__startswith="address:").values_list("key", "failures")
    )
    assert counted == {f"address:{guesser}": 3, f"address:{careless}": 1}


def test_x_forwarded_for_from_an_untrusted_address_does_not_escape_the_limit(
    viewer, client, settings
):
    """A guesser that makes up a new X-Forwarded-For each time is still one address."""
    settings.AXES_FAILURE_LIMIT = 3
    settings.TRUSTED_PROXIES = ["10.0.0.0/24"]

    for i in range(3):
        client.get(
            REPOSITORIES,
            headers=auth(f"hubi_guess{i}"),
            REMOTE_ADDR="192.0.2.66",
            HTTP_X_FORWARDED_FOR=f"203.0.113.{i}",
        )

    refused = client.get(
        REPOSITORIES,
        headers=auth("hubi_guess"),
        REMOTE_ADDR="192.0.2.66",
        HTTP_X_FORWARDED_FOR="203.0.113.99",
    )
    assert_error(refused, 429, "too_many_failures")
    assert ApiTokenFailure.objects.filter(key="address:192.0.2.66").exists()


def test_guesses_at_one_token_prefix_are_limited_across_addresses_but_its_holder_is_not(
    viewer, client, settings
):
    """The first characters of a token are shown on the tokens page (and in screenshots):
    guesses of the rest from many addresses are limited per prefix, and the holder of
    the real token goes on working."""
    settings.AXES_FAILURE_LIMIT = 3
    real = tokens.issue(user=viewer, name="ci", scope=ApiToken.Scope.READ).token
    prefix = real[: tokens.SHOWN_CHARACTERS]

    for i in range(3):
        guess = prefix + f"guess{i}".ljust(len(real) - len(prefix), "x")
        client.get(REPOSITORIES, headers=auth(guess), REMOTE_ADDR=f"192.0.2.{10 + i}")

    guess = prefix + "another".ljust(len(real) - len(prefix), "x")
    body = assert_error(
        client.get(REPOSITORIES, headers=auth(guess), REMOTE_ADDR="192.0.2.20"),
        429,
        "too_many_failures",
    )
    assert f"tokens starting {prefix}" in body["error"]["message"]
    assert client.get(REPOSITORIES, headers=auth(real), REMOTE_ADDR="192.0.2.10").status_code == 200
    assert client.get(REPOSITORIES, headers=auth(real), REMOTE_ADDR="192.0.2.30").status_code == 200


def test_a_valid_token_does_not_reset_the_failure_count_of_its_address(viewer, client, settings):
    """A guesser holding one valid token of its own must not clear its count with it."""
    settings.AXES_FAILURE_LIMIT = 3
    good = tokens.issue(user=viewer, name="ci", scope=ApiToken.Scope.READ).token

    for guess in ("hubi_guess0", "hubi_guess1"):
        assert_error(client.get(REPOSITORIES, headers=auth(guess)), 401, "invalid_token")
    assert client.get(REPOSITORIES, headers=auth(good)).status_code == 200
    assert_error(client.get(REPOSITORIES, headers=auth("hubi_guess2")), 401, "invalid_token")

    assert_error(client.get(REPOSITORIES, headers=auth("hubi_guess3")), 429, "too_many_failures")


def test_failures_older_than_the_cool_off_are_forgotten(viewer, client, settings):
    settings.AXES_FAILURE_LIMIT = 2
    good = tokens.issue(user=viewer, name="ci", scope=ApiToken.Scope.READ).token
    client.get(REPOSITORIES, headers=auth("hubi_guess"))
    ApiTokenFailure.objects.update(first_failed_at=timezone.now() - settings.AXES_COOLOFF_TIME)

    client.get(REPOSITORIES, headers=auth("hubi_guess"))

    assert ApiTokenFailure.objects.get(key="address:127.0.0.1").failures == 1
    assert client.get(REPOSITORIES, headers=auth(good)).status_code == 200


def test_an_expired_or_revoked_token_is_no_guess_and_does_not_count(viewer, client, settings):
    settings.AXES_FAILURE_LIMIT = 1
    issued = tokens.issue(user=viewer, name="ci", scope=ApiToken.Scope.READ)
    tokens.revoke(issued.row)

    for _ in range(3):
        assert_error(client.get(REPOSITORIES, headers=auth(issued.token)), 401, "invalid_token")

    assert not ApiTokenFailure.objects.exists()


# -- the command ------------------------------------------------------------------------------


def test_create_api_token_prints_a_working_token_as_its_last_line(deleter, client):
    out, err = StringIO(), StringIO()

    call_command(
        "create_api_token",
        "deleter",
        "--name",
        "nightly cleanup",
        "--scope",
        "read+delete",
        "--expires-in-days",
        "7",
        stdout=out,
        stderr=err,
    )

    token = out.getvalue().strip().splitlines()[-1]
    row = ApiToken.objects.get()
    assert (row.user, row.name, row.scope) == (deleter, "nightly cleanup", "read+delete")
    assert timedelta(days=6, hours=23) < row.expires_at - timezone.now() <= timedelta(days=7)
    assert row.token_hash == tokens.hash_token(token)
    assert "shown only now" in out.getvalue() and err.getvalue() == ""
    assert client.get(REPOSITORIES, headers=auth(token)).status_code == 200


def test_create_api_token_warns_when_the_user_cannot_delete(viewer):
    out, err = StringIO(), StringIO()

    call_command(
        "create_api_token",
        "viewer",
        "--name",
        "x",
        "--scope",
        "read+delete",
        stdout=out,
        stderr=err,
    )

    assert "viewer may delete nowhere (no deleter role)" in err.getvalue()
    assert "never expires" in out.getvalue()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["nobody", "--name", "x", "--scope", "read"], "no user 'nobody'"),
        (["viewer", "--name", "x", "--scope", "read", "--expires-in-days", "0"], "from 1 to"),
        (["viewer", "--name", " ", "--scope", "read"], "--name must not be empty"),
    ],
)
def test_create_api_token_refuses_bad_arguments_and_creates_nothing(viewer, arguments, message):
    with pytest.raises(CommandError, match=message):
        call_command("create_api_token", *arguments, stdout=StringIO())

    assert not ApiToken.objects.exists()


def test_create_api_token_knows_only_the_two_scopes(viewer):
    with pytest.raises(CommandError, match="invalid choice: 'admin'"):
        call_command("create_api_token", "viewer", "--name", "x", "--scope", "admin")
