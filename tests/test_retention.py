"""Retention policies against a real registry (SPEC §8): every keep kind with and without
group_by, the scopes, repository patterns, the cascade that never breaks a multi-arch
image, exact bytes under the real garbage collector, plan-pinned runs and the brake."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.utils import timezone

from devtools.pusher import PushedManifest, random_layer
from hubimages.lib.formatting import short_digest
from hubimages.models import DeletionRecord, Manifest, RetentionPolicy, RetentionRun
from hubimages.registries import rows
from hubimages.retention import engine, policies, runs
from hubimages.sync.store import read_pushed, write_pushed

REPO = "team/app"


@pytest.fixture
def now():
    return timezone.now().replace(microsecond=0)


def push(pusher, tag: str | None, seed: str | None = None, *, repo: str = REPO, size=1_500):
    return pusher.push_image(repo, tag=tag, layers=[random_layer(size, seed or tag)])


def seen_untagged(pusher, client, seed: str, *, repo: str = REPO) -> PushedManifest:
    """An image pushed by digest, as a push event makes hubimages see it (a sync cannot
    list untagged manifests)."""
    image = push(pusher, None, seed, repo=repo)
    with ThreadPoolExecutor(2) as pool:
        registry = rows.get()
        write_pushed(registry, read_pushed(client, pool, registry, repo, {image.digest: set()}))
    return image


def set_times(now, manifest, *, pushed: float, pulled: float | None = None, repo: str = REPO):
    """Last pushed and last pulled, in days before `now` (hubimages learns them from events)."""
    Manifest.objects.filter(repository__name=repo, digest=manifest.digest).update(
        pushed_at=now - timedelta(days=pushed),
        pushed_at_estimated=False,
        last_pulled_at=now - timedelta(days=pulled) if pulled is not None else None,
    )


def policy(*rules: dict, repositories=("**",), name: str = "ci-cleanup", **fields):
    return policies.parse_policy(
        {"name": name, "repositories": list(repositories), "rules": list(rules), **fields}
    )


def repo_of(dry: engine.DryRun, name: str = REPO) -> engine.RepositoryDryRun:
    return next(r for r in dry.repositories if r.name == name)


def kept(dry: engine.DryRun, name: str = REPO) -> dict[str, str]:
    return {item.digest: item.reason for item in repo_of(dry, name).kept}


def selected(dry: engine.DryRun, name: str = REPO) -> set[str]:
    return set(repo_of(dry, name).selected)


def in_registry(client, *manifests, repo: str = REPO) -> set[str]:
    return {m.digest for m in manifests if client.head_manifest(repo, m.digest) is not None}


def run(dry: engine.DryRun, client, **options) -> runs.RunResult:
    return runs.run(
        policy=dry.policy,
        now=dry.now,
        fingerprint=dry.fingerprint,
        client_for=lambda registry: client,
        trigger=RetentionRun.Trigger.MANUAL,
        started_by="tester",
        **options,
    )


# -- keep kinds and scopes -----------------------------------------------------------------


def test_keep_always_keeps_every_item_with_a_matching_tag_and_selects_the_rest(
    pusher, sync, registry_client, now
):
    v10, v11 = push(pusher, "v1.0"), push(pusher, "v1.1")
    main = push(pusher, "main-7")
    sync()
    untagged = seen_untagged(pusher, registry_client, "untagged")

    dry = engine.dry_run(policy({"keep": "always", "tags": ["v*"]}), now=now)

    assert kept(dry) == {v10.digest: "kept by rule 1: always", v11.digest: "kept by rule 1: always"}
    assert selected(dry) == {main.digest, untagged.digest}
    assert {item.digest for item in repo_of(dry).plan.delete} == {main.digest, untagged.digest}
    assert repo_of(dry).plan.tags_removed == ("main-7",)


def test_latest_pushed_keeps_the_newest_n_and_a_tie_goes_to_the_smaller_digest(pusher, sync, now):
    images = [push(pusher, f"b{i}") for i in range(4)]
    sync()
    oldest, tied_a, tied_b, newest = images
    for image, days in ((oldest, 4), (tied_a, 2), (tied_b, 2), (newest, 1)):
        set_times(now, image, pushed=days)
    smaller, larger = sorted([tied_a, tied_b], key=lambda m: m.digest)

    dry = engine.dry_run(policy({"keep": "latest_pushed", "count": 2}), now=now)

    assert kept(dry) == {
        newest.digest: "kept by rule 1: latest 2",
        smaller.digest: "kept by rule 1: latest 2",
    }
    assert selected(dry) == {oldest.digest, larger.digest}


def test_latest_pushed_with_group_by_keeps_n_of_each_branch(pusher, sync, now):
    ages = {
        "main-1": 5,
        "main-2": 4,
        "main-3": 3,
        "pr-12-a": 6,
        "pr-12-b": 2,
        "pr-13-a": 7,
        "pr-foo": 8,  # matches pr-* but not the expression: the group ""
        "feature-x": 1,  # outside the rule's tags
    }
    images = {tag: push(pusher, tag) for tag in ages}
    both = push(pusher, "main-0")  # also pr-15-a: an item in two groups
    pusher.tag(REPO, "pr-15-a", both)
    sync()
    for tag, days in ages.items():
        set_times(now, images[tag], pushed=days)
    set_times(now, both, pushed=10)
    rule = {
        "keep": "latest_pushed",
        "count": 1,
        "tags": ["main-*", "pr-*"],
        "group_by": "^(main|pr-[0-9]+)-",
    }

    grouped = engine.dry_run(policy(rule), now=now)

    assert kept(grouped) == {
        images["main-3"].digest: "kept by rule 1: latest 1 of group main",
        images["pr-12-b"].digest: "kept by rule 1: latest 1 of group pr-12",
        images["pr-13-a"].digest: "kept by rule 1: latest 1 of group pr-13",
        images["pr-foo"].digest: "kept by rule 1: latest 1 of the ungrouped items",
        both.digest: "kept by rule 1: latest 1 of group pr-15",
    }
    assert selected(grouped) == {
        images[tag].digest for tag in ("main-1", "main-2", "pr-12-a", "feature-x")
    }

    without_group_by = {key: value for key, value in rule.items() if key != "group_by"}
    ungrouped = engine.dry_run(policy(without_group_by), now=now)
    assert kept(ungrouped) == {images["pr-12-b"].digest: "kept by rule 1: latest 1"}


def test_a_group_by_without_a_capture_group_groups_by_the_whole_match(pusher, sync, now):
    images = {tag: push(pusher, tag) for tag in ("release-1", "release-2", "nightly-1")}
    sync()
    for days, tag in enumerate(("release-2", "nightly-1", "release-1"), start=1):
        set_times(now, images[tag], pushed=days)

    dry = engine.dry_run(
        policy({"keep": "latest_pushed", "count": 1, "group_by": "^[a-z]+"}), now=now
    )

    assert kept(dry) == {
        images["release-2"].digest: "kept by rule 1: latest 1 of group release",
        images["nightly-1"].digest: "kept by rule 1: latest 1 of group nightly",
    }


def test_latest_pulled_keeps_the_most_recently_pulled_and_never_what_was_never_pulled(
    pusher, sync, now
):
    tags = ("x-1", "x-2", "y-1", "y-2")
    images = {tag: push(pusher, tag) for tag in tags}
    sync()
    pulls = {"x-1": 3, "x-2": 1, "y-1": 9, "y-2": None}
    for tag in tags:
        set_times(now, images[tag], pushed=0.5 if tag == "y-2" else 20, pulled=pulls[tag])

    plain = engine.dry_run(policy({"keep": "latest_pulled", "count": 3}), now=now)
    grouped = engine.dry_run(
        policy({"keep": "latest_pulled", "count": 1, "group_by": "^([a-z])-"}), now=now
    )

    assert kept(plain) == {
        images[tag].digest: "kept by rule 1: latest 3 pulled" for tag in ("x-1", "x-2", "y-1")
    }
    assert selected(plain) == {images["y-2"].digest}  # the newest push, never pulled
    assert kept(grouped) == {
        images["x-2"].digest: "kept by rule 1: latest 1 pulled of group x",
        images["y-1"].digest: "kept by rule 1: latest 1 pulled of group y",
    }


def test_pushed_within_and_pulled_within_count_days_back_from_the_runs_now(pusher, sync, now):
    edge, past, pulled, old_pull = (push(pusher, f"t{i}") for i in range(4))
    sync()
    set_times(now, edge, pushed=7)  # exactly 7 × 24 h before now: within
    set_times(now, past, pushed=7 + 1 / 86_400)  # one second more: not
    set_times(now, pulled, pushed=100, pulled=3)
    set_times(now, old_pull, pushed=100, pulled=3 + 1 / 86_400)
    rules = ({"keep": "pushed_within", "days": 7}, {"keep": "pulled_within", "days": 3})

    dry = engine.dry_run(policy(*rules), now=now)

    assert kept(dry) == {
        edge.digest: "kept by rule 1: pushed within 7 days",
        pulled.digest: "kept by rule 2: pulled within 3 days",
    }
    later = engine.dry_run(policy(*rules), now=now + timedelta(seconds=1))
    assert kept(later) == {}  # `now` decides, nothing else


def test_exclude_tags_take_an_item_out_of_a_rule_even_when_another_tag_matches(pusher, sync, now):
    release = push(pusher, "v1.0")
    debug = push(pusher, "v1.1")
    pusher.tag(REPO, "v1.1-debug", debug)
    candidate = push(pusher, "v2.0-rc1")
    sync()

    dry = engine.dry_run(
        policy({"keep": "always", "tags": ["v*"], "exclude_tags": ["*-debug", "*-rc*"]}), now=now
    )

    assert kept(dry) == {release.digest: "kept by rule 1: always"}
    assert selected(dry) == {debug.digest, candidate.digest}


def test_untagged_items_are_kept_only_by_a_rule_that_says_untagged(
    pusher, sync, registry_client, now
):
    tagged = push(pusher, "v1")
    sync()
    old = seen_untagged(pusher, registry_client, "old build")
    new = seen_untagged(pusher, registry_client, "new build")
    set_times(now, tagged, pushed=30)
    set_times(now, old, pushed=5)
    set_times(now, new, pushed=1)

    tags_only = engine.dry_run(policy({"keep": "always"}), now=now)
    with_untagged = engine.dry_run(
        policy(
            {"keep": "always"},
            {"keep": "latest_pushed", "count": 1, "tags": [], "untagged": True},
        ),
        now=now,
    )
    grouped = engine.dry_run(
        policy({"keep": "latest_pushed", "count": 1, "group_by": "^(v)", "untagged": True}),
        now=now,
    )

    assert kept(tags_only) == {tagged.digest: "kept by rule 1: always"}
    assert selected(tags_only) == {old.digest, new.digest}
    assert kept(with_untagged) == {
        tagged.digest: "kept by rule 1: always",
        new.digest: "kept by rule 2: latest 1",
    }
    # Untagged items share the group "" (v1 is in group v), so one of them is kept.
    assert kept(grouped) == {
        tagged.digest: "kept by rule 1: latest 1 of group v",
        new.digest: "kept by rule 1: latest 1 of the ungrouped items",
    }


def test_referrer_schema_tags_never_match_a_tag_pattern(pusher, sync, now):
    """An artifact left behind under the referrers tag of a subject that is gone is a
    top-level item whose only tag is `sha256-<hex>`: no pattern reaches it."""
    gone = "sha256:" + "ab" * 32
    orphan = pusher.push_image(
        REPO,
        tag=f"sha256-{'ab' * 32}",
        layers=[random_layer(900, "orphan")],
        subject=(gone, "application/vnd.oci.image.manifest.v1+json", 1234),
    )
    keep = push(pusher, "v1")
    sync()

    star = engine.dry_run(policy({"keep": "always", "tags": ["*", "sha256-*"]}), now=now)
    untagged = engine.dry_run(policy({"keep": "always", "untagged": True}), now=now)

    assert Manifest.objects.get(digest=orphan.digest).is_top_level
    assert kept(star) == {keep.digest: "kept by rule 1: always"}
    assert selected(star) == {orphan.digest}
    assert orphan.digest in kept(untagged)


def test_latest_is_kept_only_when_a_rule_keeps_it(pusher, sync, now):
    release = push(pusher, "v1.0")
    newest = push(pusher, "main-5")
    pusher.tag(REPO, "latest", newest)
    sync()
    set_times(now, release, pushed=10)
    set_times(now, newest, pushed=1)

    releases_only = engine.dry_run(
        policy({"keep": "latest_pushed", "count": 1, "tags": ["v*"]}), now=now
    )
    naming_latest = engine.dry_run(
        policy(
            {"keep": "latest_pushed", "count": 1, "tags": ["v*"]},
            {"keep": "always", "tags": ["latest"]},
        ),
        now=now,
    )

    assert selected(releases_only) == {newest.digest}
    assert repo_of(releases_only).plan.tags_removed == ("latest", "main-5")
    assert kept(naming_latest)[newest.digest] == "kept by rule 2: always"


def test_keeps_are_a_union_and_each_names_every_rule_that_keeps_it(pusher, sync, now):
    image = push(pusher, "main-1")
    sync()
    set_times(now, image, pushed=1, pulled=1)

    dry = engine.dry_run(
        policy(
            {"keep": "latest_pushed", "count": 3, "group_by": "^(main)-"},
            {"keep": "pushed_within", "days": 2},
            {"keep": "always", "tags": ["v*"]},
            {"keep": "pulled_within", "days": 30},
        ),
        now=now,
    )

    assert kept(dry) == {
        image.digest: "kept by rule 1: latest 3 of group main; rule 2: pushed within 2 days; "
        "rule 4: pulled within 30 days"
    }


# -- repositories, cascade, referrers ------------------------------------------------------


def test_repository_patterns_choose_the_repositories_a_run_covers(pusher, sync, now):
    for name in ("team/app", "team/golden", "team/sub/deep", "other/app"):
        push(pusher, "old", f"{name}-old", repo=name)
    sync()

    def covered(*patterns: str) -> list[str]:
        dry = engine.dry_run(
            policy({"keep": "always", "tags": ["v*"]}, repositories=patterns), now=now
        )
        return [r.name for r in dry.repositories]

    assert covered("team/**", "!team/golden") == ["team/app", "team/sub/deep"]
    assert covered("team/*") == ["team/app", "team/golden"]
    assert covered("*/app") == ["other/app", "team/app"]
    assert covered("**", "!team/**") == ["other/app"]


def test_a_keep_only_tagged_policy_never_breaks_a_multi_arch_image(
    pusher, sync, registry_client, now
):
    base = random_layer(3_000, "base")
    amd_old = pusher.push_image(REPO, layers=[base, random_layer(2_000, "amd-old")])
    arm = pusher.push_image(REPO, layers=[base, random_layer(2_000, "arm")], architecture="arm64")
    old = pusher.push_index(REPO, tag="v1", images=[amd_old, arm], attestations=True)
    sync()
    amd = pusher.push_image(REPO, layers=[base, random_layer(2_000, "amd-new")])
    current = pusher.push_index(REPO, tag="v1", images=[amd, arm], attestations=True)
    sync()  # v1 moved: the old index is an untagged top-level item, its images are not

    dry = engine.dry_run(policy({"keep": "always", "tags": ["*"]}), now=now)

    assert selected(dry) == {old.digest}
    plan = repo_of(dry).plan
    amd_attestation, arm_attestation = old.children[2:]
    assert arm_attestation.digest == current.children[3].digest  # the same in both
    assert {item.digest for item in plan.delete} == {
        old.digest,
        amd_old.digest,
        amd_attestation.digest,
    }
    stays = f"used by index {short_digest(current.digest)}, which stays"
    assert {(k.digest, k.reason) for k in plan.keep} == {
        (arm.digest, stays),
        (arm_attestation.digest, stays),
    }

    result = run(dry, registry_client)

    assert result.record.outcome == RetentionRun.Outcome.DONE
    everything = [current, *current.children]
    assert in_registry(registry_client, *everything) == {m.digest for m in everything}
    assert in_registry(registry_client, old, amd_old, amd_attestation) == set()
    assert pusher.pull_manifest(REPO, "v1").headers["Docker-Content-Digest"] == current.digest


def test_signatures_and_sboms_go_with_their_subject_and_stay_with_it(pusher, sync, now):
    old = push(pusher, "build-1")
    new = push(pusher, "build-2")
    referrers = {}
    for image in (old, new):
        referrers[image.digest] = [
            pusher.push_referrer(REPO, image).digest,
            pusher.push_cosign_signature(REPO, image).digest,
            pusher.pull_manifest(REPO, f"sha256-{image.hex}").headers["Docker-Content-Digest"],
        ]
    sync()
    set_times(now, old, pushed=3)
    set_times(now, new, pushed=1)

    dry = engine.dry_run(policy({"keep": "latest_pushed", "count": 1}), now=now)

    assert selected(dry) == {old.digest}  # referrers are never candidates themselves
    because = {item.digest: item.because for item in repo_of(dry).plan.delete}
    assert because == {
        old.digest: "selected",
        **{d: f"referrer of {short_digest(old.digest)}" for d in referrers[old.digest]},
    }
    assert repo_of(dry).plan.tags_removed == tuple(
        sorted(["build-1", f"sha256-{old.hex}", f"sha256-{old.hex}.sig"])
    )


# -- runs: exact bytes, plan-pinned, recorded ----------------------------------------------


def test_a_run_frees_exactly_the_dry_runs_reclaimable_bytes_under_garbage_collect(
    registry_server, pusher, sync, registry_client, now
):
    across = random_layer(40_000, "only the two old builds")  # in two repositories
    base = random_layer(20_000, "base")  # also used by what stays
    for name in ("team/a", "team/b"):
        pusher.push_image(name, tag="old", layers=[across, base, random_layer(5_000, name)])
        pusher.push_image(name, tag="keep-1", layers=[base, random_layer(3_000, f"{name}-k")])
    pusher.push_image("team/c", tag="old", layers=[random_layer(1_000, "c")])
    sync()
    registry_server.garbage_collect()
    before = registry_server.blob_bytes_on_disk()

    dry = engine.dry_run(
        policy({"keep": "always", "tags": ["keep-*"]}, repositories=["team/a", "team/b"]), now=now
    )
    per_repository = sum(r.plan.reclaimable_bytes for r in dry.repositories)
    # The shared layer counts in neither repository's plan, once in the run's total.
    assert dry.reclaimable_bytes == per_repository + 40_000

    result = run(dry, registry_client)
    registry_server.garbage_collect()

    freed = before - registry_server.blob_bytes_on_disk()
    assert freed == dry.reclaimable_bytes == result.record.reclaimed_bytes
    assert result.record.planned_bytes == dry.reclaimable_bytes
    assert result.record.started_at == dry.now == now
    assert (result.record.manifests_deleted, result.record.tags_deleted) == (2, 2)
    assert [n["repository"] for n in result.record.repositories] == ["team/a", "team/b"]
    records = DeletionRecord.objects.all()
    assert {(r.repository, r.username, tuple(r.tags)) for r in records} == {
        ("team/a", "tester · policy ci-cleanup", ("old",)),
        ("team/b", "tester · policy ci-cleanup", ("old",)),
    }
    assert sum(r.reclaimed_bytes for r in records) == dry.reclaimable_bytes


def test_a_plan_that_changed_between_dry_run_and_run_deletes_nothing(
    pusher, sync, registry_client, now
):
    older, newer = push(pusher, "main-1"), push(pusher, "main-2")
    sync()
    set_times(now, older, pushed=2)
    set_times(now, newer, pushed=1)
    dry = engine.dry_run(policy({"keep": "latest_pushed", "count": 1}), now=now)
    assert selected(dry) == {older.digest}
    newest = push(pusher, "main-3")  # the registry moves on; hubimages has not seen it yet

    result = run(dry, registry_client)

    assert result.record.outcome == RetentionRun.Outcome.CHANGED
    assert result.record.message == runs.CHANGED_MESSAGE
    assert in_registry(registry_client, older, newer, newest) == {
        older.digest,
        newer.digest,
        newest.digest,
    }
    assert not DeletionRecord.objects.exists()
    assert selected(result.dry_run) == {older.digest, newer.digest}  # what it would do now


def test_a_changed_database_is_caught_before_the_registry_is_asked(pusher, sync, now):
    older, newer = push(pusher, "main-1"), push(pusher, "main-2")
    sync()
    set_times(now, older, pushed=2)
    set_times(now, newer, pushed=1)
    dry = engine.dry_run(policy({"keep": "latest_pushed", "count": 1}), now=now)
    set_times(now, older, pushed=0.5)  # a push event said otherwise meanwhile

    result = run(dry, client=None)  # would fail on the first registry request

    assert result.changed
    assert Manifest.objects.filter(repository__name=REPO).count() == 2


def test_the_dry_run_marks_what_it_would_delete_that_was_pulled_in_the_last_30_days_recently_pulled(
    pusher, sync, now
):
    amd = pusher.push_image(REPO, layers=[random_layer(1_000, "amd")])
    index = pusher.push_index(REPO, tag="old-index", images=[amd])
    recent, stale = push(pusher, "recent"), push(pusher, "stale")
    kept_one = push(pusher, "v1")
    sync()
    set_times(now, index, pushed=90)
    set_times(now, amd, pushed=90, pulled=1)  # docker pulls the index, then its image
    set_times(now, recent, pushed=90, pulled=2)
    set_times(now, stale, pushed=90, pulled=40)
    set_times(now, kept_one, pushed=90, pulled=1)

    dry = engine.dry_run(policy({"keep": "always", "tags": ["v*"]}), now=now)

    assert repo_of(dry).recently_pulled == {
        amd.digest: "recently pulled: 1\xa0d ago",
        recent.digest: "recently pulled: 2\xa0d ago",
    }


def test_the_run_is_recorded_and_its_deletions_carry_the_policys_name(
    pusher, sync, registry_client, now
):
    old, new = push(pusher, "b-1"), push(pusher, "b-2")
    sync()
    set_times(now, old, pushed=2)
    set_times(now, new, pushed=1)
    row = policies.save_policy(policy({"keep": "latest_pushed", "count": 1}, name="nightly"))
    dry = engine.dry_run(policies.policy_of(row), now=now)

    result = run(dry, registry_client, row=row)

    record = RetentionRun.objects.get()
    assert record == result.record and record.policy == row
    assert (record.policy_name, record.trigger, record.started_by) == (
        "nightly",
        "manual",
        "tester",
    )
    assert record.outcome == RetentionRun.Outcome.DONE
    assert record.repositories == [
        {
            "registry": "default",
            "repository": REPO,
            "selected": 1,
            "deleted": 1,
            "tags": 1,
            "reclaimed_bytes": dry.reclaimable_bytes,
            "note": "deleted as planned",
        }
    ]
    assert DeletionRecord.objects.get().username == "tester · policy nightly"
    assert in_registry(registry_client, old, new) == {new.digest}


# -- scheduled runs and the brake ----------------------------------------------------------


def test_the_brake_stops_a_scheduled_run_where_it_would_delete_too_much(
    pusher, sync, registry_client, now
):
    busy = [push(pusher, f"b-{i}", repo="team/busy") for i in range(4)]
    calm_keep = [push(pusher, f"keep-{i}", repo="team/calm") for i in range(3)]
    calm_old = push(pusher, "old", "calm-old", repo="team/calm")
    sync()
    for days, image in enumerate(busy, start=1):
        set_times(now, image, pushed=days, repo="team/busy")
    for image in calm_keep:
        set_times(now, image, pushed=1, repo="team/calm")
    set_times(now, calm_old, pushed=9, repo="team/calm")
    rules = ({"keep": "always", "tags": ["keep-*"]}, {"keep": "latest_pushed", "count": 1})
    row = policies.save_policy(
        policy(*rules, repositories=["team/*"], schedule={"every_hours": 24}), now=now
    )
    RetentionPolicy.objects.filter(pk=row.pk).update(next_run_at=now - timedelta(minutes=1))

    [result] = runs.run_due_policies(now, client_for=lambda registry: registry_client)

    record = result.record
    assert (record.trigger, record.started_by) == ("scheduled", "schedule")
    assert record.outcome == RetentionRun.Outcome.INCOMPLETE
    notes = {note["repository"]: note for note in record.repositories}
    assert notes["team/busy"]["note"] == (
        "stopped: would delete 3 of 4 top-level items (75%), more than max_delete_fraction 0.5; "
        "nothing deleted here"
    )
    assert notes["team/busy"]["deleted"] == 0
    assert in_registry(registry_client, *busy, repo="team/busy") == {m.digest for m in busy}
    assert notes["team/calm"]["deleted"] == 1  # 1 of 4: under the brake
    assert DeletionRecord.objects.get().username == "scheduled · policy ci-cleanup"
    assert in_registry(registry_client, calm_old, *calm_keep, repo="team/calm") == {
        m.digest for m in calm_keep
    }
    assert "Some repositories were not cleaned" in record.message
    assert RetentionPolicy.objects.get().next_run_at == now + timedelta(hours=24)


def test_a_run_that_someone_starts_is_not_braked(pusher, sync, registry_client, now):
    busy = [push(pusher, f"b-{i}", repo="team/busy") for i in range(4)]
    sync()
    for days, image in enumerate(busy, start=1):
        set_times(now, image, pushed=days, repo="team/busy")
    dry = engine.dry_run(policy({"keep": "latest_pushed", "count": 1}), now=now)
    assert [r.name for r in dry.braked] == ["team/busy"]

    result = run(dry, registry_client)

    assert result.record.outcome == RetentionRun.Outcome.DONE
    assert in_registry(registry_client, *busy, repo="team/busy") == {busy[0].digest}


def test_only_enabled_policies_whose_schedule_is_due_run_and_each_only_once(
    registry_client, db, now
):
    rules = ({"keep": "always"},)

    def stored(name: str, *, hours: int | None, enabled=True, due: bool = True) -> int:
        schedule = {"every_hours": hours} if hours else None
        row = policies.save_policy(
            policy(
                *rules, name=name, repositories=[f"{name}/*"], schedule=schedule, enabled=enabled
            )
        )
        if hours:
            when = now - timedelta(hours=1) if due else now + timedelta(hours=1)
            RetentionPolicy.objects.filter(pk=row.pk).update(next_run_at=when)
        return row.pk

    due = stored("due", hours=6)
    stored("paused", hours=6, enabled=False)
    stored("later", hours=6, due=False)
    stored("manual", hours=None)

    results = runs.run_due_policies(now, client_for=lambda registry: registry_client)
    again = runs.run_due_policies(now, client_for=lambda registry: registry_client)

    assert [r.record.policy_name for r in results] == ["due"]
    assert again == []
    assert RetentionPolicy.objects.get(pk=due).next_run_at == now + timedelta(hours=6)
    assert RetentionRun.objects.count() == 1


def test_saving_a_schedule_makes_the_first_run_one_period_later(db, now):
    rules = ({"keep": "always"},)
    row = policies.save_policy(policy(*rules, schedule={"every_hours": 12}), now=now)
    assert row.next_run_at == now + timedelta(hours=12)

    unchanged = policies.save_policy(
        policy(*rules, schedule={"every_hours": 12}), original=row, now=now + timedelta(hours=5)
    )
    assert unchanged.next_run_at == now + timedelta(hours=12)

    off = policies.save_policy(policy(*rules), original=row)
    assert off.next_run_at is None


def test_a_stored_policy_that_no_longer_reads_fails_its_scheduled_run_and_deletes_nothing(
    registry_client, db, now
):
    row = policies.save_policy(policy({"keep": "always"}, schedule={"every_hours": 1}))
    RetentionPolicy.objects.filter(pk=row.pk).update(
        rules=[{"keep": "bogus"}], next_run_at=now - timedelta(minutes=5)
    )

    [result] = runs.run_due_policies(now, client_for=lambda registry: registry_client)

    assert result.record.outcome == RetentionRun.Outcome.FAILED
    assert result.record.message == (
        "Nothing was deleted: the stored policy is not valid: rules[0].keep: unknown keep "
        'kind "bogus"; use one of always, latest_pushed, latest_pulled, pushed_within, '
        "pulled_within"
    )
    assert RetentionPolicy.objects.get().next_run_at == now + timedelta(hours=1)
