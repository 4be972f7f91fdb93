"""A sync's memory does not grow with the repository (SPEC §5, issue 14): what it reads
past a budget waits on disk, the write goes a chunk at a time, and the repository still
commits as one transaction."""

from __future__ import annotations

import pytest
from django.db import DatabaseError

from devtools.pusher import random_layer
from hubimages.models import IndexEntry, Manifest, Tag
from hubimages.sync import store
from registry import spool

pytestmark = pytest.mark.django_db

REPO = "ci/app"
MESSAGE = "the database went away mid-write"


def state() -> tuple:
    return (
        sorted(Manifest.objects.filter(repository__name=REPO).values_list("digest", "kind")),
        sorted(Tag.objects.filter(repository__name=REPO).values_list("name", "manifest__digest")),
        IndexEntry.objects.filter(index__repository__name=REPO).count(),
    )


def push_builds(pusher, names: range) -> None:
    for n in names:
        images = [
            pusher.push_image(REPO, layers=[random_layer(64, f"{n}-{arch}")], architecture=arch)
            for arch in ("amd64", "arm64")
        ]
        pusher.push_index(REPO, tag=f"build-{n}", images=images, attestations=True)


@pytest.fixture
def spy_writes(monkeypatch):
    """The snapshots `write_snapshot` was given, with how many of their manifests were on disk."""
    seen: list[tuple[int, int]] = []
    original = store.write_snapshot

    def write(registry, snapshot, known):
        seen.append((len(snapshot.fetched), snapshot.fetched.spilled))
        return original(registry, snapshot, known)

    monkeypatch.setattr(store, "write_snapshot", write)
    return seen


def test_a_repository_past_the_memory_budget_waits_on_disk_and_is_written_in_chunks(
    pusher, sync, monkeypatch, spy_writes
):
    push_builds(pusher, range(3))
    sync()
    expected = state()
    Manifest.objects.all().delete()
    Tag.objects.all().delete()

    monkeypatch.setattr(spool, "DEFAULT_MEMORY_BYTES", 0)  # nothing stays in memory
    monkeypatch.setattr(store, "CHUNK", 4)
    sync()

    assert spy_writes[-1] == (15, 15)  # 3 indexes, 6 images, 6 attestations, all on disk
    assert state() == expected  # kinds, tags and index entries as a sync in memory writes


def test_a_failure_in_a_later_chunk_leaves_the_repository_as_it_was(pusher, sync, monkeypatch):
    push_builds(pusher, range(1))
    sync()
    before = state()
    push_builds(pusher, range(1, 4))
    monkeypatch.setattr(store, "CHUNK", 2)
    calls = []
    insert = store._insert_blob_links

    def fail_on_the_third_chunk(*args):
        calls.append(1)
        if len(calls) == 3:
            raise DatabaseError(MESSAGE)
        return insert(*args)

    monkeypatch.setattr(store, "_insert_blob_links", fail_on_the_third_chunk)

    summary = sync(expect_errors=True)

    assert len(calls) == 3  # two chunks were written before the failure...
    assert summary.errors == [f"{REPO}: internal error: {DatabaseError(MESSAGE)!r}"]
    assert state() == before  # ...and rolled back with the rest
