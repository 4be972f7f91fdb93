"""What a registry can do, each found by one cheap request (SPEC §11): whether its catalog
reads, whether it deletes, whether it has the OCI referrers API, whether it pages tag
lists. None where the answer cannot be had (no repository to ask about, an error).

A probe never changes the registry: the DELETE it sends names a digest no content has
(64 zeros), which a registry that deletes answers 404 and one that does not answers 405."""

from __future__ import annotations

from registry.client import RegistryClient
from registry.errors import AuthenticationError, RegistryError, UnsupportedOperation

NO_CONTENT = "sha256:" + "0" * 64


def capabilities(client: RegistryClient, repository: str | None) -> dict[str, bool | None]:
    """`catalog`, `delete`, `referrers`, `tag_paging`; `repository`, one the registry holds,
    is what the last three ask about."""
    return {
        "catalog": _catalog(client),
        "delete": _deletes(client, repository) if repository else None,
        "referrers": _referrers(client, repository) if repository else None,
        "tag_paging": _tag_paging(client, repository) if repository else None,
    }


def _catalog(client: RegistryClient) -> bool | None:
    try:
        next(iter(client.iter_repositories(page_size=1)), None)
    except (UnsupportedOperation, AuthenticationError):
        return False
    except RegistryError:
        return None
    return True


def _deletes(client: RegistryClient, repository: str) -> bool | None:
    try:
        client.delete_manifest(repository, NO_CONTENT)
    except UnsupportedOperation as error:
        return False if error.status == 405 else None
    except AuthenticationError:
        return False
    except RegistryError:
        return None
    return True


def _referrers(client: RegistryClient, repository: str) -> bool | None:
    try:
        return client.list_referrers(repository, NO_CONTENT) is not None
    except RegistryError:
        return None


def _tag_paging(client: RegistryClient, repository: str) -> bool | None:
    try:
        tags, more = client.first_tags_page(repository, 1)
    except RegistryError:
        return None
    if more:
        return True
    return False if len(tags) > 1 else None
