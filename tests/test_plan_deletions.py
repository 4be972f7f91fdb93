"""`deletion.plan_deletions` plans several repositories at once (a retention run's dry run):
each plan must be exactly what `plan_deletion` gives for that repository alone, however
many ids the queries carry, and the set's bytes are the union's."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from hubimages.deletion import planning
from hubimages.lib import queries
from hubimages.models import Manifest, Repository
from tests.builders import finish, manifest

WHEN = datetime(2026, 1, 1, tzinfo=UTC)


def build(name: str, images: int) -> tuple[Repository, list[str]]:
    """Two indexes sharing a child (the same digests in every repository built), a tagged
    child, and `images` loose images that share a layer with the other repositories."""
    repo = Repository.objects.create(name=name)
    shared = manifest(repo, "shared-child", pushed_at=WHEN, size=700)
    own = manifest(repo, "own-child", pushed_at=WHEN, size=800)
    tagged = manifest(repo, "tagged-child", pushed_at=WHEN, size=900, tags=["child-tag"])
    first = manifest(
        repo, "index-1", pushed_at=WHEN, kind="index", tags=["v1"], children=[own, shared, tagged]
    )
    second = manifest(repo, "index-2", pushed_at=WHEN, kind="index", children=[shared])
    loose = [
        manifest(repo, f"{name}-loose-{i}", pushed_at=WHEN, size=100 + i, tags=[f"b{i}"])
        for i in range(images)
    ]
    manifest(repo, "everywhere", pushed_at=WHEN, size=5_000, tags=["keep"])
    finish(repo)
    return repo, [second.digest, first.digest, *(m.digest for m in loose)]


@pytest.mark.parametrize("many", [0, 10_000])
def test_plans_made_together_are_each_repositorys_own(db, monkeypatch, many):
    monkeypatch.setattr(queries, "MANY", many)  # ids as one parameter, or as an IN list
    a, a_digests = build("team/a", 80)
    b, b_digests = build("team/b", 5)
    c = Repository.objects.create(name="team/c")
    selections = {a: a_digests, b: b_digests[:1] + ["sha256:" + "0" * 64], c: []}

    together = planning.plan_deletions(selections)

    for repository, digests in selections.items():
        alone = planning.plan_deletion(repository=repository, digests=digests)
        assert together.plans[repository.pk] == alone, repository.name
    assert [r.reason for r in together.plans[b.pk].refused] == ["not in repository team/b"]
    # The repositories' deleted items share no blob, so the set frees what its plans add up
    # to (what only several repositories' deleted items share: the next test).
    assert together.reclaimable_bytes == sum(p.reclaimable_bytes for p in together.plans.values())
    assert together.reclaimable_bytes > 0


def test_a_blob_only_two_repositories_plans_use_counts_in_the_set_not_in_either(db):
    a, b = Repository.objects.create(name="a"), Repository.objects.create(name="b")
    in_a = manifest(a, "same-image", pushed_at=WHEN, size=4_000)  # one layer, both repos
    in_b = manifest(b, "same-image", pushed_at=WHEN, size=4_000)
    finish(a), finish(b)

    together = planning.plan_deletions({a: [in_a.digest], b: [in_b.digest]})

    assert together.plans[a.pk].reclaimable_bytes == 0
    assert together.plans[b.pk].reclaimable_bytes == 0
    assert together.reclaimable_bytes == 4_000
    assert Manifest.objects.filter(digest=in_a.digest).count() == 2
