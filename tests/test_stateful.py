"""The guarantees, not just the cases (issue 18): a Hypothesis state machine drives the real
registry, through the fault proxy, with what happens to a registry in real life — pushes,
tag moves, deletes by other clients, syncs (some answered with a 404 or a HEAD without its
digest header), notifications (delivered, dropped, duplicated, out of order), previews and
fingerprinted deletions, retention runs, worker kills — and checks after every step what
hubimages promises.

Deletions and retention runs are jobs, started as the pages and the API start them
(`jobs.queue`), and run by a real `manage.py db_worker` process (the Procfile's) on the
test database, with the shortest leases the settings allow (2 s, as the soak). One rule
SIGKILLs that worker mid-job — once the job has sent 0 to 3 DELETEs (each held by the
proxy), partway into the next, or after it ended — and starts a new one, whose recovery
must settle what the dead one left. The worker is started once per test, kept across
steps and examples, and started again after each kill. After every step:

- nothing is deleted that the executed plan did not show, and the deletion history says
  exactly what went; a job that may have sent a DELETE is never run again;
- no index is stored (or left in the registry) with a missing child;
- a manifest leaves the database only when the registry no longer has it (a known untagged
  manifest never vanishes on one odd answer);
- no job queued or running, no task running without a live worker, every Deletion,
  DeletionRecord and RetentionRun settled (each step first waits, within a generous
  bound, for the worker and its recovery to settle everything);
- after a kill, and at the end of each example: after two clean syncs, the database
  equals the registry.

The suite runs a few examples (`HUBIMAGES_STATEFUL_EXAMPLES`, default 4, derandomized, of
up to `HUBIMAGES_STATEFUL_STEPS` = 12 steps) and fails if none killed the worker; run it
long (random examples, a line per example) with

    SECRET_KEY=any-test-key-of-50-characters-or-more-xxxxxxxxxxxxxxxx \
    HUBIMAGES_STATEFUL_EXAMPLES=200 .venv/bin/python -m pytest -s tests/test_stateful.py

(prefixed with `.venv/bin/python -m devtools.postgres --` on PostgreSQL), or
`HUBIMAGES_STATEFUL_EXAMPLES=200 bash scripts/test -k stateful` on both databases.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from pathlib import Path

import hypothesis.strategies as st
from django.db.models import Q
from django.tasks import TaskResultStatus
from django.utils import timezone
from django_tasks_db.models import DBTaskResult
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from devtools.faultproxy import FaultProxy
from devtools.processes import Process, database_url, environment
from devtools.pusher import ImagePusher, PushedManifest, random_layer
from devtools.server import LocalRegistry
from hubimages.deletion import planning
from hubimages.jobs import queue
from hubimages.jobs.worker import live_workers
from hubimages.models import (
    Deletion,
    DeletionRecord,
    IndexEntry,
    Job,
    Manifest,
    Repository,
    RetentionRun,
    Tag,
    WorkerHeartbeat,
)
from hubimages.retention import engine, policies
from hubimages.sync import events
from hubimages.sync.service import sync_registry
from registry.client import RegistryClient
from registry.notifications import Event

EXAMPLES = int(os.environ.get("HUBIMAGES_STATEFUL_EXAMPLES", "4"))
STEPS = int(os.environ.get("HUBIMAGES_STATEFUL_STEPS", "12"))
LEASE_SECONDS = "2"  # the shortest the settings allow, as the soak runs
DELETE_DELAY = 0.2  # seconds the fault proxy holds each DELETE while a kill may come
# Where a worker is killed mid-job: once the job has sent 0 to 3 DELETEs, that fraction
# of a held DELETE later.
KILL = st.tuples(st.integers(0, 3), st.floats(0, 1))
PICKS = st.lists(st.integers(0, 63), min_size=1, max_size=2)
SETTLE_TIMEOUT = 90.0  # a bound for "never settles", not a measure
TAGS = ("v1", "v2", "v3", "latest")


class Registry(RuleBasedStateMachine):
    """One repository per example (a fresh name), the registry and the database shared."""

    def __init__(self, server: LocalRegistry, proxy: FaultProxy, worker: Worker, user) -> None:
        super().__init__()
        self.worker = worker
        self.user = user
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
        """Three images pushed (v1, v2, latest) and synced: every rule has something to
        work on from the first step (a short example still deletes)."""
        for seed, tag in enumerate(("v1", "v2", "latest")):
            self.push(seed=seed, tag=tag)
        self.sync()

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

    @rule(pick=st.integers(0, 63))
    def another_client_deletes_an_index(self, pick: int) -> None:
        """Other clients delete whole indexes (which leaves their children), never a child
        an index still lists: that would be their dangling index, not ours. (Which indexes
        were pushed depends on what the worker deleted: no precondition or draw on it.)"""
        if self.indexes:
            index = self.indexes[pick % len(self.indexes)]
            self.pusher.delete_manifest(self.repo, index.digest, missing_ok=True)

    @rule(fault=st.sampled_from(("", "404-digest", "404", "no-digest")))
    def sync_now(self, fault: str) -> None:
        self.sync(fault)

    @rule(how=st.sampled_from(("deliver", "deliver", "drop", "duplicate", "reverse")))
    def notify(self, how: str) -> None:
        batch, self.undelivered = self.undelivered, []
        if how == "drop" or not batch:
            return
        if how == "reverse":
            batch.reverse()
        if how == "duplicate":
            batch = batch + batch
        events.record(batch)
        events.process_received(self.hub)

    # -- deletions and retention runs: jobs, run by the real worker --------------------

    def deletion_job(self, picks: list[int]) -> tuple[Job, set[str]] | None:
        """The deletion of a previewed plan (one or two top-level manifests, `picks` of
        those stored), started as the page and the API start it; with what the plan shows.
        (What is stored depends on the real processes' timing: drawing from it would make
        Hypothesis's choices depend on it too.)"""
        repository = self.repository()
        top = sorted(
            Manifest.objects.filter(repository=repository, is_top_level=True).values_list(
                "digest", flat=True
            )
        )
        if repository is None or not top:
            return None
        chosen = sorted({top[pick % len(top)] for pick in picks})
        plan = planning.plan_deletion(repository=repository, digests=chosen)
        if plan.refused or not plan.delete:
            return None
        job = queue.start_deletion(
            repository=repository,
            digests=list(plan.selected),
            fingerprint=plan.fingerprint,
            user=self.user,
        )
        return job, {item.digest for item in plan.delete}

    def retention_job(self, count: int) -> tuple[Job, set[str]] | None:
        """A run of a stored policy's previewed dry run (keep the `count` latest pushed,
        untagged ones included), started as the policies page starts it."""
        stored = policies.save_policy(
            policies.parse_policy(
                {
                    "name": f"stateful-{self.repo.rpartition('/')[2]}",
                    "repositories": [self.repo],
                    "rules": [{"keep": "latest_pushed", "count": count, "untagged": True}],
                    "max_delete_fraction": 1,
                }
            ),
            replace=True,
        )
        preview = engine.dry_run(policies.policy_of(stored))
        planned = {i.digest for r in preview.repositories for i in r.plan.delete}
        if not planned:
            return None
        job = queue.start_retention(
            policy=stored.name,
            now=preview.now,
            fingerprint=preview.fingerprint,
            user=self.user,
        )
        return job, planned

    def present(self) -> set[str]:
        """What the database knows that the registry still has."""
        return {d for d in self.db_digests() if self.registry_has(d)}

    def check_what_went(self, job: Job, planned: set[str], present: set[str]) -> None:
        """Nothing went that the plan did not show, and the history says exactly what
        went (a record "done" for each manifest gone, none for any other)."""
        vanished = {d for d in present if not self.registry_has(d)}
        assert vanished <= planned, f"deleted outside the plan: {vanished - planned}"
        done = set(
            DeletionRecord.objects.filter(
                Q(operation__job=job) | Q(operation__retention_run__job=job),
                state=DeletionRecord.State.DONE,
            ).values_list("digest", flat=True)
        )
        assert done == vanished, f"the records say {done} went, the registry {vanished}"

    @rule(picks=PICKS)
    def preview_and_delete(self, picks: list[int]) -> None:
        self.run_job(lambda: self.deletion_job(picks))

    @rule(count=st.integers(1, 2))
    def retention_run(self, count: int) -> None:
        self.run_job(lambda: self.retention_job(count))

    @rule(
        kind=st.sampled_from(("deletion", "retention")),
        count=st.integers(1, 2),
        picks=PICKS,
        kill=KILL,
    )
    def kill_the_worker_mid_job(
        self, kind: str, count: int, picks: list[int], kill: tuple[int, float]
    ) -> None:
        """A previewed deletion, or a retention run keeping the `count` latest pushed, its
        worker killed at `kill`."""
        if kind == "deletion":
            self.run_job(lambda: self.deletion_job(picks), kill)
        else:
            self.run_job(lambda: self.retention_job(count), kill)

    def run_job(self, start, kill: tuple[int, float] | None = None) -> None:
        """Start the job and wait until the worker has run it and everything is settled;
        with `kill` (n, f), SIGKILL the worker once the job has sent n DELETEs (or ended),
        f of the way into the next one (the proxy holds each DELETE a little), and start
        a new one: the kill lands before any DELETE, during one, or after the job ended.
        Once the dead worker's leases ran out, recovery settles what it left from the
        registry; a job that may have deleted is closed, never run again, one that cannot
        have is run again. Then nothing went that the plan did not show, the history says
        what went, and (after a kill) the database equals the registry after a clean
        sync."""
        present = self.present()
        if kill is not None:
            self.proxy.delay(
                rf"^/v2/{self.repo}/manifests/sha256:", seconds=DELETE_DELAY, method="DELETE"
            )
        try:
            started = start()
            if started is None:
                return
            job, planned = started
            self.worker.jobs[str(job.kind)] += 1
            if kill is not None:
                sent = self.worker.kill_running(job, *kill)
                attempts = Job.objects.get(pk=job.pk).attempts
        finally:
            self.proxy.clear()
        self.worker.settle()
        self.check_what_went(job, planned, present)
        if kill is not None:
            if sent:  # a DELETE may have gone out: never run again
                job.refresh_from_db()
                assert job.attempts == attempts, f"job {job.pk} ran again after deleting"
            self.database_equals_the_registry()

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
    def no_index_in_the_registry_misses_a_child(self) -> None:
        """Other clients delete whole indexes only: a child gone while its index is still
        in the registry would be hubimages's doing."""
        for index in self.indexes:
            if self.registry_has(index.digest):
                missing = {d for d in index.child_digests if not self.registry_has(d)}
                assert not missing, f"index {index.digest} in the registry lost {missing}"

    @invariant()
    def everything_settled_and_no_job_without_a_live_worker(self) -> None:
        """Every step waits until the worker is idle again (`Worker.settle`), so: no job
        queued or running (a running one would need a live worker), no deletion, record or
        retention run unsettled, no task left running by a dead worker."""
        assert not Job.objects.filter(state__in=(Job.State.QUEUED, Job.State.RUNNING)).exists()
        assert not Deletion.objects.filter(state=Deletion.State.RUNNING).exists()
        assert not DeletionRecord.objects.filter(state=DeletionRecord.State.PENDING).exists()
        assert not RetentionRun.objects.filter(outcome=RetentionRun.Outcome.RUNNING).exists()
        alive = live_workers()
        for task in DBTaskResult.objects.filter(status=TaskResultStatus.RUNNING):
            assert task.worker_ids and task.worker_ids[-1] in alive, f"task {task.id} orphaned"

    def database_equals_the_registry(self) -> None:
        """After two clean syncs (the second removes what the first found gone and marked):
        the same tags on the same manifests, nothing in the database the registry lacks,
        everything a tag reaches (an index's children included) in the database."""
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
        stored = self.db_digests()
        for digest in stored:
            assert self.registry_has(digest), f"{digest} in the database, not in the registry"
        reached = set(registry_tags.values())
        for index in self.indexes:
            if index.digest in reached:
                reached |= set(index.child_digests)
        assert reached <= stored, f"in the registry, not in the database: {reached - stored}"

    def teardown(self) -> None:
        try:
            self.database_equals_the_registry()
            self.worker.examples += 1
            if EXAMPLES > 10:  # a long run: say how far it got
                print(f"example {self.worker.examples}: {self.worker.summary()}", flush=True)
        finally:
            self.direct.close()
            self.hub.close()


class Worker:
    """The `db_worker` process (the Procfile's) that runs the machine's jobs: started once
    for the whole test, kept across steps and examples, started again after each kill. On
    the test database, the registry behind the fault proxy, leases as short as the settings
    allow (as the soak runs it), so recovery after a kill takes seconds."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.started = 0
        self.kills: Counter[str] = Counter()
        self.jobs: Counter[str] = Counter()
        self.examples = 0
        self.process = self.start()

    def start(self) -> Process:
        self.process = Process("worker", self.env, self.logs / f"worker-{self.started}.log")
        self.started += 1
        return self.process

    def kill_running(self, job: Job, sent: int, fraction: float) -> bool:
        """SIGKILL the worker once `job` has sent `sent` DELETEs (a record is written
        before each) or ended, `fraction` of a held DELETE later; then start a new one.
        Whether a DELETE of the job's may have gone out."""
        records = DeletionRecord.objects.filter(
            Q(operation__job=job) | Q(operation__retention_run__job=job)
        )
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while not (
            Job.objects.filter(pk=job.pk).exclude(state=Job.State.QUEUED).exists()
            and (sent == 0 or records.count() >= sent or self.ended(job))
        ):
            self.check_alive()
            assert time.monotonic() < deadline, f"job {job.pk} never reached its kill"
            time.sleep(0.01)
        time.sleep(fraction * DELETE_DELAY)
        self.process.kill()
        job.refresh_from_db()
        sent = records.exists()
        if job.finished:
            self.kills["after the job ended"] += 1
        else:
            self.kills["once a DELETE had gone out" if sent else "before any DELETE"] += 1
        self.start()
        return sent

    @staticmethod
    def ended(job: Job) -> bool:
        return Job.objects.filter(
            pk=job.pk, state__in=(Job.State.SUCCEEDED, Job.State.FAILED)
        ).exists()

    def check_alive(self) -> None:
        assert self.process.popen.poll() is None, f"the worker exited:\n{self.process.tail()}"

    def settle(self) -> None:
        """Wait until every job has ended and every record is settled (recovery included,
        after a kill); a job queued again does not wait out its back-off (as in the soak)."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while unsettled := self.unsettled():
            self.check_alive()
            assert time.monotonic() < deadline, f"not settled: {unsettled}\n{self.process.tail()}"
            DBTaskResult.objects.filter(
                status=TaskResultStatus.READY, run_after__gt=timezone.now()
            ).update(run_after=timezone.now())
            time.sleep(0.05)

    def unsettled(self) -> list[str]:
        """What is not settled yet: jobs queued or running, deletions, records and
        retention runs running or pending, tasks left running by a killed worker (the
        recovery fails them once its heartbeat's lease ran out)."""
        jobs = Job.objects.filter(state__in=(Job.State.QUEUED, Job.State.RUNNING))
        deletions = Deletion.objects.filter(state=Deletion.State.RUNNING)
        records = DeletionRecord.objects.filter(state=DeletionRecord.State.PENDING)
        retention = RetentionRun.objects.filter(outcome=RetentionRun.Outcome.RUNNING)
        mine = set(
            WorkerHeartbeat.objects.filter(pid=self.process.pid).values_list("worker_id", flat=True)
        )
        tasks = DBTaskResult.objects.filter(status=TaskResultStatus.RUNNING)
        return [
            *(
                f"job {pk} {kind} {state}"
                for pk, kind, state in jobs.values_list("pk", "kind", "state")
            ),
            *(f"deletion {pk}" for pk in deletions.values_list("pk", flat=True)),
            *(f"record {digest}" for digest in records.values_list("digest", flat=True)),
            *(f"retention run {pk}" for pk in retention.values_list("pk", flat=True)),
            *(
                f"task {task.id} of {task.worker_ids}"
                for task in tasks
                if not (task.worker_ids and task.worker_ids[-1] in mine)
            ),
        ]

    def summary(self) -> str:
        return f"jobs {dict(self.jobs)}; the worker killed {dict(self.kills)}"

    def stop(self) -> None:
        self.process.stop()


def test_the_guarantees_hold_whatever_happens_in_whatever_order(
    tmp_path, transactional_db, settings, django_user_model
):
    settings.LOCK_LEASE_SECONDS = settings.WORKER_LEASE_SECONDS = int(LEASE_SECONDS)
    user = django_user_model.objects.create_superuser("stateful", password="stateful-password")
    with LocalRegistry(tmp_path / "registry") as server, FaultProxy(server.url) as proxy:
        settings.REGISTRY_URL = proxy.url
        env = environment(
            DATABASE_URL=database_url(),
            SECRET_KEY="stateful-tests-secret-key-" + "x" * 30,
            REGISTRY_URL=proxy.url,
            SYNC_INTERVAL_MINUTES="0",
            WORKER_LEASE_SECONDS=LEASE_SECONDS,
            LOCK_LEASE_SECONDS=LEASE_SECONDS,
        )
        worker = Worker(env, tmp_path)
        try:
            run_state_machine_as_test(
                lambda: Registry(server, proxy, worker, user),
                settings=hypothesis_settings(
                    max_examples=EXAMPLES,
                    stateful_step_count=STEPS,
                    deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                    derandomize=EXAMPLES <= 10,
                ),
            )
        finally:
            worker.stop()
        print(f"\n{worker.examples} examples; {worker.summary()}")
    assert worker.kills, "no example killed the worker"
