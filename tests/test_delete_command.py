"""`manage.py delete_images`: the plan from the command line, against a real registry."""

import getpass
import io
import json
import sys

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from devtools.pusher import random_layer
from hubimages.models import DeletionRecord, Manifest, Repository

REPO = "team/cli"


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("delete_images", REPO, *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


class Terminal(io.StringIO):
    """Standard input as a person at a terminal would give it."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def pushed(pusher, sync, registry_url):
    amd64 = pusher.push_image(REPO, layers=[random_layer(2_000, "amd64")])
    arm64 = pusher.push_image(REPO, layers=[random_layer(2_000, "arm64")], architecture="arm64")
    index = pusher.push_index(REPO, tag="v1", images=[amd64, arm64])
    pusher.push_index(REPO, tag="stable", images=[arm64])
    loose = pusher.push_image(REPO, tag="loose", layers=[random_layer(3_000, "loose")])
    pusher.tag(REPO, "latest", loose)
    sync()
    return {"amd64": amd64, "arm64": arm64, "index": index, "loose": loose}


def test_dry_run_json_prints_the_stable_shape_and_deletes_nothing(pushed, pusher):
    index = pushed["index"]

    out, _ = run(index.hex[:12], "--dry-run", "--json")  # a unique prefix is enough

    plan = json.loads(out)
    assert list(plan) == ["delete", "keep", "tags_removed", "reclaimable_bytes"]
    assert plan["delete"] == [
        {
            "digest": index.digest,
            "kind": "index",
            "tags": ["v1"],
            "size": plan["delete"][0]["size"],
            "because": "selected",
        },
        {
            "digest": pushed["amd64"].digest,
            "kind": "image",
            "tags": [],
            "size": pushed["amd64"].config_size + 2_000,
            "because": f"only used by index sha256:{index.hex[:12]}",
        },
    ]
    stable = Manifest.objects.get(repository__name=REPO, tags__name="stable").digest
    assert plan["keep"] == [
        {
            "digest": pushed["arm64"].digest,
            "reason": f"used by index sha256:{stable[7:19]}, which stays",
        }
    ]
    assert plan["tags_removed"] == ["v1"]
    assert plan["reclaimable_bytes"] == (
        index.size + pushed["amd64"].size + pushed["amd64"].config_size + 2_000
    )
    assert pusher.list_tags(REPO) == ["latest", "loose", "stable", "v1"]


def test_it_refuses_to_delete_without_yes_when_no_one_can_answer(pushed, pusher, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))  # piped, not a terminal

    with pytest.raises(CommandError, match="not a terminal; pass --yes"):
        run(pushed["loose"].digest)

    assert pusher.list_tags(REPO) == ["latest", "loose", "stable", "v1"]
    assert not DeletionRecord.objects.exists()


def test_it_asks_at_a_terminal_and_a_no_deletes_nothing(pushed, pusher, monkeypatch):
    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))

    loose = pushed["loose"]

    out, err = run(loose.digest)

    assert "loose" in out
    reclaim = (loose.size + loose.config_size + 3_000) / 1000
    assert f"Delete 1 manifests and reclaim {reclaim:.1f} kB? [y/N] " in err
    assert "Nothing deleted." in err
    assert pusher.list_tags(REPO) == ["latest", "loose", "stable", "v1"]


def test_yes_deletes_and_records_the_operating_system_user(pushed, pusher):
    loose = pushed["loose"]

    out, _ = run(f"sha256:{loose.hex}", pushed["index"].hex, "--yes")

    assert f"deleted  {loose.digest}  image" in out
    assert "Deleted 3 manifests" in out
    assert pusher.list_tags(REPO) == ["stable"]
    records = DeletionRecord.objects.order_by("id")
    assert {r.username for r in records} == {f"cli:{getpass.getuser()}"}
    assert [r.digest for r in records if r.tags] == [loose.digest, pushed["index"].digest]
    assert records.get(digest=loose.digest).tags == ["latest", "loose"]


def test_a_refused_selection_is_an_error_with_its_reason(pushed, pusher):
    with pytest.raises(CommandError, match="which stays — delete the index instead"):
        run(pushed["amd64"].digest, "--dry-run", "--json")


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("abc123", "too short: give at least 12 hex digits"),
        ("sha256:zzzzzzzzzzzzzz", "is not a digest"),
        ("sha256:" + "f" * 64, "no manifest sha256:ffff"),
        ("ab12ab12ab12", "ambiguous in team/cli: it matches sha256:ab12ab12ab12"),
    ],
)
def test_a_digest_it_cannot_pin_down_is_a_clear_error(db, reference, message):
    repository = Repository.objects.create(name=REPO)
    now = timezone.now()
    for digest in ("sha256:ab12ab12ab12" + "0" * 52, "sha256:ab12ab12ab12" + "1" * 52):
        Manifest.objects.create(
            repository=repository,
            digest=digest,
            media_type="application/vnd.oci.image.manifest.v1+json",
            kind="image",
            size=10,
            first_seen_at=now,
            pushed_at=now,
        )

    with pytest.raises(CommandError, match=message):
        run(reference, "--dry-run")
