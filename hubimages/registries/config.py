"""Which registries hubimages serves (SPEC §11), as the deployment declares them.

Either `REGISTRIES_FILE`, a JSON list of registries (configuration as code), or, as before,
`REGISTRY_URL` alone, which means one registry named `default`. Secrets never sit in the
file or the database in clear text: the file names an environment variable
(`password_env`, `events_token_env`) or a file (`password_file`, `events_token_file`, as
Kubernetes mounts secrets), read when the file is read, at start.

Everything here is checked strictly: a junk value stops start-up with a message naming the
file, the registry and the key, as the settings' own helpers do.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

DEFAULT = "default"
NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")
KEYS = (
    "name",
    "url",
    "description",
    "username",
    "password_env",
    "password_file",
    "events_token_env",
    "events_token_file",
    "sync_interval_minutes",
    "repositories",
)
MAX_FILE_BYTES = 1_000_000
MAX_SECRET_BYTES = 64_000


@dataclass(frozen=True)
class RegistryConfig:
    """One registry as configured: where it is, how to sign in, what it sends with its
    notifications. The secrets are kept out of `repr` so they never reach a log."""

    name: str
    url: str
    description: str = ""
    username: str = ""
    password: str = field(default="", repr=False)
    events_token: str = field(default="", repr=False)
    # None: the global SYNC_INTERVAL_MINUTES; 0: no periodic sync.
    sync_interval_minutes: int | None = None
    # For registries whose catalog is closed to us (GHCR, Docker Hub): what to sync instead.
    repositories: tuple[str, ...] = ()

    @property
    def host(self) -> str:
        """`host[:port]`, as image references name the registry."""
        return urlsplit(self.url).netloc.rsplit("@", 1)[-1]


def check_url(url: Any, where: str) -> str:
    """An http(s) URL with a host and no credentials in it, without a trailing slash."""
    if not isinstance(url, str) or not url.strip():
        raise ImproperlyConfigured(
            f"{where} must be an http(s) URL such as https://registry.example.com"
        )
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ImproperlyConfigured(
            f"{where} must be an http(s) URL such as https://registry.example.com"
        )
    if parts.username or parts.password:
        raise ImproperlyConfigured(
            f"{where} must not hold credentials: give a username and a password_env or "
            "password_file"
        )
    return url.strip().rstrip("/")


def read_registries_file(path: str) -> list[RegistryConfig]:
    """The registries `path` declares, with their secrets read; raises ImproperlyConfigured
    with what is wrong and where."""
    try:
        raw = Path(path).read_bytes()[: MAX_FILE_BYTES + 1]
    except OSError as error:
        raise ImproperlyConfigured(
            f"REGISTRIES_FILE {path} cannot be read: {error.strerror}"
        ) from None
    if len(raw) > MAX_FILE_BYTES:
        raise ImproperlyConfigured(f"REGISTRIES_FILE {path} is larger than 1 MB")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise ImproperlyConfigured(f"REGISTRIES_FILE {path} is not JSON: {error}") from None
    if not isinstance(data, list) or not data:
        raise ImproperlyConfigured(
            f"REGISTRIES_FILE {path} must hold a non-empty JSON list of registries"
        )
    registries = [
        _entry(item, f"REGISTRIES_FILE {path}, entry {i + 1}") for i, item in enumerate(data)
    ]
    names = [registry.name for registry in registries]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ImproperlyConfigured(
            f"REGISTRIES_FILE {path} names {', '.join(duplicates)} more than once"
        )
    return registries


def _entry(item: Any, where: str) -> RegistryConfig:
    if not isinstance(item, dict):
        raise ImproperlyConfigured(f"{where} must be a JSON object")
    unknown = sorted(set(item) - set(KEYS))
    if "password" in unknown or "events_token" in unknown:
        raise ImproperlyConfigured(
            f"{where}: secrets are never written in the file: use password_env or "
            "password_file, events_token_env or events_token_file"
        )
    if unknown:
        raise ImproperlyConfigured(
            f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
            f"(known: {', '.join(KEYS)})"
        )
    name = item.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ImproperlyConfigured(
            f"{where}: name must be a slug of lowercase letters, digits and dashes "
            "(up to 40), such as prod or ghcr"
        )
    where = f"{where} ({name})"
    interval = item.get("sync_interval_minutes")
    if interval is not None and (
        isinstance(interval, bool) or not isinstance(interval, int) or interval < 0
    ):
        raise ImproperlyConfigured(f"{where}: sync_interval_minutes must be a whole number ≥ 0")
    repositories = item.get("repositories", [])
    if not isinstance(repositories, list) or not all(
        isinstance(r, str) and r.strip() for r in repositories
    ):
        raise ImproperlyConfigured(f"{where}: repositories must be a list of repository names")
    for key in ("description", "username"):
        if not isinstance(item.get(key, ""), str):
            raise ImproperlyConfigured(f"{where}: {key} must be a string")
    return RegistryConfig(
        name=name,
        url=check_url(item.get("url"), f"{where}: url"),
        description=item.get("description", "").strip(),
        username=item.get("username", "").strip(),
        password=_secret(item, "password", where),
        events_token=_secret(item, "events_token", where),
        sync_interval_minutes=interval,
        repositories=tuple(r.strip() for r in repositories),
    )


def _secret(item: dict, kind: str, where: str) -> str:
    """The secret named by `<kind>_env` or `<kind>_file` (one of them at most)."""
    env, file = item.get(f"{kind}_env"), item.get(f"{kind}_file")
    if env is not None and file is not None:
        raise ImproperlyConfigured(f"{where}: give {kind}_env or {kind}_file, not both")
    if env is not None:
        if not isinstance(env, str) or not env:
            raise ImproperlyConfigured(f"{where}: {kind}_env must name an environment variable")
        value = os.environ.get(env)
        if value is None:
            raise ImproperlyConfigured(f"{where}: the environment variable {env} is not set")
        return value.strip()
    if file is not None:
        if not isinstance(file, str) or not file:
            raise ImproperlyConfigured(f"{where}: {kind}_file must be a path")
        try:
            return Path(file).read_bytes()[:MAX_SECRET_BYTES].decode().strip()
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or "not UTF-8 text"
            raise ImproperlyConfigured(
                f"{where}: {kind}_file {file} cannot be read: {reason}"
            ) from None
    return ""


def from_environment(settings: Any) -> list[RegistryConfig]:
    """The registries the settings declare: `REGISTRIES` (read from `REGISTRIES_FILE` at
    start), or the one registry `default` of `REGISTRY_URL` and its companions (its events
    token alone declares it too: notifications are recorded, and what needs the registry
    waits for its URL), or none."""
    if settings.REGISTRIES is not None:
        return list(settings.REGISTRIES)
    if not settings.REGISTRY_URL and not settings.REGISTRY_EVENTS_TOKEN:
        return []
    return [
        RegistryConfig(
            name=DEFAULT,
            url=settings.REGISTRY_URL,
            username=settings.REGISTRY_USERNAME,
            password=settings.REGISTRY_PASSWORD,
            events_token=settings.REGISTRY_EVENTS_TOKEN,
            repositories=tuple(settings.REGISTRY_REPOSITORIES),
        )
    ]
