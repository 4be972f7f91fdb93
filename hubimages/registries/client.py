"""The one place that turns settings into a registry client."""

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from registry.client import RegistryClient


def registry_client() -> RegistryClient:
    if not settings.REGISTRY_URL:
        raise ImproperlyConfigured(
            "REGISTRY_URL is not set: point it at your registry, e.g. https://registry.example.com"
        )
    return RegistryClient(
        settings.REGISTRY_URL,
        username=settings.REGISTRY_USERNAME or None,
        password=settings.REGISTRY_PASSWORD or None,
        timeout=(5.0, float(settings.REGISTRY_TIMEOUT)),
        deadline=float(settings.REGISTRY_DEADLINE),
        pool_size=max(16, settings.SYNC_WORKERS * 2),
    )
