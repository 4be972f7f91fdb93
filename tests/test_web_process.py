"""The web process as the Procfile starts it (gunicorn): what it writes to its access log,
and the answers gunicorn gives by itself, before Django sees the request; and the
container image's web role, which starts it the same way."""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from devtools.processes import ROOT, Process, environment, procfile_command, wait_for_http
from devtools.server import free_port
from hubimages.accounts import tokens
from hubimages.models import ApiToken
from tests.test_production import database_url

SECRET = "web-process-secret-key-" + "x" * 30


@dataclass
class Web:
    url: str
    process: Process

    def log(self) -> str:
        """Everything the process wrote, once it has stopped (so nothing is left buffered)."""
        self.process.stop()
        return self.process.log.read_text(errors="replace")


@pytest.fixture
def web(tmp_path: Path, transactional_db) -> Iterator[Web]:
    port = free_port()
    env = environment(
        DATABASE_URL=database_url(),
        SECRET_KEY=SECRET,
        DEBUG="false",
        STATIC_ROOT=str(tmp_path / "static"),
        SYNC_INTERVAL_MINUTES="0",
        PORT=str(port),
        WEB_CONCURRENCY="1",
    )
    process = Process("web", env, tmp_path / "web.log")
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", process)
        yield Web(f"http://127.0.0.1:{port}", process)
    finally:
        process.stop()


def test_a_token_in_the_query_string_never_reaches_the_access_log(web, viewer):
    """The API refuses `?token=` (tokens go in the Authorization header), but the request
    line was already on its way to the log: the secret must not be in it."""
    secret = tokens.issue(user=viewer, name="ci", scope=ApiToken.Scope.READ).token
    api = f"{web.url}/api/v1"

    refused = requests.get(f"{api}/repositories", params={"token": secret}, timeout=10)
    requests.get(f"{api}/repositories", params={"search": "x", "access_token": secret}, timeout=10)
    requests.get(f"{web.url}/healthz", params={"password": secret}, timeout=10)
    requests.get(f"{api}/{secret}", timeout=10)
    listed = requests.get(
        f"{api}/repositories",
        params={"search": "team"},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=10,
    )

    assert refused.status_code == 401 and listed.status_code == 200
    log = web.log()
    assert secret not in log
    assert secret[: tokens.SHOWN_CHARACTERS + 1] not in log  # not a character past the prefix
    assert '"GET /api/v1/repositories?token=[redacted] HTTP/1.1" 401' in log
    assert "search=x&access_token=[redacted]" in log
    assert '"GET /healthz?password=[redacted] HTTP/1.1" 200' in log
    assert '"GET /api/v1/repositories?search=team HTTP/1.1" 200' in log  # the rest stays


def test_the_django_processes_log_lines_are_redacted_too():
    """runserver logs its request lines through Django's logging (`django.server`)."""
    secret = "hubi_" + "s3cret" * 7
    record = logging.getLogger("django.server").makeRecord(
        "django.server",
        logging.INFO,
        __file__,
        1,
        '"%s" %s %s',
        (f"GET /?token={secret} HTTP/1.1", 401, 9),
        None,
    )
    handlers = [h for h in logging.getLogger().handlers if h.filters]

    assert handlers and all(handler.filter(record) for handler in handlers)
    assert record.getMessage() == '"GET /?token=[redacted] HTTP/1.1" 401 9'


def test_gunicorn_answers_json_to_a_request_line_or_headers_too_large(web):
    """gunicorn refuses these before any application code runs, so they cannot know the
    path: they answer the API's JSON error shape whatever the path."""
    long_uri = requests.get(f"{web.url}/api/v1/repositories?search={'a' * 5000}", timeout=10)
    long_header = requests.get(
        f"{web.url}/api/v1/repositories", headers={"X-Padding": "a" * 9000}, timeout=10
    )
    many_headers = requests.get(
        f"{web.url}/api/v1/repositories",
        headers={f"X-Header-{n}": "x" for n in range(120)},
        timeout=10,
    )

    for response, status, code in [
        (long_uri, 414, "uri_too_long"),
        (long_header, 431, "headers_too_large"),
        (many_headers, 431, "headers_too_large"),
    ]:
        assert response.status_code == status
        assert response.headers["Content-Type"] == "application/json"
        body = json.loads(response.content)
        assert body["error"]["code"] == code and body["error"]["message"], body
        assert b"<html" not in response.content.lower()
    # The process lives on and serves the next request.
    assert requests.get(f"{web.url}/healthz", timeout=10).status_code == 200


def test_the_images_web_role_starts_gunicorn_with_the_procfiles_settings(tmp_path):
    """The container's entry point, run with a stand-in gunicorn that prints its arguments:
    without `hubimages.gunicorn_conf` a container's access log would keep the tokens put in
    URLs, and its 414 and 431 answers would be HTML."""
    stand_in = tmp_path / "gunicorn"
    stand_in.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    stand_in.chmod(0o755)

    started = subprocess.run(
        [str(ROOT / "deploy" / "container" / "entrypoint"), "web"],
        env={"PATH": f"{tmp_path}:/usr/bin:/bin", "DATABASE_URL": "sqlite:////data/db.sqlite3"},
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert started.returncode == 0, started.stderr
    for arguments in (started.stdout.splitlines(), shlex.split(procfile_command("web"))):
        assert arguments[arguments.index("--config") + 1] == "python:hubimages.gunicorn_conf"
