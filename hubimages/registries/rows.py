"""Each configured registry's row, made or brought up to date from the configuration the
first time a process asks, and the registry a command or a page means when it names none.

The configuration is read once per process (at start), so checking the rows once per
process is enough; a registry taken out of the configuration keeps its row and its data,
marked not configured, and is no longer synced."""

from __future__ import annotations

import threading

from django.conf import settings
from django.db import IntegrityError, transaction

from hubimages.models import Registry
from hubimages.registries.config import DEFAULT, RegistryConfig, from_environment

_checked = threading.Event()


class UnknownRegistry(LookupError):
    """No registry of that name: the message says which there are."""


def configured() -> list[RegistryConfig]:
    """The registries the configuration declares, in its order."""
    return from_environment(settings)


def configuration(name: str) -> RegistryConfig | None:
    return next((config for config in configured() if config.name == name), None)


def ensure_rows(*, force: bool = False) -> None:
    """Make the configured registries' rows true to the configuration (name, URL,
    description), and mark the others not configured. Once per process unless `force`."""
    if _checked.is_set() and not force:
        return
    declared = configured()
    names = [config.name for config in declared]
    for config in declared:
        values = {"url": config.url, "description": config.description, "configured": True}
        updated = Registry.objects.filter(name=config.name).update(**values)
        if not updated:
            try:
                with transaction.atomic():
                    Registry.objects.create(name=config.name, **values)
            except IntegrityError:  # another process created it meanwhile
                Registry.objects.filter(name=config.name).update(**values)
    Registry.objects.exclude(name__in=names).filter(configured=True).update(configured=False)
    _checked.set()


def forget_checked() -> None:
    """For tests that change the configuration within one process."""
    _checked.clear()


def default_name() -> str:
    """The registry meant when none is named: `default`, or else the only one."""
    ensure_rows()
    names = list(Registry.objects.filter(configured=True).values_list("name", flat=True))
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
    """The registry of that name (or the default one); raises UnknownRegistry."""
    ensure_rows()
    name = name or default_name()
    registry = Registry.objects.filter(name=name).first()
    if registry is None:
        known = ", ".join(Registry.objects.values_list("name", flat=True)) or "none"
        raise UnknownRegistry(f"no registry named {name} (known: {known})")
    return registry
