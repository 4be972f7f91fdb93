"""Production settings (SPEC §7): a secret key or no start, one HTTPS switch, a strict
Content Security Policy, throttled sign-ins, 500s logged with their traceback, and a clean
`check --deploy` under the settings the README documents."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

from hubimages import settings as config
from tests.conftest import PASSWORD

ROOT = Path(__file__).resolve().parent.parent


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    """`manage.py` in a fresh process with exactly these settings in its environment."""
    environment = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **env}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


PRODUCTION = {
    "DEBUG": "false",
    "SECRET_KEY": "x" * 20 + "-production-grade-secret-key-for-checks-0123456789",
    "ALLOWED_HOSTS": "hubimages.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://hubimages.example.com",
    "HTTPS": "true",
}


def test_without_a_secret_key_a_production_process_refuses_to_start():
    result = manage("check", DEBUG="false")

    assert result.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is false" in result.stderr


def test_check_deploy_is_clean_under_the_documented_production_settings(tmp_path):
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite3",
        **PRODUCTION,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_one_https_switch_sets_secure_cookies_hsts_and_the_proxy_header(tmp_path):
    script = (
        "from django.conf import settings as s; import json; print(json.dumps(["
        "s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS, "
        "s.SECURE_PROXY_SSL_HEADER, s.SECURE_SSL_REDIRECT]))"
    )
    on = manage(
        "shell",
        "-v",
        "0",
        "-c",
        script,
        DATABASE_URL=f"sqlite:///{tmp_path}/a.sqlite3",
        **PRODUCTION,
    )
    off = manage(
        "shell",
        "-v",
        "0",
        "-c",
        script,
        DATABASE_URL=f"sqlite:///{tmp_path}/b.sqlite3",
        **{**PRODUCTION, "HTTPS": "false"},
    )

    assert json.loads(on.stdout) == [
        True,
        True,
        31_536_000,
        ["HTTP_X_FORWARDED_PROTO", "https"],
        True,
    ]
    assert json.loads(off.stdout) == [False, False, 0, None, False]


def test_every_page_carries_a_csp_without_inline_code_or_eval(viewer_client):
    response = viewer_client.get("/")

    policy = response["Content-Security-Policy"]
    directives = dict(item.strip().split(" ", 1) for item in policy.split(";"))
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert directives["frame-ancestors"] == "'none'"
    page = response.content.decode()
    assert "<script>" not in page  # every script is a file
    assert '"allowEval": false' in page  # htmx never evaluates attribute code


def test_database_url_query_options_reach_the_driver():
    pg = config.database_from_url(
        "postgres://app@db.example/hub?sslmode=verify-full&connect_timeout=5"
    )

    assert pg["OPTIONS"] == {"sslmode": "verify-full", "connect_timeout": "5"}
    assert pg["CONN_HEALTH_CHECKS"] is True


def test_failed_sign_ins_are_throttled_per_username_and_address(db, django_user_model, settings):
    settings.AXES_FAILURE_LIMIT = 3
    django_user_model.objects.create_user("alice", password=PASSWORD)
    web = Client()

    statuses = [
        web.post("/accounts/login/", {"username": "alice", "password": "wrong"}).status_code
        for _ in range(4)
    ]
    locked = web.post("/accounts/login/", {"username": "alice", "password": PASSWORD})

    assert statuses[:2] == [200, 200] and statuses[3] == 429
    assert locked.status_code == 429
    assert "Too many failed sign-ins" in locked.content.decode()
    assert "_auth_user_id" not in web.session
    # Someone else, or alice from elsewhere, is not locked out.
    elsewhere = Client(REMOTE_ADDR="10.9.8.7")
    assert (
        elsewhere.post("/accounts/login/", {"username": "alice", "password": PASSWORD}).status_code
        == 302
    )


def test_a_500_is_logged_with_its_traceback(viewer_client, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("the list broke")

    monkeypatch.setattr("hubimages.inventory.repositories.repository_overview", broken)
    viewer_client.raise_request_exception = False

    with caplog.at_level(logging.ERROR):
        response = viewer_client.get("/")

    assert response.status_code == 500
    errors = [
        r for r in caplog.records if r.name == "django.request" and r.levelno == logging.ERROR
    ]
    assert errors and errors[0].exc_info[0] is RuntimeError


def test_json_log_lines_carry_the_traceback():
    from hubimages.lib.logs import JsonFormatter

    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "django.request",
            logging.ERROR,
            __file__,
            1,
            "Internal Server Error: /",
            None,
            sys.exc_info(),
        )
    line = json.loads(JsonFormatter().format(record))

    assert line["level"] == "ERROR" and line["logger"] == "django.request"
    assert "ValueError: boom" in line["traceback"] and line["time"].endswith("+00:00")


@pytest.mark.parametrize("value", ["yaml", "JSON lines"])
def test_an_unknown_log_format_stops_start_up_with_its_name(value):
    result = manage("check", DEBUG="true", LOG_FORMAT=value)

    assert result.returncode != 0 and "LOG_FORMAT must be text or json" in result.stderr
