"""A local CNCF distribution registry process, for tests, the demo and benchmarks.

Debian's ``docker-registry`` package (distribution 2.8) provides the binary. Each
``LocalRegistry`` owns one directory: ``config.yml``, ``registry.log``, an optional
``htpasswd`` file and the blob storage under ``storage/``.

Run it in the foreground with ``python -m devtools.server --root DIR --port 5050``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import requests

if TYPE_CHECKING:
    from devtools.tokenserver import TokenServer

DEFAULT_BINARY = "/usr/bin/docker-registry"
START_TIMEOUT = 15.0


class RegistryProcessError(RuntimeError):
    """The registry binary failed to start, died, or a garbage-collect run failed."""


def free_port() -> int:
    """A loopback port that was free a moment ago (the registry binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalRegistry:
    def __init__(
        self,
        root: Path | str,
        *,
        port: int | None = None,
        htpasswd: tuple[str, str] | None = None,
        notify_url: str | None = None,
        notify_token: str | None = None,
        delete_enabled: bool = True,
        token_auth: TokenServer | None = None,
        token_realm: str | None = None,
        binary: str = DEFAULT_BINARY,
    ) -> None:
        """`token_auth` makes the registry refuse requests without a token from that
        server (`auth: token`); `token_realm` announces another address for it."""
        self.root = Path(root).resolve()
        self.port = port if port is not None else free_port()
        self.htpasswd = htpasswd
        self.notify_url = notify_url
        self.notify_token = notify_token
        self.delete_enabled = delete_enabled
        self.token_auth = token_auth
        self.token_realm = token_realm
        self.binary = binary
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def storage_dir(self) -> Path:
        return self.root / "storage"

    @property
    def config_path(self) -> Path:
        return self.root / "config.yml"

    @property
    def log_path(self) -> Path:
        return self.root / "registry.log"

    @property
    def htpasswd_path(self) -> Path:
        return self.root / "htpasswd"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.running:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self.storage_dir.mkdir(exist_ok=True)
        if self.htpasswd and not self.htpasswd_path.exists():
            self.htpasswd_path.write_text(_htpasswd_line(*self.htpasswd))
        self.config_path.write_text(json.dumps(self.config(), indent=2) + "\n")
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [self.binary, "serve", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_until_up()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def garbage_collect(self, *, dry_run: bool = False, delete_untagged: bool = False) -> str:
        """Run ``garbage-collect``; the registry must not serve writes meanwhile, so it
        is stopped first and started again afterwards if it was running."""
        if not (self.storage_dir / "docker" / "registry" / "v2" / "repositories").is_dir():
            return "nothing pushed yet: no repositories to collect\n"
        was_running = self.running
        self.stop()
        command = [self.binary, "garbage-collect"]
        if dry_run:
            command.append("--dry-run")
        if delete_untagged:
            command.append("--delete-untagged")
        command.append(str(self.config_path))
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        finally:
            if was_running:
                self.start()
        output = result.stdout + result.stderr
        if result.returncode != 0:
            raise RegistryProcessError(f"garbage-collect failed ({result.returncode}):\n{output}")
        return output

    def blob_bytes_on_disk(self) -> int:
        blobs = self.storage_dir / "docker" / "registry" / "v2" / "blobs"
        return sum(path.stat().st_size for path in blobs.rglob("data") if path.is_file())

    def config(self) -> dict[str, Any]:
        """The whole configuration; written as JSON, which YAML parsers accept.

        Environment overrides (``REGISTRY_*``) would replace whole sections, so the
        file is always complete instead.
        """
        config: dict[str, Any] = {
            "version": "0.1",
            "log": {"level": "warn", "formatter": "text", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage_dir)},
                "delete": {"enabled": self.delete_enabled},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {
                "addr": f"127.0.0.1:{self.port}",
                "secret": self._http_secret(),
                "headers": {"X-Content-Type-Options": ["nosniff"]},
            },
            "health": {"storagedriver": {"enabled": False}},
        }
        if self.htpasswd:
            config["auth"] = {
                "htpasswd": {"realm": "hubimages-local", "path": str(self.htpasswd_path)}
            }
        if self.token_auth:
            config["auth"] = self.token_auth.registry_auth(
                self.root / "token-ca.pem", realm=self.token_realm
            )
        if self.notify_url:
            endpoint: dict[str, Any] = {
                "name": "hubimages",
                "url": self.notify_url,
                "timeout": "2s",
                "threshold": 3,
                "backoff": "1s",
                "ignoredmediatypes": ["application/octet-stream"],
                "ignore": {"mediatypes": [], "actions": []},
            }
            if self.notify_token:
                endpoint["headers"] = {"Authorization": [f"Bearer {self.notify_token}"]}
            config["notifications"] = {
                "events": {"includereferences": True},
                "endpoints": [endpoint],
            }
        return config

    def _http_secret(self) -> str:
        """Kept across restarts so upload state signed before a restart stays valid."""
        path = self.root / "http-secret"
        if not path.exists():
            path.write_text(secrets.token_hex(16))
        return path.read_text().strip()

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        expected = {200, 401} if self.htpasswd or self.token_auth else {200}
        while True:
            process = self._process
            if process is None or process.poll() is not None:
                self._process = None
                raise RegistryProcessError(f"registry exited on start:\n{self._log_tail()}")
            try:
                response = requests.get(f"{self.url}/v2/", timeout=1)
                if response.status_code in expected:
                    return
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RegistryProcessError(f"registry did not answer:\n{self._log_tail()}")
            time.sleep(0.03)

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def __enter__(self) -> LocalRegistry:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _htpasswd_line(user: str, password: str) -> str:
    """One bcrypt line; distribution's htpasswd auth accepts bcrypt only."""
    binary = shutil.which("htpasswd")
    if binary:
        result = subprocess.run(
            [binary, "-Bbn", user, password], capture_output=True, text=True, check=True
        )
        return result.stdout.strip() + "\n"
    try:
        import bcrypt
    except ImportError as error:
        raise RegistryProcessError(
            "htpasswd auth needs the htpasswd binary (apt package apache2-utils) "
            "or the bcrypt Python package"
        ) from error
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()
    return f"{user}:{hashed}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a local registry in the foreground.")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--port", type=int)
    parser.add_argument("--notify-url")
    parser.add_argument("--notify-token")
    parser.add_argument("--htpasswd", metavar="USER:PASSWORD")
    parser.add_argument("--binary", default=DEFAULT_BINARY)
    args = parser.parse_args(argv)
    credentials = tuple(args.htpasswd.split(":", 1)) if args.htpasswd else None
    registry = LocalRegistry(
        args.root,
        port=args.port,
        htpasswd=credentials,  # type: ignore[arg-type]
        notify_url=args.notify_url,
        notify_token=args.notify_token,
        binary=args.binary,
    )
    collect_requested = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # SIGUSR1: stop, garbage-collect, restart (see scripts/demo-gc).
    signal.signal(signal.SIGUSR1, lambda *_: collect_requested.set())
    registry.start()
    pid_file = registry.root / "server.pid"
    pid_file.write_text(f"{os.getpid()}\n")
    print(f"registry at {registry.url} (storage {registry.storage_dir})", flush=True)
    try:
        while True:
            assert registry._process is not None
            try:
                code = registry._process.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                code = None
            if collect_requested.is_set():
                collect_requested.clear()
                _collect_garbage(registry)
            elif code is not None:
                print(f"registry exited ({code}):\n{registry._log_tail()}", file=sys.stderr)
                return code or 1
    except KeyboardInterrupt:
        return 0
    finally:
        pid_file.unlink(missing_ok=True)
        registry.stop()


def _collect_garbage(registry: LocalRegistry) -> None:
    before = registry.blob_bytes_on_disk()
    output = registry.garbage_collect()
    freed = before - registry.blob_bytes_on_disk()
    print(output, flush=True)
    (registry.root / "gc-result").write_text(f"{freed}\n")


if __name__ == "__main__":
    sys.exit(main())
