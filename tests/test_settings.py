"""Settings read from the environment reject junk with a message naming the variable."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from hubimages import settings as config


def test_it_reads_booleans_strictly(monkeypatch):
    monkeypatch.setenv("DEBUG", "yes")
    assert config.env_bool("DEBUG", False) is True
    monkeypatch.setenv("DEBUG", "off")
    assert config.env_bool("DEBUG", True) is False
    monkeypatch.setenv("DEBUG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="DEBUG"):
        config.env_bool("DEBUG", False)


def test_it_reads_whole_numbers_with_a_minimum(monkeypatch):
    monkeypatch.setenv("STALE_AFTER_MONTHS", "12")
    assert config.env_int("STALE_AFTER_MONTHS", 6, minimum=1) == 12
    monkeypatch.setenv("STALE_AFTER_MONTHS", "six")
    with pytest.raises(ImproperlyConfigured, match="STALE_AFTER_MONTHS"):
        config.env_int("STALE_AFTER_MONTHS", 6, minimum=1)
    monkeypatch.setenv("STALE_AFTER_MONTHS", "0")
    with pytest.raises(ImproperlyConfigured, match="at least 1"):
        config.env_int("STALE_AFTER_MONTHS", 6, minimum=1)


def test_it_refuses_a_registry_url_with_credentials_or_no_scheme(monkeypatch):
    monkeypatch.setenv("REGISTRY_URL", "https://registry.example.com/")
    assert config.env_url("REGISTRY_URL") == "https://registry.example.com"
    monkeypatch.setenv("REGISTRY_URL", "https://bob:hunter2@registry.example.com")
    with pytest.raises(ImproperlyConfigured) as refused:
        config.env_url("REGISTRY_URL")
    assert "hunter2" not in str(refused.value)
    monkeypatch.setenv("REGISTRY_URL", "registry.example.com")
    with pytest.raises(ImproperlyConfigured, match="http"):
        config.env_url("REGISTRY_URL")


def test_it_parses_database_urls():
    pg = config.database_from_url("postgres://app:p%40ss@db.example:6543/hub")
    assert pg["ENGINE"] == "django.db.backends.postgresql"
    assert (pg["USER"], pg["PASSWORD"], pg["HOST"], pg["PORT"], pg["NAME"]) == (
        "app",
        "p@ss",
        "db.example",
        "6543",
        "hub",
    )
    lite = config.database_from_url("sqlite:////var/lib/hub/db.sqlite3")
    assert str(lite["NAME"]) == "/var/lib/hub/db.sqlite3"
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL"):
        config.database_from_url("mysql://x/y")
    with pytest.raises(ImproperlyConfigured, match="name the database"):
        config.database_from_url("postgres://host/")


def test_it_reads_an_oidc_issuer_https_or_http_on_loopback_only(monkeypatch):
    monkeypatch.setenv("OIDC_ISSUER", "https://sso.example.com/realms/acme")
    assert config.env_issuer("OIDC_ISSUER") == "https://sso.example.com/realms/acme"
    monkeypatch.setenv("OIDC_ISSUER", "https://tenant.auth0.example/")  # kept as written
    assert config.env_issuer("OIDC_ISSUER") == "https://tenant.auth0.example/"
    monkeypatch.setenv("OIDC_ISSUER", "http://127.0.0.1:9000/o")
    assert config.env_issuer("OIDC_ISSUER") == "http://127.0.0.1:9000/o"
    for junk, message in (
        ("http://sso.example.com", "https"),
        ("sso.example.com", "issuer's URL"),
        ("https://sso.example.com/?x=1", "issuer's URL"),
        ("https://me:secret@sso.example.com", "credentials"),
    ):
        monkeypatch.setenv("OIDC_ISSUER", junk)
        with pytest.raises(ImproperlyConfigured, match=message) as refused:
            config.env_issuer("OIDC_ISSUER")
        assert "secret@" not in str(refused.value)


def test_it_reads_a_secret_from_the_environment_or_a_file(monkeypatch, tmp_path):
    monkeypatch.setenv("OIDC_CLIENT_SECRET", " s3cret ")
    assert config.env_secret("OIDC_CLIENT_SECRET") == "s3cret"
    secret = tmp_path / "secret"
    secret.write_text("from-a-file\n")
    monkeypatch.setenv("OIDC_CLIENT_SECRET_FILE", str(secret))
    with pytest.raises(ImproperlyConfigured, match="not both"):
        config.env_secret("OIDC_CLIENT_SECRET")
    monkeypatch.delenv("OIDC_CLIENT_SECRET")
    assert config.env_secret("OIDC_CLIENT_SECRET") == "from-a-file"
    monkeypatch.setenv("OIDC_CLIENT_SECRET_FILE", str(tmp_path / "missing"))
    with pytest.raises(ImproperlyConfigured, match="cannot read"):
        config.env_secret("OIDC_CLIENT_SECRET")


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({"LOCAL_ACCOUNTS": "false"}, "LOCAL_ACCOUNTS=false needs OIDC_ISSUER"),
        ({"OIDC_ISSUER": "https://sso.example.com"}, "needs OIDC_CLIENT_ID"),
        ({"OIDC_CLIENT_ID": "hubimages"}, "need OIDC_ISSUER"),
        (
            {
                "OIDC_ISSUER": "https://sso.example.com",
                "OIDC_CLIENT_ID": "h",
                "OIDC_SCOPES": "email",
            },
            "must include openid",
        ),
        ({"LOCAL_ACCOUNTS": "nope"}, "LOCAL_ACCOUNTS"),
    ],
)
def test_start_up_refuses_a_sign_in_set_up_nobody_could_use(environment, message):
    import os
    import subprocess
    import sys

    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OIDC_", "LOCAL_ACCOUNTS"))
    }
    result = subprocess.run(
        [sys.executable, "-c", "import hubimages.settings"],
        env={**env, "SECRET_KEY": "x" * 50, **environment},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert message in result.stderr
