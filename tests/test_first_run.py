"""A Django user's first habit: `manage.py runserver` right after `migrate`, with the
default settings (`DEBUG=false`), before or after `collectstatic` — the real process,
fetching a page and the stylesheet and script it links."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from devtools.processes import ROOT, environment
from devtools.server import free_port
from tests.test_production import database_url

SECRET = "first-run-secret-key-" + "x" * 30


@pytest.fixture
def settings_env(tmp_path: Path, transactional_db) -> dict[str, str]:
    return environment(
        DATABASE_URL=database_url(),
        SECRET_KEY=SECRET,
        STATIC_ROOT=str(tmp_path / "static"),
        SYNC_INTERVAL_MINUTES="0",
    )


@pytest.fixture
def runserver(tmp_path: Path, settings_env) -> Iterator[Callable[..., tuple[str, Path]]]:
    """Starts `manage.py runserver` (options as given); returns its URL and its output."""
    started: list[subprocess.Popen] = []

    def start(*options: str) -> tuple[str, Path]:
        port = free_port()
        output = tmp_path / f"runserver-{port}.log"
        with output.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "manage.py", "runserver", *options, f"127.0.0.1:{port}"],
                cwd=ROOT,
                env=settings_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, output.read_text()
            try:
                requests.get(f"{url}/healthz", timeout=2)
                return url, output
            except requests.ConnectionError:
                assert time.monotonic() < deadline, output.read_text()
                time.sleep(0.2)

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=15)


def assert_page_and_its_static_files_are_served(url: str) -> None:
    page = requests.get(f"{url}/accounts/login/", timeout=10)
    assert page.status_code == 200, page.text[:2000]
    stylesheet = re.search(r'<link rel="stylesheet" href="([^"]+)"', page.text).group(1)
    script = re.search(r'<script src="(/static/hubimages[^"]*)"', page.text).group(1)

    css = requests.get(f"{url}{stylesheet}", timeout=10)
    js = requests.get(f"{url}{script}", timeout=10)

    assert css.status_code == 200 and css.headers["Content-Type"].startswith("text/css")
    assert css.text == (ROOT / "static" / "hubimages.css").read_text()
    assert js.status_code == 200 and "javascript" in js.headers["Content-Type"]
    assert js.text == (ROOT / "static" / "hubimages.js").read_text()


def test_runserver_serves_pages_and_their_static_files_before_collectstatic(runserver):
    url, output = runserver("--noreload")

    assert_page_and_its_static_files_are_served(url)
    # And start-up said what a deployment still needs.
    assert "python manage.py collectstatic" in output.read_text()


def test_runserver_insecure_serves_the_collected_files_too(runserver, settings_env):
    collected = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--no-input", "-v", "0"],
        cwd=ROOT,
        env=settings_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert collected.returncode == 0, collected.stderr

    url, output = runserver("--noreload", "--insecure")

    assert_page_and_its_static_files_are_served(url)
    page = requests.get(f"{url}/accounts/login/", timeout=10).text
    assert re.search(r'href="/static/hubimages\.[0-9a-f]{12}\.css"', page)  # cache-busting names
    assert "collectstatic" not in output.read_text()
