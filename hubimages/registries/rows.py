"""Each configured registry's row, made or brought up to date from the configuration the
first time a process asks, and the registry a command or a page means when it names none.

A registry taken out of the configuration keeps its row and its data, marked not
configured, and is no longer synced."""

from __future__ import annotations

from django.conf import settings
from django.db import IntegrityError, transaction

from hubimages.models import Registry
from hubimages.registries.config import DEFAULT, RegistryConfig, from_environment


class UnknownRegistry(LookupError):
    """No registry of that name: the message says which there are."""


def configured() -> list[RegistryConfig]:
    """The registries the configuration declares, in its order."""
    return from_environment(settings)


def configuration(name: str) -> RegistryConfig | None:
    return next((config for config in configured() if config.name == name), None)


def ensure_rows() -> None:
    """Make the rows true to the configuration (name, URL, description), and mark the
    registries it no longer declares not configured. One small query when nothing
    changed, so every command, request and worker round may call it."""
    declared = {config.name: config for config in configured()}
    current = {row.name: row for row in Registry.objects.all()}
    for name, config in declared.items():
        values = {"url": config.url, "description": config.description, "configured": True}
        row = current.get(name)
        if row is None:
            try:
                with transaction.atomic():
                    Registry.objects.create(name=name, **values)
            except IntegrityError:  # another process created it meanwhile
                Registry.objects.filter(name=name).update(**values)
        elif (row.url, row.description, row.configured) != tuple(values.values()):
            Registry.objects.filter(pk=row.pk).update(**values)
    gone = [name for name, row in current.items() if name not in declared and row.configured]
    if gone:
        Registry.objects.filter(name__in=gone).update(configured=False)


def default_name() -> str:
    """The registry meant when none is named: `default`, or else the only one configured."""
    names = [config.name for config in configured()]
    if DEFAULT in names or not names:
        return DEFAULT
    if len(names) == 1:
        return names[0]
    raise UnknownRegistry(
        f"name a registry: there are {len(names)} ({', '.join(names)}) and none is `default`"
    )


def known() -> list[Registry]:
    """Every registry with a row, configured ones first, then by name."""
    ensure_rows()
    return list(Registry.objects.order_by("-configured", "name"))


def get(name: str | None = None) -> Registry:
    """The registry of that name (or the default one); raises UnknownRegistry. With no
    registry configured at all, `default` is made (a single registry's scripts and tests)."""
    ensure_rows()
    name = name or default_name()
    if name == DEFAULT and not configured():
        return Registry.objects.get_or_create(name=DEFAULT)[0]
    registry = Registry.objects.filter(name=name).first()
    if registry is None:
        known = ", ".join(Registry.objects.values_list("name", flat=True)) or "none"
        raise UnknownRegistry(f"no registry named {name} (known: {known})")
    return registry
