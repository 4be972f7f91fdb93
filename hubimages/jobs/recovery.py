"""Settling what a process left half-done when it stopped (SIGKILL, a lost host, a
database that went away): the deletions and retention runs it recorded as running.

Each such record is held by a lease while its process works on it (a deletion by its
repository's, a retention run by its own), so "running, and its lease is free" means
"interrupted", whichever process or host ran it: a worker, `delete_images` or
`apply_retention` on someone's terminal. Settling asks the registry what went, holding
that lease (which fences out a holder that was only stalled), and writes it down. The
workers call `settle_interrupted` every few seconds (`jobs.worker.recover`)."""

from __future__ import annotations

import logging

from hubimages.deletion import execution
from hubimages.models import Deletion, RetentionRun
from hubimages.registries.client import registry_client
from hubimages.retention import runs
from registry.errors import RegistryError

log = logging.getLogger("hubimages.jobs")


def settle_interrupted() -> list[int]:
    """Settle every interrupted deletion and retention run that can be settled now; the
    others (their leases still held, the registry not answering) wait for the next call.
    Returns the ids of the retention runs settled."""
    deletions = list(Deletion.objects.filter(state=Deletion.State.RUNNING))
    retention_runs = list(RetentionRun.objects.filter(outcome=RetentionRun.Outcome.RUNNING))
    if not deletions and not retention_runs:
        return []
    try:
        with registry_client() as client:
            execution.settle_interrupted(client, deletions)
            return runs.settle_interrupted(client, retention_runs)
    except RegistryError as error:  # e.g. no registry configured: try again later
        log.warning("could not settle interrupted deletions yet: %s", error)
        return []
