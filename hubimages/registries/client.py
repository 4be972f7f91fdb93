"""The one place that turns a registry's configuration into a client."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from hubimages.models import Registry
from hubimages.registries.config import RegistryConfig
from hubimages.registries.rows import configuration, default_name
from registry.client import RegistryClient


def registry_client(registry: Registry | RegistryConfig | str | None = None) -> RegistryClient:
    """A client for the registry (its row, its configuration or its name; the default one
    when None), with its credentials."""
    if isinstance(registry, RegistryConfig):
        config = registry
    else:
        name = registry.name if isinstance(registry, Registry) else (registry or default_name())
        config = configuration(name)
        if config is None or not config.url:
            if name == "default":
                raise ImproperlyConfigured(
                    "REGISTRY_URL is not set: point it at your registry, e.g. "
                    "https://registry.example.com (or declare registries in REGISTRIES_FILE)"
                )
            raise ImproperlyConfigured(f"registry {name} is not in the configuration")
    return RegistryClient(
        config.url,
        username=config.username or None,
        password=config.password or None,
        timeout=(5.0, float(settings.REGISTRY_TIMEOUT)),
        deadline=float(settings.REGISTRY_DEADLINE),
        pool_size=max(16, settings.SYNC_WORKERS * 2),
    )


class ClientsByRegistry:
    """A client for each registry a job touches, made when first asked for and closed
    together: `with ClientsByRegistry() as client_for: client_for(registry)`."""

    def __init__(self) -> None:
        self._clients: dict[str, RegistryClient] = {}

    def __call__(self, registry: Registry | str) -> RegistryClient:
        name = registry.name if isinstance(registry, Registry) else registry
        if name not in self._clients:
            self._clients[name] = registry_client(name)
        return self._clients[name]

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    def __enter__(self) -> ClientsByRegistry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
