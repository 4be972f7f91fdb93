"""Pull and push times recorded from registry events before their manifest was stored.

Delivery is unordered and a sync may store a manifest before the events worker does, so
whoever stores a manifest first applies what the events already told us about it.
"""

from django.db.models import Max, Q

from hubimages.models import Manifest, PushedFrom, RegistryEvent, Repository

State = RegistryEvent.State
# hubimages's own requests: its pulls are never counted, and it pushes only to put a
# manifest back from the Trash, which restores the manifest's kept Last pushed.
OWN_USER_AGENT_PREFIX = "hubimages/"


def apply_earlier_pulls(repository: Repository, digests: list[str]) -> int:
    """Pulls recorded before their manifest was stored; returns how many rows changed."""
    if not digests:
        return 0
    count = 0
    waiting = RegistryEvent.objects.filter(
        registry_id=repository.registry_id,
        action="pull",
        repository=repository.name,
        digest__in=digests,
        state=State.WAITING,
    )
    for digest, latest in _latest(waiting):
        count += (
            Manifest.objects.filter(repository=repository, digest=digest)
            .filter(Q(last_pulled_at__isnull=True) | Q(last_pulled_at__lt=latest))
            .update(last_pulled_at=latest)
        )
    waiting.update(state=State.APPLIED, message="pull counted once the manifest was stored")
    return count


def apply_recorded_pushes(repository: Repository, digests: list[str]) -> int:
    """Push events the worker has not processed yet still carry the real push time
    (hubimages's own pushes, restores from the Trash, do not)."""
    if not digests:
        return 0
    count = 0
    pushes = RegistryEvent.objects.filter(
        registry_id=repository.registry_id,
        action="push",
        repository=repository.name,
        digest__in=digests,
    ).exclude(user_agent__startswith=OWN_USER_AGENT_PREFIX)
    for digest, latest in _latest(pushes):
        count += Manifest.objects.filter(
            repository=repository, digest=digest, pushed_at_estimated=True
        ).update(pushed_at=latest, pushed_at_estimated=False, pushed_at_source=PushedFrom.EVENT)
    return count


def _latest(events) -> list[tuple[str, object]]:
    rows = events.values("digest").annotate(latest=Max("occurred_at")).order_by()
    return [(row["digest"], row["latest"]) for row in rows]
