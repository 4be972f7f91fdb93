"""hubimages's own processes on the test database, started from the Procfile's commands
when a test needs the real thing: gunicorn alone (what a web request may do), or with
`db_worker`s (what the workers do). The `live` fixture (conftest) hands one out."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import requests
from django.db import connection

from devtools.processes import Process, environment, wait_for_http
from devtools.server import free_port

SECRET = "live-processes-secret-key-" + "x" * 30


def database_url() -> str:
    """The test database, as the other processes reach it."""
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{Path(settings['NAME']).resolve()}"
    credentials = quote(settings["USER"]) + (
        f":{quote(settings['PASSWORD'])}" if settings["PASSWORD"] else ""
    )
    return f"postgres://{credentials}@{settings['HOST']}:{settings['PORT']}/{settings['NAME']}"


class Live:
    """Processes on the test database; `settings` go to their environment."""

    def __init__(self, tmp_path: Path, **settings: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.logs = tmp_path / "logs"
        self.logs.mkdir(exist_ok=True)
        self.env = environment(
            DATABASE_URL=database_url(),
            SECRET_KEY=SECRET,
            DEBUG="false",
            STATIC_ROOT=str(tmp_path / "static"),
            SYNC_INTERVAL_MINUTES="0",
            PORT=str(self.port),
            **settings,
        )
        self.processes: list[Process] = []
        self._released = False

    def _release(self) -> None:
        if not self._released:
            release = Process("release", self.env, self.logs / "release.log")
            assert release.popen.wait(timeout=120) == 0, release.tail()
            self._released = True

    def start_web(self, workers: int = 2) -> str:
        """gunicorn, as the Procfile starts it; its URL once it answers."""
        self._release()
        env = {**self.env, "WEB_CONCURRENCY": str(workers)}
        web = Process("web", env, self.logs / "web.log")
        self.processes.append(web)
        wait_for_http(f"{self.url}/healthz", web)
        return self.url

    def start_worker(self) -> Process:
        self._release()
        count = sum(1 for p in self.processes if p.name == "worker")
        worker = Process("worker", self.env, self.logs / f"worker-{count}.log")
        self.processes.append(worker)
        return worker

    def signed_in(self, username: str, password: str) -> requests.Session:
        session = requests.Session()
        session.get(f"{self.url}/accounts/login/", timeout=10)
        answer = session.post(
            f"{self.url}/accounts/login/",
            data={
                "username": username,
                "password": password,
                "csrfmiddlewaretoken": session.cookies["csrftoken"],
            },
            timeout=10,
            allow_redirects=False,
        )
        assert answer.status_code == 302, answer.text[:500]
        session.headers["X-CSRFToken"] = session.cookies["csrftoken"]
        return session

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
