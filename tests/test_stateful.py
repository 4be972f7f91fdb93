"""The guarantees, not just the cases (issue 18): a Hypothesis state machine drives the real
registry, through the fault proxy, with what happens to a registry in real life — pushes,
tag moves, deletes by other clients, syncs (some answered with a 404 or a HEAD without its
digest header), notifications (delivered, dropped, duplicated, out of order), previews and
fingerprinted deletions, retention runs — and checks after every step what hubimages
promises:

- nothing is deleted that the executed plan did not show;
- no index is stored (or left in the registry by hubimages) with a missing child;
- a manifest leaves the database only when the registry no longer has it (a known untagged
  manifest never vanishes on one odd answer);
- every deletion record is settled, and no job is left running;
- after two clean syncs, the database equals the registry.

The suite runs a few examples (`STATEFUL_EXAMPLES`, default 4, of up to 12 steps);
`HUBIMAGES_STATEFUL_EXAMPLES=200 bash scripts/test -k stateful` runs it long.
"""

from __future__ import annotations

import os
import uuid
from datetime import timedelta

import hypothesis.strategies as st
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from devtools.faultproxy import FaultProxy
from devtools.pusher import ImagePusher, PushedManifest, random_layer
from devtools.server import LocalRegistry
from hubimages.deletion import execution, planning
from hubimages.models import Deletion, DeletionRecord, IndexEntry, Job, Manifest, Repository, Tag
from hubimages.retention import engine, policies, runs
from hubimages.sync import events
from hubimages.sync.service import sync_registry
from registry.client import RegistryClient
from registry.notifications import Event

EXAMPLES = int(os.environ.get("HUBIMAGES_STATEFUL_EXAMPLES", "4"))
TAGS = ("v1", "v2", "v3", "latest")


class Registry(RuleBasedStateMachine):
    """One repository per example (a fresh name), the registry and the database shared."""

    def __init__(self, server: LocalRegistry, proxy: FaultProxy) -> None:
        super().__init__()
        self.server = server
        self.proxy = proxy
        self.repo = f"stateful/r{uuid.uuid4().hex[:8]}"
        self.pusher = ImagePusher(server.url)
        self.direct = RegistryClient(server.url)
        self.hub = RegistryClient(proxy.url, max_retries=0, deadline=20.0)
        self.images: list[PushedManifest] = []
        self.indexes: list[PushedManifest] = []
        self.undelivered: list[Event] = []
        self.delivered: list[Event] = []
        self.stored: set[str] = set()  # what the database held after the last step

    # -- helpers ----------------------------------------------------------------------

    def registry_has(self, digest: str) -> bool:
        return self.direct.head_manifest(self.repo, digest) is not None

    def repository(self) -> Repository | None:
        return Repository.objects.filter(name=self.repo).first()

    def db_digests(self) -> set[str]:
        return set(
            Manifest.objects.filter(repository__name=self.repo).values_list("digest", flat=True)
        )

    def event(self, action: str, manifest: PushedManifest, tag: str = "") -> Event:
        return Event(
            id=str(uuid.uuid4()),
            action=action,
            occurred_at=timezone.now(),
            repository=self.repo,
            digest=manifest.digest,
            tag=tag,
            media_type=manifest.media_type,
            method="PUT" if action == "push" else "GET",
            user_agent="docker/27.3.1",
        )

    def sync(self, fault: str = "") -> None:
        self.proxy.clear()
        if fault == "404":
            self.proxy.not_found(rf"^/v2/{self.repo}/manifests/", method=None, times=1)
        elif fault == "404-digest":  # the HEAD of a known manifest, untagged ones included
            self.proxy.not_found(rf"^/v2/{self.repo}/manifests/sha256:", method="HEAD", times=1)
        elif fault == "no-digest":
            self.proxy.no_digest_header(rf"^/v2/{self.repo}/manifests/")
        try:
            sync_registry(self.hub, repositories=[self.repo], workers=2)
        finally:
            self.proxy.clear()

    # -- what happens to a registry ---------------------------------------------------

    @initialize()
    def first_push(self) -> None:
        self.push(seed=0, tag="v1")

    @rule(seed=st.integers(0, 10_000), tag=st.one_of(st.none(), st.sampled_from(TAGS)))
    def push(self, seed: int, tag: str | None) -> None:
        image = self.pusher.push_image(
            self.repo, tag=tag, layers=[random_layer(300 + seed % 97, f"{self.repo}-{seed}")]
        )
        self.images.append(image)
        self.undelivered.append(self.event("push", image, tag or ""))

    @precondition(lambda self: len(self.images) >= 2)
    @rule(tag=st.sampled_from(TAGS), data=st.data())
    def push_index(self, tag: str, data) -> None:
        children = data.draw(
            st.lists(st.sampled_from(self.images), min_size=1, max_size=2, unique_by=id)
        )
        if not all(self.registry_has(child.digest) for child in children):
            return
        platforms = [("linux", f"arch{i}", "") for i in range(len(children))]
        index = self.pusher.push_index(self.repo, tag=tag, images=children, platforms=platforms)
        self.indexes.append(index)
        self.undelivered.append(self.event("push", index, tag))

    @precondition(lambda self: self.images)
    @rule(tag=st.sampled_from(TAGS), data=st.data())
    def move_tag(self, tag: str, data) -> None:
        image = data.draw(st.sampled_from(self.images))
        if not self.registry_has(image.digest):
            return  # deleted: the registry no longer holds its blobs' links either
        self.pusher.tag(self.repo, tag, image)
        self.undelivered.append(self.event("push", image, tag))

    @precondition(lambda self: self.indexes)
    @rule(data=st.data())
    def another_client_deletes_an_index(self, data) -> None:
        """Other clients delete whole indexes (which leaves their children), never a child
        an index still lists: that would be their dangling index, not ours."""
        index = data.draw(st.sampled_from(self.indexes))
        self.pusher.delete_manifest(self.repo, index.digest, missing_ok=True)

    @rule(fault=st.sampled_from(("", "404-digest", "404", "no-digest")))
    def sync_now(self, fault: str) -> None:
        self.sync(fault)

    @precondition(lambda self: self.undelivered)
    @rule(how=st.sampled_from(("deliver", "deliver", "drop", "duplicate", "reverse")))
    def notify(self, how: str) -> None:
        batch, self.undelivered = self.undelivered, []
        if how == "drop":
            return
        if how == "reverse":
            batch.reverse()
        if how == "duplicate":
            batch = batch + batch
        events.record(batch)
        events.process_received(self.hub)

    @precondition(lambda self: self.repository() is not None)
    @rule(data=st.data())
    def preview_and_delete(self, data) -> None:
        repository = self.repository()
        top = list(
            Manifest.objects.filter(repository=repository, is_top_level=True).values_list(
                "digest", flat=True
            )
        )
        if not top:
            return
        chosen = data.draw(st.lists(st.sampled_from(sorted(top)), min_size=1, max_size=2))
        plan = planning.plan_deletion(repository=repository, digests=chosen)
        if plan.refused or not plan.delete:
            return
        present = {d for d in self.db_digests() if self.registry_has(d)}
        execution.execute_deletion(
            repository=repository,
            digests=chosen,
            fingerprint=plan.fingerprint,
            user=None,
            client=self.hub,
        )
        vanished = {d for d in present if not self.registry_has(d)}
        planned = {item.digest for item in plan.delete}
        assert vanished <= planned, f"deleted outside the plan: {vanished - planned}"

    @precondition(lambda self: self.repository() is not None)
    @rule(count=st.integers(1, 2))
    def retention_run(self, count: int) -> None:
        policy = policies.parse_policy(
            {
                "name": "stateful",
                "repositories": [self.repo],
                "rules": [{"keep": "latest_pushed", "count": count, "untagged": True}],
                "max_delete_fraction": 1,
            }
        )
        preview = engine.dry_run(policy)
        planned = {i.digest for r in preview.repositories for i in r.plan.delete}
        present = {d for d in self.db_digests() if self.registry_has(d)}
        runs.run(
            policy=policy,
            now=preview.now,
            fingerprint=preview.fingerprint,
            client_for=lambda registry: self.hub,
            trigger="manual",
            started_by="stateful",
        )
        vanished = {d for d in present if not self.registry_has(d)}
        assert vanished <= planned, f"retention deleted outside its plan: {vanished - planned}"

    # -- what always holds ------------------------------------------------------------

    @invariant()
    def nothing_leaves_the_database_while_the_registry_has_it(self) -> None:
        now = self.db_digests()
        left = {d for d in self.stored - now if self.registry_has(d)}
        assert not left, f"gone from the database while the registry has them: {left}"
        self.stored = now

    @invariant()
    def every_stored_index_has_every_child(self) -> None:
        for index in Manifest.objects.filter(repository__name=self.repo, kind=Manifest.Kind.INDEX):
            if not self.registry_has(index.digest):
                continue
            fetched = self.direct.get_manifest(self.repo, index.digest)
            listed = {child.digest for child in fetched.parsed.manifests}
            stored = set(
                IndexEntry.objects.filter(index=index).values_list("child__digest", flat=True)
            )
            assert stored == listed, f"index {index.digest} stored with {stored}, lists {listed}"

    @invariant()
    def every_deletion_is_settled_and_no_job_runs(self) -> None:
        assert not Deletion.objects.filter(state=Deletion.State.RUNNING).exists()
        assert not DeletionRecord.objects.filter(state=DeletionRecord.State.PENDING).exists()
        assert not Job.objects.filter(state=Job.State.RUNNING).exists()

    def teardown(self) -> None:
        """Two clean syncs (the second removes what the first found gone and marked), then
        the database must equal the registry, and no index in the registry may point at a
        missing child."""
        self.sync()
        self.sync()
        tags = {
            t: self.direct.head_manifest(self.repo, t) for t in self.direct.list_tags(self.repo)
        }
        registry_tags = {tag: head.digest for tag, head in tags.items() if head is not None}
        db_tags = dict(
            Tag.objects.filter(repository__name=self.repo).values_list("name", "manifest__digest")
        )
        assert db_tags == registry_tags
        for digest in self.db_digests():
            assert self.registry_has(digest), f"{digest} in the database, not in the registry"
        for index in self.indexes:
            if self.registry_has(index.digest):
                for child in self.direct.get_manifest(self.repo, index.digest).parsed.manifests:
                    assert self.registry_has(child.digest), f"{index.digest} lost {child.digest}"
        self.direct.close()
        self.hub.close()


def test_the_guarantees_hold_whatever_happens_in_whatever_order(tmp_path, db):
    with LocalRegistry(tmp_path / "registry") as server, FaultProxy(server.url) as proxy:
        run_state_machine_as_test(
            lambda: Registry(server, proxy),
            settings=settings(
                max_examples=EXAMPLES,
                stateful_step_count=12,
                deadline=timedelta(seconds=120),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                derandomize=EXAMPLES <= 10,
            ),
        )
