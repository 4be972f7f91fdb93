"""`manage.py apply_retention` and `manage.py retention_policy`, against a real registry."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from devtools.pusher import random_layer
from hubimages.deletion import planning
from hubimages.lib import formatting
from hubimages.models import DeletionRecord, Manifest, Repository, RetentionPolicy, RetentionRun

POLICY = {
    "name": "ci-cleanup",
    "registries": ["*"],
    "repositories": ["team/**", "!team/golden"],
    "rules": [
        {"keep": "always", "tags": ["v*"]},
        {"keep": "latest_pushed", "count": 1, "tags": ["main-*"], "group_by": "^(main)-"},
    ],
}


def call(name: str, *args: str, stdin: io.StringIO | None = None, monkeypatch=None):
    out, err = io.StringIO(), io.StringIO()
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", stdin)
    call_command(name, *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.fixture
def policy_file(tmp_path):
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(POLICY))
    return str(path)


@pytest.fixture
def teams(pusher, sync, registry_url):
    """team/app and team/web, each with a release, two main builds and an old index;
    team/golden, which the policy leaves alone."""
    now = timezone.now()
    pushed = {}
    for name in ("team/app", "team/web", "team/golden"):
        amd = pusher.push_image(name, layers=[random_layer(2_000, f"{name}-amd")])
        pushed[name] = {
            "release": pusher.push_image(name, tag="v1", layers=[random_layer(900, f"{name}-v1")]),
            "main-1": pusher.push_image(
                name, tag="main-1", layers=[random_layer(800, f"{name}-1")]
            ),
            "main-2": pusher.push_image(
                name, tag="main-2", layers=[random_layer(700, f"{name}-2")]
            ),
            "index": pusher.push_index(name, tag="old", images=[amd]),
        }
    sync()
    for name, images in pushed.items():
        for days, key in enumerate(("main-2", "main-1", "index", "release"), start=1):
            Manifest.objects.filter(repository__name=name, digest=images[key].digest).update(
                pushed_at=now - timedelta(days=days), pushed_at_estimated=False
            )
    return pushed


def test_dry_run_json_prints_spec_8s_object_with_delete_images_plans(teams, policy_file):
    out, _ = call("apply_retention", policy_file, "--dry-run", "--json")

    printed = json.loads(out)
    assert list(printed) == ["policy", "now", "repositories", "reclaimable_bytes"]
    assert printed["policy"] == "ci-cleanup"
    now = formatting.iso(timezone.now().replace(microsecond=0))
    assert printed["now"][:16] == now[:16] and printed["now"].endswith("Z")
    assert [r["repository"] for r in printed["repositories"]] == ["team/app", "team/web"]
    selections = {}
    for entry in printed["repositories"]:
        assert list(entry) == ["registry", "repository", "selected", "plan"]
        images = teams[entry["repository"]]
        assert entry["selected"] == [images["index"].digest, images["main-1"].digest]
        # `plan` is exactly what delete_images --dry-run --json prints for those digests.
        plan_out, _ = call(
            "delete_images", entry["repository"], *entry["selected"], "--dry-run", "--json"
        )
        assert entry["plan"] == json.loads(plan_out)
        selections[Repository.objects.get(name=entry["repository"])] = entry["selected"]
    # The whole run's bytes: the plan of every repository's selection together, which
    # counts the blobs that only deleted items of several repositories share.
    together = planning.plan_deletions(selections)
    assert printed["reclaimable_bytes"] == together.reclaimable_bytes
    assert printed["reclaimable_bytes"] >= sum(
        entry["plan"]["reclaimable_bytes"] for entry in printed["repositories"]
    )
    assert not DeletionRecord.objects.exists()


def test_the_readable_dry_run_says_what_goes_what_stays_and_why(teams, policy_file):
    out, _ = call("apply_retention", policy_file, "--dry-run")

    assert "Policy ci-cleanup, as of " in out
    assert "  rule 2: keep latest 1 of each group of ^(main)- — tags main-*" in out
    assert "team/app: 2 of 4 top-level items go" in out
    assert "v1: kept by rule 1: always" in out
    assert "main-2: kept by rule 2: latest 1 of group main" in out
    assert "(a scheduled run would stop here: 50% of the items" not in out  # 2 of 4 is not more
    assert "In total: 6 manifests and 4 tags; reclaims" in out


def test_repository_narrows_the_run_and_must_be_covered(teams, policy_file):
    out, _ = call("apply_retention", policy_file, "--repository", "team/web", "--dry-run", "--json")
    assert [r["repository"] for r in json.loads(out)["repositories"]] == ["team/web"]

    with pytest.raises(CommandError, match="policy ci-cleanup does not cover team/golden"):
        call("apply_retention", policy_file, "--repository", "team/golden", "--dry-run")


def test_it_refuses_to_delete_without_yes_when_no_one_can_answer(
    teams, policy_file, monkeypatch, pusher
):
    with pytest.raises(CommandError, match="standard input is not a terminal; pass --yes"):
        call("apply_retention", policy_file, stdin=io.StringIO(""), monkeypatch=monkeypatch)

    assert pusher.list_tags("team/app") == ["main-1", "main-2", "old", "v1"]
    assert not RetentionRun.objects.exists()


def test_a_no_at_the_prompt_deletes_nothing(teams, policy_file, monkeypatch, pusher):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    _, err = call("apply_retention", policy_file, stdin=Terminal("n\n"), monkeypatch=monkeypatch)

    assert "Delete 6 manifests from 2 repositories and reclaim" in err
    assert "Nothing deleted." in err
    assert pusher.list_tags("team/app") == ["main-1", "main-2", "old", "v1"]


def test_yes_runs_the_dry_run_it_showed_and_records_it(teams, policy_file, pusher):
    out, _ = call("apply_retention", policy_file, "--yes", "--json")

    report = json.loads(out)
    assert report["outcome"] == "done"
    assert [(r["repository"], r["deleted"]) for r in report["repositories"]] == [
        ("team/app", 3),
        ("team/web", 3),
    ]
    for name in ("team/app", "team/web"):
        assert pusher.list_tags(name) == ["main-2", "v1"]
    assert pusher.list_tags("team/golden") == ["main-1", "main-2", "old", "v1"]
    record = RetentionRun.objects.get()
    assert (record.trigger, record.policy, record.started_by[:4]) == ("command", None, "cli:")
    assert report["reclaimed_bytes"] == record.reclaimed_bytes == record.planned_bytes
    assert set(DeletionRecord.objects.values_list("username", flat=True)) == {
        f"{record.started_by} · policy ci-cleanup"
    }


def test_an_invalid_policy_file_names_every_problem(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(
        json.dumps({"name": "p", "rules": [{"keep": "newest"}, {"keep": "always", "colour": 1}]})
    )

    with pytest.raises(CommandError) as error:
        call("apply_retention", str(path), "--dry-run")

    assert str(error.value) == (
        f"{path} is not a valid policy:\n"
        '  rules[0].keep: unknown keep kind "newest"; use one of always, latest_pushed, '
        "latest_pulled, pushed_within, pulled_within\n"
        "  rules[1].colour: unknown field; a rule has keep, count, days, tags, exclude_tags, "
        "untagged, group_by"
    )
    with pytest.raises(CommandError, match="cannot read .*missing.json: No such file"):
        call("apply_retention", str(tmp_path / "missing.json"), "--dry-run")


def test_policies_import_and_export_as_the_same_json(policy_file, db, tmp_path):
    out, _ = call("retention_policy", "import", policy_file)
    assert out == "Stored policy ci-cleanup.\n"
    with pytest.raises(CommandError, match="exists already: pass --replace"):
        call("retention_policy", "import", policy_file)

    exported, _ = call("retention_policy", "export", "ci-cleanup")

    assert json.loads(exported) == {
        **POLICY,
        "max_delete_fraction": 0.5,
        "schedule": None,
        "enabled": True,
    }
    changed = tmp_path / "changed.json"
    changed.write_text(exported.replace('"enabled": true', '"enabled": false'))
    call("retention_policy", "import", str(changed), "--replace")
    assert RetentionPolicy.objects.get().enabled is False
    listed, _ = call("retention_policy", "list")
    assert listed == "ci-cleanup  (no schedule, paused)\n"
    with pytest.raises(CommandError, match="no policy named nope"):
        call("retention_policy", "export", "nope")


def test_an_exported_stored_policy_runs_from_standard_input_and_its_run_shows_as_its_own(
    teams, policy_file, monkeypatch, pusher
):
    call("retention_policy", "import", policy_file)
    exported, _ = call("retention_policy", "export", "ci-cleanup")

    dry, _ = call(
        "apply_retention",
        "-",
        "--dry-run",
        "--json",
        stdin=io.StringIO(exported),
        monkeypatch=monkeypatch,
    )
    call("apply_retention", "-", "--yes", stdin=io.StringIO(exported), monkeypatch=monkeypatch)

    assert [r["repository"] for r in json.loads(dry)["repositories"]] == ["team/app", "team/web"]
    assert RetentionRun.objects.get().policy == RetentionPolicy.objects.get()
    assert pusher.list_tags("team/web") == ["main-2", "v1"]
