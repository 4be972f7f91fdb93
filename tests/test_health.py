"""`GET /healthz` (SPEC §7): no login, no secrets; the ages that show hubimages keeps up,
and 503 when the database does not answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from django.test import Client
from django.utils import timezone

from hubimages.models import RegistryEvent, SyncRun, WorkerHeartbeat

ROOT = Path(__file__).resolve().parent.parent


def test_it_answers_without_login_with_the_ages_of_sync_events_and_workers(db, settings):
    settings.REGISTRY_PASSWORD = "hunter2-secret"
    now = timezone.now()
    SyncRun.objects.create(started_at=now, finished_at=now - timedelta(minutes=5), succeeded=True)
    SyncRun.objects.create(started_at=now, finished_at=now, succeeded=False)
    RegistryEvent.objects.create(
        event_id="e1", action="push", repository="a", occurred_at=now, state="received"
    )
    RegistryEvent.objects.filter(event_id="e1").update(received_at=now - timedelta(seconds=90))
    WorkerHeartbeat.objects.create(
        worker_id="w", host="h", pid=1, started_at=now, beat_at=now - timedelta(seconds=4)
    )

    response = Client().get("/healthz")

    assert response.status_code == 200
    assert "no-cache" in response["Cache-Control"]
    figures = response.json()
    assert figures["status"] == "ok" and figures["database"] == "ok"
    assert 299 <= figures["last_successful_sync_age_seconds"] <= 310
    assert 89 <= figures["oldest_unapplied_event_age_seconds"] <= 100
    assert 3 <= figures["last_worker_heartbeat_age_seconds"] <= 10
    assert "hunter2" not in response.content.decode()


def test_never_synced_and_no_worker_are_null_not_errors(db):
    figures = Client().get("/healthz").json()

    assert figures["last_successful_sync_age_seconds"] is None
    assert figures["oldest_unapplied_event_age_seconds"] is None
    assert figures["last_worker_heartbeat_age_seconds"] is None


def test_it_answers_503_when_the_database_is_unreachable():
    """A real process whose DATABASE_URL points at a port nobody listens on."""
    script = (
        "import django, json; django.setup(); from django.test import Client; "
        "r = Client().get('/healthz'); print(json.dumps([r.status_code, r.json()]))"
    )
    environment = {
        "PATH": os.environ["PATH"],
        "DJANGO_SETTINGS_MODULE": "hubimages.settings",
        "SECRET_KEY": "health-check-test",
        "DATABASE_URL": "postgres://nobody@127.0.0.1:9/none?connect_timeout=2",
        "ALLOWED_HOSTS": "testserver",
    }
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )

    status, body = json.loads(result.stdout.strip().splitlines()[-1])
    assert status == 503
    assert body == {"status": "unavailable", "database": "unreachable"}


def test_the_heartbeats_age_is_measured_on_the_databases_clock(db, monkeypatch):
    from hubimages.jobs import worker

    worker.beat("w", timezone.now())
    # The web host's clock runs an hour ahead of the worker's and the database's.
    ahead = timezone.now() + timedelta(hours=1)
    monkeypatch.setattr(timezone, "now", lambda: ahead)

    figures = Client().get("/healthz").json()

    assert 0 <= figures["last_worker_heartbeat_age_seconds"] < 10
