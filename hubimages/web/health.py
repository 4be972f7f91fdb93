"""`GET /healthz` for load balancers and monitoring: no login, no secrets, cheap."""

from datetime import datetime

from django.contrib.auth.decorators import login_not_required
from django.db import DatabaseError, connection
from django.db.models import Max, Min
from django.db.models.functions import Now
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from hubimages.models import RegistryEvent, SyncRun, WorkerHeartbeat


@login_not_required
@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """200 with the ages (seconds; null when never) of what shows that hubimages keeps up:
    the last successful sync, the oldest registry event still waiting, the last worker
    heartbeat. 503 when the database does not answer."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        now = timezone.now()
        last_sync = SyncRun.objects.filter(succeeded=True).aggregate(at=Max("finished_at"))["at"]
        oldest_event = RegistryEvent.objects.filter(state=RegistryEvent.State.RECEIVED).aggregate(
            at=Min("received_at")
        )["at"]
        # Heartbeats are on the database's clock: their age is measured there too.
        beat_age = WorkerHeartbeat.objects.aggregate(age=Now() - Max("beat_at"))["age"]
    except DatabaseError:
        return JsonResponse({"status": "unavailable", "database": "unreachable"}, status=503)
    return JsonResponse(
        {
            "status": "ok",
            "database": "ok",
            "last_successful_sync_age_seconds": _age(now, last_sync),
            "oldest_unapplied_event_age_seconds": _age(now, oldest_event),
            "last_worker_heartbeat_age_seconds": (
                None if beat_age is None else round(max(0.0, beat_age.total_seconds()), 1)
            ),
        }
    )


def _age(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else round(max(0.0, (now - then).total_seconds()), 1)
