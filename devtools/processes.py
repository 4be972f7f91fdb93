"""hubimages's own processes as the Procfile runs them (web: gunicorn, worker: db_worker),
for the production-shape tests and the benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
PROCFILE = ROOT / "Procfile"


def procfile_command(name: str) -> str:
    """The Procfile's command for `name` (web, worker, release), as written there."""
    for line in PROCFILE.read_text().splitlines():
        entry, _, command = line.partition(":")
        if entry.strip() == name:
            return command.strip()
    raise KeyError(f"no {name!r} entry in {PROCFILE}")


def environment(**settings: str) -> dict[str, str]:
    """A process environment with this virtualenv first on PATH, as the demo sets it."""
    venv_bin = str(Path(sys.executable).parent)
    base = {key: os.environ[key] for key in ("HOME", "LANG", "TMPDIR") if key in os.environ}
    return {**base, "PATH": f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}", **settings}


class Process:
    """One Procfile entry running in its own process group, its output in `log`."""

    def __init__(self, name: str, env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        self._log_file = log.open("ab")
        self.popen = subprocess.Popen(
            ["bash", "-c", procfile_command(name)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def kill(self) -> None:
        """SIGKILL, as the worst crash would: nothing gets to clean up."""
        os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log_file.close()

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def database_url() -> str:
    """The database this process uses (the test database, in a test), as another process
    reaches it."""
    from urllib.parse import quote

    from django.db import connection

    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{Path(settings['NAME']).resolve()}"
    credentials = quote(settings["USER"]) + (
        f":{quote(settings['PASSWORD'])}" if settings["PASSWORD"] else ""
    )
    return f"postgres://{credentials}@{settings['HOST']}:{settings['PORT']}/{settings['NAME']}"


def manage(*arguments: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    """`python manage.py ARGUMENTS…` in a process of its own (its output in `log`), for
    tests that kill a command mid-way."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), *arguments],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_for_http(url: str, process: Process, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.popen.poll() is not None:
            raise RuntimeError(f"{process.name} exited:\n{process.tail()}")
        try:
            if requests.get(url, timeout=2).status_code < 500:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout}s:\n{process.tail()}")
        time.sleep(0.1)


def setup_django(database_url: str, **settings: str) -> None:
    """Configure Django in this process on `database_url` and migrate it (benchmarks)."""
    os.environ.update(
        {"DATABASE_URL": database_url, "DJANGO_SETTINGS_MODULE": "hubimages.settings", **settings}
    )
    os.environ.setdefault("SECRET_KEY", "benchmark-only-secret-key-" + "x" * 30)
    import django
    from django.core.management import call_command

    django.setup()
    from django.conf import settings as django_settings

    # Pages render from the source static files: no collectstatic in a benchmark.
    django_settings.STORAGES = {
        **django_settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    call_command("migrate", verbosity=0)
