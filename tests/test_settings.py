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
