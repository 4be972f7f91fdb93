"""A real OpenID Connect provider for the tests and the demo: django-oauth-toolkit's, in a
small Django project of its own (`settings`, `urls`, `validator`, `views`), run as its own
process (gunicorn) on a free loopback port, with its own SQLite file in a temporary
directory and an RSA key made for the run. The tests create its client, its people and
their groups through control endpoints, and flip switches that make it answer as GitLab
does (groups only in userinfo) or as a broken or hostile provider would (a wrong nonce or
issuer)::

    with OidcProvider() as provider:
        provider.client(["http://127.0.0.1:8000/accounts/oidc/oidc/login/callback/"])
        provider.user("alice", password="pw", groups=["platform"])
        provider.switch(groups_in="userinfo")

Run it in the foreground with `python -m devtools.oidc_provider --port 9000`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from devtools.server import free_port

ROOT = Path(__file__).resolve().parent.parent.parent
CLIENT_ID = "hubimages"


class OidcProvider:
    def __init__(self, *, port: int | None = None, state: Path | None = None) -> None:
        self.port = port or free_port()
        self._owns_state = state is None
        self.state = state or Path(tempfile.mkdtemp(prefix="oidc-provider-"))
        self.control_token = secrets.token_urlsafe(24)
        self.client_secret = secrets.token_urlsafe(24)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        return f"{self.url}/o"

    @property
    def log_path(self) -> Path:
        return self.state / "provider.log"

    def environment(self) -> dict[str, str]:
        venv_bin = str(Path(sys.executable).parent)
        keep = {key: os.environ[key] for key in ("HOME", "LANG", "TMPDIR") if key in os.environ}
        return {
            **keep,
            "PATH": f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "PYTHONPATH": str(ROOT),
            "DJANGO_SETTINGS_MODULE": "devtools.oidc_provider.settings",
            "OIDC_PROVIDER_STATE": str(self.state),
            "OIDC_PROVIDER_SECRET_KEY": secrets.token_urlsafe(40),
            "OIDC_PROVIDER_CONTROL_TOKEN": self.control_token,
        }

    def start(self) -> OidcProvider:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (self.state / "rsa.pem").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        env = self.environment()
        subprocess.run(
            [sys.executable, "-m", "django", "migrate", "--noinput", "-v", "0"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "devtools.oidc_provider.wsgi:application",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--workers",
                "1",
                "--threads",
                "4",
            ],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self._wait_until_up()
        return self

    def _wait_until_up(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"the provider exited:\n{self.log_tail()}")
            try:
                discovery = f"{self.issuer}/.well-known/openid-configuration"
                if requests.get(discovery, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the provider did not answer:\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self._owns_state:
            shutil.rmtree(self.state, ignore_errors=True)

    def __enter__(self) -> OidcProvider:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- control ---------------------------------------------------------------------------

    def _control(self, what: str, body: dict) -> dict:
        response = requests.post(
            f"{self.url}/control/{what}",
            json=body,
            headers={"Authorization": f"Bearer {self.control_token}"},
            timeout=10,
        )
        response.raise_for_status()
        return response.json()

    def client(self, redirect_uris: list[str]) -> None:
        """The client hubimages signs in as (`CLIENT_ID`, `client_secret`), allowed to
        come back to `redirect_uris`."""
        self._control(
            "client",
            {
                "client_id": CLIENT_ID,
                "client_secret": self.client_secret,
                "redirect_uris": redirect_uris,
            },
        )

    def user(
        self,
        username: str,
        *,
        password: str | None = None,
        groups: list[str] | None = None,
        email: str | None = None,
    ) -> None:
        """Create or change a person; `groups` replaces their groups."""
        body: dict = {"username": username}
        if password is not None:
            body["password"] = password
        if groups is not None:
            body["groups"] = groups
        if email is not None:
            body["email"] = email
        self._control("user", body)

    def switch(self, **values) -> dict:
        """Set the switches (`devtools.oidc_provider.switches`); the others go back to
        their defaults."""
        return self._control("switch", values)
