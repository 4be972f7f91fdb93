"""Chaos soak (issue 18): deletions and retention runs against a real registry, run by real
`db_worker` processes, one of which is SIGKILLed at a random moment in every round.

Each round pushes a fresh repository (a multi-arch index, images to delete, one to keep),
syncs it, starts a deletion job or a retention job (exactly a previewed plan), kills a
worker (usually the one running the job) at a random moment between the job's start and a
little after its expected end, starts a replacement, and waits for the survivors to settle
everything. Then it syncs the repository cleanly and checks the invariants:

- no job stays queued or running without a live worker (all end, within a bound);
- every Deletion, DeletionRecord and RetentionRun is settled (none running or pending);
- the database equals the registry after a clean sync (manifests and tags);
- no index is left, in the registry or the database, with a missing child;
- nothing was deleted outside the executed plan;
- the history says exactly what went (records "done" = what left the registry).

It prints each invariant's violations (must be 0) and how long recovery took after a kill
that hit the worker running the job: from the kill until the job is lined up (its records
settled from the registry, then the job closed, or queued again when nothing can have been
deleted). The dead worker's heartbeat and its leases must run out first. A job queued again
is not left to wait its back-off: the soak makes it due at once.

    .venv/bin/python bench/soak.py [--rounds 100] [--seed N] [--postgres] [--keep DIR]

The registry is reached through `devtools.faultproxy`, which slows each DELETE a little so
a kill lands mid-deletion often. Leases are the shortest the settings allow (2 s).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devtools.faultproxy import FaultProxy  # noqa: E402
from devtools.postgres import TemporaryPostgres  # noqa: E402
from devtools.processes import Process, environment, setup_django  # noqa: E402
from devtools.pusher import ImagePusher, PushedManifest, random_layer  # noqa: E402
from devtools.server import LocalRegistry  # noqa: E402

LEASE_SECONDS = "2"
DELETE_DELAY = 0.12  # seconds the proxy holds each DELETE
KILL_WITHIN = 1.6  # seconds after the job starts
SETTLE_TIMEOUT = 60.0
INVARIANTS = (
    "no job queued or running without a live worker",
    "every Deletion, DeletionRecord and RetentionRun settled",
    "database equal to the registry after a clean sync",
    "no index with a missing child (registry or database)",
    "nothing deleted outside the executed plan",
    "the history says exactly what went",
    "no job run again once a DELETE may have gone out",
)


@dataclass
class Round:
    repository: str
    kind: str
    pushed: list[PushedManifest]
    indexes: list[PushedManifest]
    planned: set[str]
    job_id: int = 0
    # At the kill: whether the job had written a record (a DELETE may have gone out), and
    # how many attempts it had made.
    sent_at_kill: bool = False
    attempts: int = 0


@dataclass
class Tally:
    violations: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    kinds: Counter = field(default_factory=Counter)
    kills: Counter = field(default_factory=Counter)
    recovery: list[float] = field(default_factory=list)
    phases: Counter = field(default_factory=Counter)  # seconds spent in each phase

    def fail(self, invariant: str, detail: str) -> None:
        self.violations[invariant] += 1
        self.examples.setdefault(invariant, detail)


class Workers:
    """The db_worker processes; a killed one is replaced at once."""

    def __init__(self, env: dict[str, str], logs: Path, count: int) -> None:
        self.env, self.logs, self.started = env, logs, 0
        self.live: list[Process] = []
        self.dead: list[Process] = []
        for _ in range(count):
            self.start()

    def start(self) -> None:
        self.live.append(Process("worker", self.env, self.logs / f"worker-{self.started}.log"))
        self.started += 1

    def kill(self, process: Process) -> None:
        process.kill()
        self.live.remove(process)
        self.dead.append(process)
        self.start()

    def running(self, job_id: int) -> Process | None:
        from hubimages.models import Job, WorkerHeartbeat

        worker_id = Job.objects.filter(pk=job_id).values_list("worker_id", flat=True).first()
        if not worker_id:
            return None
        beat = WorkerHeartbeat.objects.filter(worker_id=worker_id).first()
        return next((p for p in self.live if beat and p.pid == beat.pid), None)

    def stop(self) -> None:
        for process in self.live + self.dead:
            with contextlib.suppress(Exception):
                process.stop()

    def tracebacks(self) -> int:
        return sum(
            log.read_text(errors="replace").count("Traceback")
            for log in self.logs.glob("worker-*.log")
        )


def prepare(number: int, pusher: ImagePusher, registry_url: str, user) -> Round:
    """A fresh repository, synced, and a job started on it: a deletion of a previewed plan
    (an index and two images) or a retention run of a previewed dry run (keep `keep-*`)."""
    from django.utils import timezone

    from hubimages.deletion import planning
    from hubimages.jobs import queue
    from hubimages.models import Repository
    from hubimages.retention import engine, policies
    from hubimages.sync.service import sync_registry
    from registry.client import RegistryClient

    repository = f"soak/r{number}"
    images = [
        pusher.push_image(
            repository, layers=[random_layer(300, f"{repository}-{arch}")], architecture=arch
        )
        for arch in ("amd64", "arm64")
    ]
    index = pusher.push_index(repository, tag="multi", images=images)
    old = [
        pusher.push_image(
            repository, tag=f"old-{n}", layers=[random_layer(300, f"{repository}-o{n}")]
        )
        for n in range(3)
    ]
    keep = pusher.push_image(
        repository, tag="keep-1", layers=[random_layer(300, f"{repository}-k")]
    )
    with RegistryClient(registry_url) as client:
        summary = sync_registry(client, repositories=[repository], workers=4)
    assert not summary.errors, summary.errors
    pushed = [index, *images, *old, keep]
    kind = "deletion" if number % 2 else "retention"
    round_ = Round(repository, kind, pushed, [index], set())
    if kind == "deletion":
        row = Repository.objects.get(name=repository)
        plan = planning.plan_deletion(
            repository=row, digests=[index.digest, *[o.digest for o in old[:2]]]
        )
        round_.planned = {item.digest for item in plan.delete}
        job = queue.start_deletion(
            repository=row, digests=list(plan.selected), fingerprint=plan.fingerprint, user=user
        )
    else:
        stored = policies.save_policy(
            policies.parse_policy(
                {
                    "name": f"soak-{number}",
                    "repositories": [repository],
                    "rules": [{"keep": "always", "tags": ["keep-*"]}],
                }
            )
        )
        dry = engine.dry_run(policies.policy_of(stored), now=timezone.now())
        round_.planned = {i.digest for r in dry.repositories for i in r.plan.delete}
        job = queue.start_retention(
            policy=stored.name, now=dry.now, fingerprint=dry.fingerprint, started_by="soak"
        )
    round_.job_id = job.pk
    return round_


def kill_somewhere(round_: Round, workers: Workers, rng: random.Random, tally: Tally) -> bool:
    """Kill a worker at a random moment: the one running the job (most often), else any.
    Whether the kill hit the job mid-run."""
    from hubimages.models import DeletionRecord, Job

    time.sleep(rng.uniform(0.0, KILL_WITHIN))
    victim = workers.running(round_.job_id) if rng.random() < 0.85 else None
    job = Job.objects.get(pk=round_.job_id)
    hit = victim is not None and not job.finished
    round_.attempts = job.attempts
    round_.sent_at_kill = DeletionRecord.objects.filter(repository=round_.repository).exists()
    if victim is None:
        victim = rng.choice(workers.live)
        tally.kills["any worker (the job's, unknown or not started yet, or another)"] += 1
    elif not hit:
        tally.kills["the job's worker, after the job ended"] += 1
    elif round_.sent_at_kill:
        tally.kills["the job's worker, once a DELETE had gone out"] += 1
    else:
        tally.kills["the job's worker, before any DELETE"] += 1
    workers.kill(victim)
    return hit


def lined_up(job_id: int, task_id: str) -> bool:
    """The killed worker's job was recovered: closed, or queued again with a new task (a
    job that deletes only once what it recorded was settled from the registry)."""
    from hubimages.models import Job

    job = Job.objects.get(pk=job_id)
    return job.finished or job.task_id != task_id


def run_retries_now() -> None:
    """A job queued again waits its back-off (15 s): the soak does not."""
    from django.utils import timezone
    from django_tasks_db.models import DBTaskResult

    DBTaskResult.objects.filter(status="READY", run_after__gt=timezone.now()).update(
        run_after=timezone.now()
    )


def unsettled() -> str:
    """What is left unsettled, with each job's task, for the report."""
    from django_tasks_db.models import DBTaskResult

    from hubimages.jobs.worker import live_workers
    from hubimages.models import Job

    stuck = []
    for job in Job.objects.filter(state__in=("queued", "running")):
        task = DBTaskResult.objects.filter(id=job.task_id).first()
        stuck.append(
            f"job {job.pk} {job.kind} {job.state} attempts {job.attempts} {job.message!r}: "
            + (
                f"task {task.status} run_after {task.run_after:%H:%M:%S} by {task.worker_ids}"
                if task
                else "no task"
            )
        )
    return f"{'; '.join(stuck)}; live workers {sorted(live_workers())}"


def settled() -> bool:
    from hubimages.models import Deletion, DeletionRecord, Job, RetentionRun

    return not (
        Job.objects.filter(state__in=("queued", "running")).exists()
        or Deletion.objects.filter(state="running").exists()
        or DeletionRecord.objects.filter(state="pending").exists()
        or RetentionRun.objects.filter(outcome="running").exists()
    )


def check(round_: Round, registry_url: str, tally: Tally) -> None:
    from hubimages.models import Deletion, DeletionRecord, Job, Manifest, RetentionRun, Tag
    from hubimages.sync.service import sync_registry
    from registry.client import RegistryClient
    from registry.errors import NotFound

    name = round_.repository
    with RegistryClient(registry_url) as client:
        present = {m.digest for m in round_.pushed if client.head_manifest(name, m.digest)}
        for child in (c for m in round_.pushed for c in m.child_digests):
            if client.head_manifest(name, child):
                present.add(child)
        try:
            tags = {t: client.head_manifest(name, t).digest for t in client.list_tags(name)}
        except NotFound:
            tags = {}
        summary = sync_registry(client, repositories=[name], workers=4)
    if summary.errors:
        tally.fail(INVARIANTS[2], f"{name}: clean sync failed: {summary.errors}")
    known = {c for m in round_.pushed for c in m.child_digests} | {m.digest for m in round_.pushed}
    stored = set(Manifest.objects.filter(repository__name=name).values_list("digest", flat=True))
    stored_tags = dict(
        Tag.objects.filter(repository__name=name).values_list("name", "manifest__digest")
    )
    if stored != present or stored_tags != tags:
        tally.fail(
            INVARIANTS[2],
            f"{name}: database {sorted(stored)} {stored_tags}, registry {sorted(present)} {tags}",
        )
    for index in round_.indexes:
        if index.digest in present and not set(index.child_digests) <= present:
            tally.fail(INVARIANTS[3], f"{name}: index {index.digest} lost a child in the registry")
        if index.digest in stored and not set(index.child_digests) <= stored:
            tally.fail(INVARIANTS[3], f"{name}: index {index.digest} lost a child in the database")
    gone = known - present
    if not gone <= round_.planned:
        tally.fail(
            INVARIANTS[4], f"{name}: deleted outside the plan: {sorted(gone - round_.planned)}"
        )
    done = set(
        DeletionRecord.objects.filter(repository=name, state="done").values_list(
            "digest", flat=True
        )
    )
    if done != gone:
        tally.fail(
            INVARIANTS[5], f"{name}: records say {sorted(done)} went, registry {sorted(gone)}"
        )
    if round_.sent_at_kill and Job.objects.get(pk=round_.job_id).attempts > round_.attempts:
        tally.fail(INVARIANTS[6], f"{name}: job {round_.job_id} ran again after deleting")
    unsettled = (
        Deletion.objects.filter(repository=name, state="running").count()
        + DeletionRecord.objects.filter(repository=name, state="pending").count()
        + RetentionRun.objects.filter(outcome="running").count()
    )
    if unsettled:
        tally.fail(INVARIANTS[1], f"{name}: {unsettled} records still running or pending")


def soak(rounds: int, seed: int, database_url: str, root: Path, database: str) -> Tally:
    registry = LocalRegistry(root / "registry")
    registry.start()
    proxy = FaultProxy(registry.url).start()
    proxy.delay(r"/manifests/sha256:", seconds=DELETE_DELAY, method="DELETE")
    env = environment(
        DATABASE_URL=database_url,
        SECRET_KEY="soak-secret-key-" + "x" * 40,
        REGISTRY_URL=proxy.url,
        SYNC_INTERVAL_MINUTES="0",
        WORKER_LEASE_SECONDS=LEASE_SECONDS,
        LOCK_LEASE_SECONDS=LEASE_SECONDS,
        LOG_LEVEL="WARNING",
    )
    setup_django(
        database_url,
        SECRET_KEY=env["SECRET_KEY"],
        WORKER_LEASE_SECONDS=LEASE_SECONDS,
        LOCK_LEASE_SECONDS=LEASE_SECONDS,
        LOG_LEVEL="WARNING",
    )
    from django.contrib.auth import get_user_model

    from hubimages.models import Job

    user = get_user_model().objects.create_superuser("soak", password="soak-password")
    rng = random.Random(seed)
    pusher = ImagePusher(registry.url)
    tally = Tally()
    logs = root / "logs"
    logs.mkdir()
    workers = Workers(env, logs, 2)
    started = time.monotonic()
    print(
        f"{rounds} rounds on {database}, 2 db_workers (one SIGKILLed each round, then "
        f"replaced), leases {LEASE_SECONDS} s, each DELETE held {DELETE_DELAY} s; seed {seed}",
        flush=True,
    )
    try:
        for number in range(1, rounds + 1):
            begun = time.monotonic()
            round_ = prepare(number, pusher, registry.url, user)
            tally.kinds[round_.kind] += 1
            task_id = Job.objects.get(pk=round_.job_id).task_id
            prepared = time.monotonic()
            hit = kill_somewhere(round_, workers, rng, tally)
            killed_at = time.monotonic()
            if hit:
                while not lined_up(round_.job_id, task_id):
                    if time.monotonic() > killed_at + SETTLE_TIMEOUT:
                        break
                    time.sleep(0.05)
                tally.recovery.append(time.monotonic() - killed_at)
            while not (calm := settled()) and time.monotonic() < killed_at + SETTLE_TIMEOUT:
                run_retries_now()
                time.sleep(0.05)
            if not calm:
                tally.fail(INVARIANTS[0], f"round {number}: unsettled: {unsettled()}")
            done = time.monotonic()
            check(round_, registry.url, tally)
            tally.phases["push, sync, preview, start the job"] += prepared - begun
            tally.phases["until the kill (random), the kill, a new worker"] += killed_at - prepared
            tally.phases["until everything is settled"] += done - killed_at
            tally.phases["clean sync and checks"] += time.monotonic() - done
            if number % 10 == 0:
                print(
                    f"  round {number}: {sum(tally.violations.values())} violations, "
                    f"{time.monotonic() - started:.0f} s",
                    flush=True,
                )
    finally:
        workers.stop()
        proxy.stop()
        registry.stop()
    tally.kinds["worker tracebacks logged"] = workers.tracebacks()
    tally.kinds["seconds"] = round(time.monotonic() - started)
    return tally


def report(tally: Tally) -> None:
    print(
        f"\nrounds: {tally.kinds['deletion']} deletions, {tally.kinds['retention']} retention runs"
    )
    for what, count in sorted(tally.kills.items()):
        print(f"  killed {what}: {count}")
    print("\ninvariant                                                violations")
    for invariant in INVARIANTS:
        print(f"  {invariant:<55} {tally.violations[invariant]}")
    for invariant, example in tally.examples.items():
        print(f"  e.g. {invariant}: {example[:400]}")
    if tally.recovery:
        ordered = sorted(tally.recovery)
        p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
        print(
            f"\nrecovery, from killing the job's worker until its job is lined up (its records "
            f"settled from the registry, then closed or queued again): median "
            f"{statistics.median(ordered):.1f} s, 95th percentile {p95:.1f} s, "
            f"max {ordered[-1]:.1f} s"
        )
    rounds = max(1, tally.kinds["deletion"] + tally.kinds["retention"])
    print("time per round, on average:")
    for what, seconds in tally.phases.items():
        print(f"  {what}: {seconds / rounds:.2f} s")
    print(
        f"total {tally.kinds['seconds']} s; worker tracebacks logged: "
        f"{tally.kinds['worker tracebacks logged']}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL")
    parser.add_argument("--keep", type=Path, help="keep the logs and the database here")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    with contextlib.ExitStack() as stack:
        root = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak.")))
        root.mkdir(parents=True, exist_ok=True)
        if args.postgres:
            database = stack.enter_context(TemporaryPostgres())
            url, label = database.url, f"PostgreSQL {database.version}"
        else:
            url, label = f"sqlite:///{root / 'soak.sqlite3'}", "SQLite"
        tally = soak(args.rounds, seed, url, root, label)
    report(tally)
    return 1 if sum(tally.violations.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
