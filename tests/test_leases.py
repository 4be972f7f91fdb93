"""Leases (SPEC §7): one holder at a time on any number of hosts, taken over when the
holder stops renewing, on the database's clock, and fenced: a holder whose lease was taken
over sends no further DELETE, however deeply its callers nested their leases."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from devtools.pusher import random_layer
from hubimages.lib import leases
from hubimages.models import Deletion, DeletionRecord, Lease, RetentionRun
from hubimages.retention import engine, policies, runs
from hubimages.sync.service import sync_registry
from registry.client import RegistryClient

REPO = "team/fenced"


def expire(name: str) -> None:
    """As if the holder had stopped renewing `name` a while ago."""
    Lease.objects.filter(name=name).update(expires_at=timezone.now() - timedelta(seconds=5))


def test_a_lock_whose_holder_stopped_renewing_can_be_taken_over_and_the_old_holder_is_fenced(db):
    name = leases.repository_lease_name(REPO)
    crashed = leases.acquire(name, owner="sync")
    assert leases.acquire(name, owner="delete:bob") is None

    expire(name)
    with leases.repository_lock(REPO, owner="delete:bob") as lock:
        assert lock.generation > crashed.generation
        assert not crashed.renew()
        with pytest.raises(leases.LeaseLost):
            crashed.check()
        lock.check()
        with leases.repository_lock(REPO, owner="sync") as nested:  # re-entrant, as sync needs
            assert nested is lock
        assert Lease.objects.get(name=name).pk == lock.generation
        assert leases.repository_locked(REPO)
        leases.release(crashed)  # a late release by the old holder frees nothing
        assert leases.repository_locked(REPO)
    assert not Lease.objects.filter(name=name).exists()
    assert not leases.repository_locked(REPO)


def test_a_lease_that_ran_out_but_that_nobody_took_is_still_its_holders(db):
    held = leases.acquire("sync:all", owner="a full sync")
    expire("sync:all")

    held.check()  # nobody else held it meanwhile: pushed forward, not lost

    assert leases.acquire("sync:all", owner="another") is None


def test_expiries_are_on_the_databases_clock_not_the_hosts(db, monkeypatch):
    held = leases.acquire("sync:all", owner="host-a")
    # A host whose clock runs an hour ahead would think every lease had run out.
    ahead = timezone.now() + timedelta(hours=1)
    monkeypatch.setattr(timezone, "now", lambda: ahead)

    assert leases.acquire("sync:all", owner="host-b (clock ahead)") is None
    assert leases.holder("sync:all").owner == "host-a"
    held.check()


def test_a_nested_lease_is_the_holders_own(db):
    with (
        leases.repository_lock(REPO, owner="retention:x") as outer,
        leases.repository_lock(REPO, owner="delete:x") as inner,
    ):
        assert inner is outer
        expire(leases.repository_lease_name(REPO))
        assert leases.acquire(leases.repository_lease_name(REPO), owner="thief") is not None
        with pytest.raises(leases.LeaseLost):
            inner.check()


def test_a_retention_run_whose_repository_lease_is_taken_over_mid_run_sends_no_further_delete(
    pusher, fault_proxy, registry_url, transactional_db
):
    images = [
        pusher.push_image(REPO, tag=f"v{n}", layers=[random_layer(200, f"fenced-{n}")])
        for n in range(5)
    ]
    name = leases.repository_lease_name(REPO)
    stolen: list[leases.HeldLease] = []

    def thief() -> None:
        """Takes the repository over while the run's first DELETE is on its way, as a
        process would once the run's host stalled past its lease."""
        try:
            deadline = time.monotonic() + 60
            while not DeletionRecord.objects.filter(state="pending").exists():
                assert time.monotonic() < deadline, "no DELETE was ever sent"
                time.sleep(0.02)
            expire(name)
            stolen.append(leases.acquire(name, owner="thief"))
        finally:
            connection.close()

    with RegistryClient(fault_proxy.url) as client:
        assert sync_registry(client, workers=2).errors == []
        policy = policies.parse_policy(
            {"name": "fence", "rules": [{"keep": "always", "tags": ["release-*"]}]}
        )
        dry = engine.dry_run(policy, now=timezone.now())
        assert len(dry.repositories[0].selected) == 5
        fault_proxy.delay(r"/manifests/sha256:", seconds=1.0, method="DELETE")
        taking_over = threading.Thread(target=thief)
        taking_over.start()
        result = runs.run(
            policy=policy,
            now=dry.now,
            fingerprint=dry.fingerprint,
            client_for=lambda registry: client,
            trigger=RetentionRun.Trigger.MANUAL,
            started_by="tester",
        )
        taking_over.join()

    assert stolen and stolen[0] is not None
    deletes = [path for method, path in fault_proxy.requests if method == "DELETE"]
    assert len(deletes) == 1
    with RegistryClient(registry_url) as registry:
        still_there = {i.digest for i in images if registry.head_manifest(REPO, i.digest)}
    assert len(still_there) == 4
    record = result.record
    assert (record.outcome, record.manifests_deleted) == ("incomplete", 1)
    assert "lost the lease on repository:default/team/fenced" in record.message
    assert record.repositories[0]["deleted"] == 1
    operation = Deletion.objects.get()
    assert operation.state == "failed"
    assert set(operation.records.values_list("state", flat=True)) == {"done"}
    assert leases.holder(name).pk == stolen[0].generation  # the thief still holds it
