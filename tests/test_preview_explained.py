"""The delete preview explains its figure (issue 13): what each item frees on its own, what
the rest of it is shared with, and the guard rails (recently pulled, `latest`, signatures, active
items needing a second tick, refused by the server too), against a real registry."""

from __future__ import annotations

import re
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.utils import timezone

from devtools.pusher import random_layer
from devtools.worker import run_tasks
from hubimages.deletion import planning, preview
from hubimages.lib.formatting import human_size, short_digest
from hubimages.models import Job, Manifest, Repository
from hubimages.web import deletion

REPO = "acme/shop"
LIST = f"/r/default/{REPO}/"
PREVIEW = f"{LIST}-/delete/"
EXECUTE = f"{LIST}-/delete/confirm"
OLD = timedelta(days=400)


@pytest.fixture
def shop(pusher, sync):
    """Two old builds sharing a big base layer with `stable`, which stays; a signed release
    tagged `latest`, pulled minutes ago."""
    base = random_layer(30_000, "base")
    one = pusher.push_image(REPO, tag="1.0", layers=[base, random_layer(2_000, "one")])
    two = pusher.push_image(REPO, tag="1.1", layers=[base, random_layer(3_000, "two")])
    stable = pusher.push_image(REPO, tag="stable", layers=[base, random_layer(900, "stable")])
    release = pusher.push_image(REPO, tag="2.0", layers=[random_layer(5_000, "release")])
    pusher.tag(REPO, "latest", release)
    signature = pusher.push_cosign_signature(REPO, release)
    sync()
    now = timezone.now()
    Manifest.objects.filter(digest__in=[one.digest, two.digest]).update(
        pushed_at=now - OLD, last_pulled_at=None
    )
    Manifest.objects.filter(digest=release.digest).update(last_pulled_at=now - timedelta(minutes=3))
    return SimpleNamespace(
        one=one, two=two, stable=stable, release=release, signature=signature, base=base
    )


def plan_for(*manifests) -> planning.DeletionPlan:
    repository = Repository.objects.get(name=REPO)
    return planning.plan_deletion(repository=repository, digests=[m.digest for m in manifests])


def row_of(page: str, digest: str) -> str:
    return re.search(rf'<tr class="delete-item" data-digest="{digest}">.*?</tr>', page, re.S)[0]


def test_each_item_frees_only_its_own_layers_and_names_what_shares_the_rest(shop, deleter_client):
    page = deleter_client.post(PREVIEW, {"digest": [shop.one.digest, shop.two.digest]})
    page = page.content.decode()
    plan = plan_for(shop.one, shop.two)

    one = row_of(page, shop.one.digest)
    # Its own layer, config and manifest bytes; the base layer is `stable`'s too.
    own = 2_000 + shop.one.config_size + len(shop.one.body)
    assert (
        f'<td class="frees-cell" data-bytes="{own}" data-manifest-bytes="{len(shop.one.body)}">'
        in one
    )
    assert f'title="{own:,} bytes">{human_size(own)}</span>' in one
    assert f'{human_size(30_000)}</span> shared with <code title="1.1">' not in one  # goes too
    assert re.search(
        rf"{re.escape(human_size(30_000))}</span> shared with <code title=\"stable\">stable</code>",
        one,
    )
    # Two rows of about 32 kB reclaim only what is their own: the parts add up to the total.
    sharing = preview.plan_sharing(plan)
    assert sharing.total == plan.reclaimable_bytes
    assert sharing.frees_alone == own + 3_000 + shop.two.config_size + len(shop.two.body)
    # Each selected item is a group: its Frees on its card, the groups adding up to the total,
    # and the base layer that `stable` keeps said once on top.
    assert sharing.groups[shop.one.digest].frees == own
    assert sharing.groups_frees + sharing.shared_among_groups == plan.reclaimable_bytes
    assert sharing.shared_among_groups == 0 and "several of them share" not in page
    assert f'<strong class="group-frees" data-bytes="{own}">' in page
    assert sharing.kept_shared == 30_000
    assert '<span class="kept-shared" data-bytes="30000">' in page


def test_what_shares_a_layer_is_named_by_tags_and_platform_not_by_a_digest(
    shop, pusher, sync, deleter_client
):
    """An untagged image inside a tagged index is named by that index's tag and its
    platform ("Shared with sha256:f7f9c6f60582" meant nothing to anyone); an untagged image
    of its own by digest and platform; one in another repository with its repository."""
    layers = [random_layer(12_000 - n * 1_000, f"shared-{n}") for n in range(3)]
    arm = pusher.push_image(
        REPO, layers=[layers[0], random_layer(900, "arm")], architecture="arm64", variant="v8"
    )
    pusher.push_index(REPO, tag="multi", images=[arm])
    loose = pusher.push_image(REPO, tag="next", layers=[random_layer(800, "loose"), layers[1]])
    elsewhere = pusher.push_image(
        "acme/other", tag="next", layers=[layers[2], random_layer(700, "x")], architecture="s390x"
    )
    sync()  # seen while tagged, then left untagged by a newer `next`
    for repository in (REPO, "acme/other"):
        pusher.push_image(repository, tag="next", layers=[random_layer(500, repository)])
    old = pusher.push_image(REPO, tag="old", layers=[*layers, random_layer(600, "old")])
    sync()

    page = deleter_client.post(PREVIEW, {"digest": old.digest}).content.decode()

    note = row_of(page, old.digest)
    names = re.findall(r"<code title=\"[^\"]+\">([^<]+)</code>", note[note.index("shared with") :])
    assert names == [
        "multi · linux/arm64/v8",  # the biggest shared layer first
        f"{short_digest(loose.digest)} · linux/amd64",
        f"acme/other@{short_digest(elsewhere.digest)} · linux/s390x",
    ]


def test_bytes_only_the_deleted_items_share_are_counted_once_and_said_so(
    shop, pusher, sync, deleter_client
):
    """Delete `stable` too and nothing keeps the base layer: it is freed once, with them."""
    plan = plan_for(shop.one, shop.two, shop.stable)
    page = deleter_client.post(PREVIEW, {"digest": [m.digest for m in (shop.one, shop.two)]})
    assert "shared with other items deleted here" not in page.content.decode()

    page = deleter_client.post(
        PREVIEW, {"digest": [m.digest for m in (shop.one, shop.two, shop.stable)]}
    ).content.decode()

    sharing = preview.plan_sharing(plan)
    assert sharing.shared_among_items == 30_000
    assert sharing.total == plan.reclaimable_bytes
    # On top: the three cards' Frees plus the base layer all three share, once.
    assert sharing.shared_among_groups == 30_000
    assert sharing.groups_frees + 30_000 == plan.reclaimable_bytes
    assert (
        f'= <span class="size" title="{sharing.groups_frees:,} bytes">'
        f"{human_size(sharing.groups_frees)}</span> that the selected items free, each with "
        f'what goes with it (below), + <span class="size" title="30,000 bytes">'
    ) in page
    assert f'<strong class="group-frees" data-bytes="{sharing.groups[shop.one.digest].frees}">' in (
        page
    )
    assert "shared with other items deleted here: freed once, in the total" in row_of(
        page, shop.one.digest
    )
    assert f'title="{plan.reclaimable_bytes:,} bytes" data-bytes="{plan.reclaimable_bytes}"' in page


def test_the_preview_flags_what_was_recently_pulled_tagged_latest_or_a_signature(
    shop, deleter_client
):
    page = deleter_client.post(PREVIEW, {"digest": shop.release.digest}).content.decode()

    release, signature = row_of(page, shop.release.digest), row_of(page, shop.signature.digest)
    assert '<span class="badge badge-recent guard">recently pulled: 3\xa0min ago</span>' in release
    assert '<span class="badge badge-guard guard">tag latest</span>' in release
    assert '<span class="badge badge-guard guard">signature</span>' in signature
    guard_rails = re.search(r'<section class="guard-rails".*?</section>', page, re.S)[0]
    assert (
        '1 item recently pulled: in the last 30 days (<span class="tag" title="2.0">2.0</span> 3'
        in guard_rails
    )
    assert 'The tag <span class="tag">latest</span> goes' in guard_rails
    assert "1 signature will go" in guard_rails
    assert "2 items are not stale" in guard_rails
    assert (
        '<input type="checkbox" name="confirm_active" value="yes" required> Also delete 2 active '
        "items: pushed or pulled in the last 6 months (1 pulled in the last 30 days)."
    ) in page


def test_stale_items_alone_need_no_second_tick_and_raise_no_flag(shop, deleter_client):
    page = deleter_client.post(PREVIEW, {"digest": shop.one.digest}).content.decode()

    assert 'name="confirm_active"' not in page and "guard-rails" not in page
    assert preview.guard_rails(plan_for(shop.one)) == {}


def test_deleting_an_active_item_without_the_second_tick_deletes_nothing(
    shop, deleter_client, registry_client
):
    plan = plan_for(shop.release)
    fields = {"digest": shop.release.digest, "fingerprint": plan.fingerprint, "confirm": "yes"}

    refused = deleter_client.post(EXECUTE, fields)
    run_tasks()

    assert refused.status_code == 422
    assert deletion.ACTIVE_UNCONFIRMED in refused.content.decode()
    assert not Job.objects.exists()
    assert registry_client.head_manifest(REPO, shop.release.digest) is not None

    started = deleter_client.post(EXECUTE, {**fields, "confirm_active": "yes"})
    run_tasks()

    assert started.status_code == 303
    assert registry_client.head_manifest(REPO, shop.release.digest) is None


def test_the_total_and_delete_forever_sit_in_the_dialogs_sticky_footer(shop, deleter_client):
    plan = plan_for(shop.one)
    page = deleter_client.post(
        PREVIEW, {"digest": shop.one.digest}, headers={"HX-Request": "true"}
    ).content.decode()

    footer = re.search(r'<form class="confirm-delete sticky-footer".*?</form>', page, re.S)[0]
    assert f'Frees <strong class="footer-frees" title="{plan.reclaimable_bytes:,} bytes">' in (
        footer
    )
    assert ">Delete forever</button>" in footer


def test_the_preview_says_signature_not_referrer_nor_artifact(shop, deleter_client):
    page = deleter_client.post(PREVIEW, {"digest": shop.release.digest}).content.decode()

    signature = row_of(page, shop.signature.digest)
    assert '<td class="col-type">Signature</td>' in signature
    assert '<td class="col-because">signature of the selected image\n' in signature
    platform = '<bdi class="platform">linux/amd64</bdi>'
    assert f'<p class="group-words">{platform} · with 1 signature' in page
    assert "Artifact" not in page and "eferrer" not in page
    assert short_digest(shop.signature.digest) in page
