"""Preview and delete in the web UI (SPEC §4), against a real registry: the preview, the
permission and CSRF walls, "Delete forever" pinned to the previewed plan, what the user is
told when the registry changed, is busy, unreachable or fails, and the deletion history."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
import responses
from django.db import connection
from django.test.utils import CaptureQueriesContext

from devtools.pusher import random_layer
from devtools.worker import run_tasks
from hubimages.deletion import planning
from hubimages.jobs import runner
from hubimages.lib import leases
from hubimages.lib.formatting import human_size, short_digest
from hubimages.models import Deletion, DeletionRecord, Job, Manifest, Repository
from hubimages.web import images
from registry.client import RegistryClient

REPO = "acme/shop"
LIST = f"/r/default/{REPO}/"
PREVIEW = f"{LIST}-/delete/"
EXECUTE = f"{LIST}-/delete/confirm"
HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def shop(pusher, sync):
    """A tagged multi-arch release (one image attested, the other also tagged on its own),
    an old build and a stable one; the old build and `stable` share a base layer."""
    base = random_layer(3_000, "base")
    amd = pusher.push_image(REPO, layers=[random_layer(2_000, "amd")])
    arm = pusher.push_image(
        REPO, tag="arm-only", layers=[random_layer(1_500, "arm")], architecture="arm64"
    )
    release = pusher.push_index(REPO, tag="2.0", images=[amd, arm], attestations=[amd])
    pusher.tag(REPO, "latest", release)
    old = pusher.push_image(REPO, tag="1.9", layers=[base, random_layer(1_000, "old")])
    stable = pusher.push_image(REPO, tag="stable", layers=[base, random_layer(900, "stable")])
    sync()
    return SimpleNamespace(
        release=release, amd=amd, arm=arm, attestation=release.children[2], old=old, stable=stable
    )


def plan_for(*digests: str) -> planning.DeletionPlan:
    return planning.plan_deletion(repository=Repository.objects.get(name=REPO), digests=digests)


def form_fields(page: str) -> dict[str, list[str]]:
    """The hidden fields of the "Delete forever" form, as the browser would send them."""
    form = re.search(r'<form class="confirm-delete[^"]*".*?</form>', page, re.S)
    assert form, "no Delete forever form"
    fields: dict[str, list[str]] = {}
    for name, value in re.findall(
        r'<input type="hidden" name="(\w+)" value="([^"]*)"', form.group(0)
    ):
        fields.setdefault(name, []).append(html.unescape(value))
    return fields


def confirmed(page: str) -> dict[str, list[str]]:
    """The form as sent once both boxes are ticked (freshly pushed items are active, so
    the preview asks for the second one too)."""
    return {**form_fields(page), "confirm": ["yes"], "confirm_active": ["yes"]}


def in_registry(client: RegistryClient, *manifests) -> set[str]:
    return {m.digest for m in manifests if client.head_manifest(REPO, m.digest) is not None}


def in_database() -> set[str]:
    return set(Manifest.objects.filter(repository__name=REPO).values_list("digest", flat=True))


# -- the preview -------------------------------------------------------------------------------


def test_the_preview_lists_what_goes_what_stays_the_tags_and_the_exact_bytes(shop, deleter_client):
    response = deleter_client.get(PREVIEW, {"digest": [shop.release.digest, shop.old.digest]})

    assert response.status_code == 200
    page = response.content.decode()
    plan = plan_for(shop.release.digest, shop.old.digest)
    listed = re.findall(r'<tr class="delete-item" data-digest="(sha256:\w+)">', page)
    assert listed == [item.digest for item in plan.delete]
    assert set(listed) == {
        shop.release.digest,
        shop.amd.digest,
        shop.attestation.digest,
        shop.old.digest,
    }
    # Grouped under what was selected, in the order selected, each with why it goes.
    release_group = page.index(f'<h2 id="group-1">Image index <code title="{shop.release.digest}"')
    old_group = page.index(f'<h2 id="group-2">Image <code title="{shop.old.digest}"')
    assert release_group < page.index(f'data-digest="{shop.amd.digest}"') < old_group
    assert (
        '<td class="col-because">image of the selected image index, which nothing that stays '
        "uses\n" in page
    )
    assert not any("sha256:" in why for why in re.findall(r'"col-because">([^<]*)', page))
    assert page.count('<td class="col-because">selected\n') == 2
    assert (
        '<td class="col-type">Attestation</td>' in page
        and '<td class="col-platform"><bdi class="platform">unknown/unknown</bdi></td>' in page
    )
    assert '<td class="col-platform"><bdi class="platform">linux/amd64</bdi></td>' in page
    # The tags that disappear, per manifest and in total.
    assert plan.tags_removed == ("1.9", "2.0", "latest")
    assert '<span class="tag" title="latest">latest</span>' in page
    assert "<dt>Tags</dt><dd>3 " in page and "<dt>Manifests</dt><dd>4</dd>" in page
    # Kept, with the reason: the arm64 image has its own tag.
    assert re.search(
        rf'<li class="kept-item" data-digest="{shop.arm.digest}">.*?Image: has its own tag '
        r"arm-only</li>",
        page,
    )
    assert shop.stable.digest not in page
    # The storage reclaimed: exactly the planner's figure (the shared base layer stays).
    assert 0 < plan.reclaimable_bytes < sum(item.size for item in plan.delete)
    assert (
        f'title="{plan.reclaimable_bytes:,} bytes" data-bytes="{plan.reclaimable_bytes}">'
        f"{human_size(plan.reclaimable_bytes)}</strong>"
    ) in page
    assert "garbage collector runs" in page and "--delete-untagged" in page
    # Delete forever: pinned to this plan, after a named confirmation.
    assert form_fields(page) == {
        "csrfmiddlewaretoken": form_fields(page)["csrfmiddlewaretoken"],
        "digest": [shop.release.digest, shop.old.digest],
        "fingerprint": [plan.fingerprint],
    }
    assert (
        '<input type="checkbox" name="confirm" value="yes" required> I understand that '
        "4 manifests and 3 tags will be deleted forever, reclaiming "
        f"{human_size(plan.reclaimable_bytes)}."
    ) in page
    assert ">Delete forever</button>" in page
    assert f'action="{EXECUTE}"' in page and "hx-post" not in page  # a plain page, no JS needed
    # In plain words: the totals on top, each selected item with what goes with it, the
    # manifests folded under it; no "top-level", no "referrer".
    words = "with 1 image (linux/amd64), 1 attestation"
    assert page.index('<section class="delete-summary"') < release_group
    assert (
        "2 selected items go, and 2 more that go with them: 1 image (linux/amd64), 1 attestation."
        in page
    )
    assert release_group < page.index(words) < page.index('<details class="cascade">')
    assert "nothing else goes with it" in page[old_group:]
    assert "top-level" not in page and "eferrer" not in page


def test_size_and_frees_differ_by_the_manifest_s_own_bytes_exactly(shop, deleter_client):
    """Size counts config and layers (SPEC §2), Frees what the collector frees (SPEC §4):
    the manifest's bytes too. An attestation that shares nothing frees exactly both."""
    page = deleter_client.get(PREVIEW, {"digest": shop.release.digest}).content.decode()
    attestation = next(i for i in plan_for(shop.release.digest).delete if i.kind == "attestation")
    manifest = len(shop.attestation.body)
    row = re.search(rf'data-digest="{attestation.digest}">.*?</tr>', page, re.S)[0]
    assert f'<td class="col-size" title="{attestation.size:,} bytes">' in row
    frees = attestation.size + manifest
    assert f'class="frees-cell" data-bytes="{frees}" data-manifest-bytes="{manifest}">' in row
    assert "its own manifest bytes included, which Size leaves out" in page


def test_htmx_gets_the_preview_as_a_dialog_for_the_panel(shop, deleter_client):
    response = deleter_client.get(PREVIEW, {"digest": shop.old.digest}, **HTMX)

    page = response.content.decode()
    assert response.status_code == 200
    assert page.lstrip().startswith(
        '<dialog class="panel panel-wide" aria-labelledby="delete-title"'
    )
    assert "<html" not in page
    assert f'hx-post="{EXECUTE}" hx-target="#panel"' in page
    assert re.search(  # Cancel clears the selection, then closes the dialog
        r'class="button cancel-delete" name="action" value="clear" formaction="[^"]+/-/selection/"'
        r'[^>]*hx-post="[^"]+/-/selection/" hx-target="#rows"[^>]*data-closes-dialog>Cancel<',
        page,
    )
    assert "HX-Request" in response["Vary"]


def test_a_refused_selection_shows_why_and_offers_no_delete_until_it_is_fixed(shop, deleter_client):
    response = deleter_client.get(PREVIEW, {"digest": [shop.amd.digest, shop.old.digest]})

    page = response.content.decode()
    assert response.status_code == 200
    assert "Cannot be deleted" in page
    assert (
        f"used by index {short_digest(shop.release.digest)}, which stays — "
        "delete the index instead or remove it from the index first"
    ) in page
    assert "Delete forever" not in page and 'name="fingerprint"' not in page
    # "Preview without it" posts the rest of the selection back to the preview.
    rest = re.search(
        r'<form class="inline-form" method="post" action="([^"]+)".*?</form>', page, re.S
    )
    assert rest.group(1) == PREVIEW
    assert re.findall(r'name="digest" value="([^"]+)"', rest.group(0)) == [shop.old.digest]
    assert "preview without it</button>" in rest.group(0)


def test_an_empty_selection_says_what_to_do(shop, deleter_client):
    page = deleter_client.get(PREVIEW).content.decode()

    assert "Nothing is selected" in page and "Delete forever" not in page


# -- who may delete ----------------------------------------------------------------------------


def test_people_without_the_permission_see_no_delete_controls_and_get_403(
    shop, viewer_client, registry_client
):
    listing = viewer_client.get(LIST).content.decode()
    assert "Preview and delete" not in listing and 'id="selected-count"' not in listing

    preview = viewer_client.get(PREVIEW, {"digest": shop.old.digest})
    plan = plan_for(shop.old.digest)
    post = viewer_client.post(
        EXECUTE, {"digest": shop.old.digest, "fingerprint": plan.fingerprint, "confirm": "yes"}
    )

    assert (preview.status_code, post.status_code) == (403, 403)
    assert in_registry(registry_client, shop.old) == {shop.old.digest}
    assert shop.old.digest in in_database()


def test_delete_refuses_get_and_posts_without_a_csrf_token(
    shop, deleter, client_factory, registry_client
):
    strict = client_factory(deleter, enforce_csrf_checks=True)
    plan = plan_for(shop.old.digest)

    get = strict.get(EXECUTE, {"digest": shop.old.digest, "fingerprint": plan.fingerprint})
    post = strict.post(
        EXECUTE, {"digest": shop.old.digest, "fingerprint": plan.fingerprint, "confirm": "yes"}
    )

    assert (get.status_code, post.status_code) == (405, 403)
    assert b"CSRF" in post.content
    assert in_registry(registry_client, shop.old) == {shop.old.digest}
    assert not DeletionRecord.objects.exists()


# -- Delete forever ----------------------------------------------------------------------------


def follow_job(web, response, **headers) -> str:
    """What a browser without JavaScript does after "Delete forever": a worker runs the
    job, then the job's page shows how it ended."""
    assert response.status_code == 303 and response["Location"].startswith("/jobs/")
    run_tasks()
    return web.get(response["Location"], **headers).content.decode()


def test_delete_forever_starts_a_job_that_deletes_the_plan_and_records_it(
    shop, deleter, client_factory, registry_client
):
    web = client_factory(deleter, enforce_csrf_checks=True)
    plan = plan_for(shop.release.digest, shop.old.digest)
    page = web.get(PREVIEW, {"digest": [shop.release.digest, shop.old.digest]}).content.decode()

    response = web.post(EXECUTE, confirmed(page))

    # The request only started the job: nothing is deleted until a worker runs it.
    everything = (shop.release, shop.amd, shop.arm, shop.attestation, shop.old, shop.stable)
    assert len(in_registry(registry_client, *everything)) == 6
    job = Job.objects.get()
    assert (job.kind, job.state, job.user, job.repository) == ("deletion", "queued", deleter, REPO)
    assert job.params["fingerprint"] == plan.fingerprint
    outcome = follow_job(web, response)

    gone = {item.digest for item in plan.delete}
    assert in_registry(registry_client, *everything) == {shop.arm.digest, shop.stable.digest}
    assert in_database() == {shop.arm.digest, shop.stable.digest}
    records = DeletionRecord.objects.all()
    assert {r.digest for r in records} == gone
    assert {(r.user, r.username, r.repository, r.state) for r in records} == {
        (deleter, "deleter", REPO, "done")
    }
    assert sum(r.reclaimed_bytes for r in records) == plan.reclaimable_bytes
    assert Deletion.objects.get().state == "done"
    assert "Succeeded" in outcome
    assert (
        f"Deleted 4 manifests and 3 tags; {human_size(plan.reclaimable_bytes)} "
        f"({plan.reclaimable_bytes:,} bytes) will be freed at the next garbage collection."
    ) in outcome
    listing = web.get(LIST).content.decode()
    assert shop.old.digest not in listing and shop.arm.digest in listing


def test_after_deleting_the_way_back_keeps_the_search_filter_and_sort_the_user_had(
    shop, deleter_client
):
    listing = deleter_client.get(LIST, {"filter": "image", "sort": "size", "search": "1"})
    back = re.search(r'name="back" value="([^"]*)"', listing.content.decode()).group(1)
    page = deleter_client.get(
        PREVIEW, {"digest": shop.old.digest, "back": html.unescape(back)}
    ).content.decode()

    outcome = follow_job(deleter_client, deleter_client.post(EXECUTE, confirmed(page)))

    back_link = f'href="{LIST}?search=1&amp;filter=image&amp;sort=size">Back to {REPO}</a>'
    assert back_link in outcome


def test_the_way_back_to_the_list_keeps_only_known_list_parameters(db):
    repository = Repository.objects.create(name=REPO)
    hostile = "?sort=;drop&filter=../../x&next=https://evil.example&search=<b>&per_page=7"
    assert images.list_url(repository, hostile) == f"{LIST}?search=%3Cb%3E"
    assert images.list_url(repository, "//evil.example/") == LIST


def test_with_htmx_the_dialog_follows_the_job_then_sends_the_browser_back_to_the_list(
    shop, deleter_client, registry_client
):
    page = deleter_client.get(PREVIEW, {"digest": shop.old.digest}, **HTMX).content.decode()

    started = deleter_client.post(EXECUTE, confirmed(page), **HTMX).content.decode()

    job = Job.objects.get()
    assert started.lstrip().startswith('<dialog class="panel" aria-labelledby="job-title"')
    poll = f'hx-get="/jobs/{job.pk}/?in=dialog" hx-trigger="every 1s"'
    assert poll in started and "Queued" in started
    still = deleter_client.get(f"/jobs/{job.pk}/", {"in": "dialog"}, **HTMX)
    assert still.status_code == 200 and poll in still.content.decode()
    run_tasks()
    done = deleter_client.get(f"/jobs/{job.pk}/", {"in": "dialog"}, **HTMX)
    assert done.status_code == 200 and done["HX-Redirect"] == LIST
    assert in_registry(registry_client, shop.old) == set()
    assert "Deleted 1 manifest and 1 tag;" in deleter_client.get(LIST).content.decode()


def test_a_tag_pushed_after_the_preview_deletes_nothing_and_offers_the_fresh_preview(
    shop, pusher, deleter_client, registry_client
):
    page = deleter_client.get(PREVIEW, {"digest": shop.old.digest}).content.decode()
    pusher.tag(REPO, "hotfix", shop.old)  # in the registry only: found by the worker's re-check

    outcome = follow_job(deleter_client, deleter_client.post(EXECUTE, confirmed(page)))

    job = Job.objects.get()
    assert job.state == "failed" and job.outcome["stale"]
    assert "The registry changed since your preview: nothing was deleted" in outcome
    assert "See the new preview</button>" in outcome
    assert job.outcome["plan"]["tags_removed"] == ["1.9", "hotfix"]
    assert job.outcome["plan"]["fingerprint"] == plan_for(shop.old.digest).fingerprint
    assert in_registry(registry_client, shop.old) == {shop.old.digest}
    assert pusher.list_tags(REPO).count("hotfix") == 1
    assert not DeletionRecord.objects.exists()
    assert Deletion.objects.get().state == "stale"


def test_a_plan_that_already_differs_in_the_database_starts_no_job(
    shop, pusher, deleter_client, sync
):
    page = deleter_client.get(PREVIEW, {"digest": shop.old.digest}).content.decode()
    pusher.tag(REPO, "hotfix", shop.old)
    sync(REPO)

    plain = deleter_client.post(EXECUTE, confirmed(page))
    htmx = deleter_client.post(EXECUTE, confirmed(page), **HTMX)

    for response in (plain, htmx):
        fresh = response.content.decode()
        assert response.status_code == 409
        assert (
            "The registry changed since your preview: nothing was deleted. Check the new preview."
        ) in fresh
        assert '<span class="tag" title="hotfix">hotfix</span>' in fresh
        assert form_fields(fresh)["fingerprint"] == [plan_for(shop.old.digest).fingerprint]
    assert "<html" in plain.content.decode()
    assert htmx.content.decode().lstrip().startswith("<dialog")
    assert not Job.objects.exists()


def test_a_delete_without_the_confirmation_ticked_deletes_nothing(
    shop, deleter_client, registry_client
):
    page = deleter_client.get(PREVIEW, {"digest": shop.old.digest}).content.decode()

    response = deleter_client.post(EXECUTE, form_fields(page))

    assert response.status_code == 422
    assert "Tick the box to confirm" in response.content.decode()
    assert in_registry(registry_client, shop.old) == {shop.old.digest}
    assert not Job.objects.exists()


def test_a_busy_repository_or_an_unreachable_registry_deletes_nothing_and_is_retried(
    shop, deleter_client, registry_server, registry_url, monkeypatch
):
    page = deleter_client.get(PREVIEW, {"digest": shop.old.digest}).content.decode()

    held = leases.acquire(leases.repository_lease_name(REPO), owner="sync")
    busy = follow_job(deleter_client, deleter_client.post(EXECUTE, confirmed(page)))
    leases.release(held)
    registry_server.stop()
    monkeypatch.setattr(
        runner, "registry_client", lambda *_: RegistryClient(registry_url, max_retries=0)
    )
    unreachable = follow_job(deleter_client, deleter_client.post(EXECUTE, confirmed(page)))

    first, second = Job.objects.order_by("pk")
    assert (first.state, second.state) == ("queued", "queued")
    assert "attempt 1 of 3 failed: repository acme/shop is busy: sync is working on it" in busy
    assert re.search(
        rf"attempt 1 of 3 failed: nothing was deleted: could not re-check {REPO} against the "
        r"registry: .*cannot reach.*; trying again at",
        unreachable,
    )
    assert shop.old.digest in in_database()
    assert not DeletionRecord.objects.exists()


def test_a_failing_delete_is_shown_with_the_registrys_message_beside_what_went(
    shop, deleter_client, registry_url, registry_client
):
    page = deleter_client.get(
        PREVIEW, {"digest": [shop.release.digest, shop.old.digest]}
    ).content.decode()
    response = deleter_client.post(EXECUTE, confirmed(page))

    with responses.RequestsMock() as mock:
        mock.add_passthru(registry_url)
        mock.add(
            responses.DELETE,
            f"{registry_url}/v2/{REPO}/manifests/{shop.release.digest}",
            status=500,
            json={"errors": [{"code": "UNKNOWN", "message": "storage <b>unavailable</b>"}]},
        )
        result = follow_job(deleter_client, response)

    assert "3 manifests not deleted" in result
    assert re.search(
        rf'<li data-digest="{shop.release.digest}">.*?<bdi class="registry-message">'
        r"registry answered 500 UNKNOWN .*?storage &lt;b&gt;unavailable&lt;/b&gt;</bdi>",
        result,
    )
    skipped = re.findall(r'<li data-digest="(sha256:\w+)">.*?kept because index', result)
    assert set(skipped) == {shop.amd.digest, shop.attestation.digest}
    assert re.findall(r'<tr class="outcome-deleted" data-digest="(sha256:\w+)">', result) == [
        shop.old.digest
    ]
    assert "Deleted 1 manifest and 1 tag;" in result
    assert in_registry(registry_client, shop.release, shop.old) == {shop.release.digest}
    assert in_database() == {
        shop.release.digest,
        shop.amd.digest,
        shop.arm.digest,
        shop.attestation.digest,
        shop.stable.digest,
    }
    assert Deletion.objects.get().state == "partial"


# -- the history -------------------------------------------------------------------------------


def record(n: int, *, repository: str = REPO, when: datetime) -> DeletionRecord:
    row = DeletionRecord.objects.create(
        username=f"user{n}",
        repository=repository,
        digest=f"sha256:{n:064x}",
        kind="image",
        tags=[f"v{n}", "<b>x</b>"],
        size=1000 * n,
        reclaimed_bytes=500 * n,
    )
    DeletionRecord.objects.filter(pk=row.pk).update(deleted_at=when)
    return row


def test_the_history_lists_deletions_newest_first_with_who_what_and_bytes(db, viewer_client):
    start = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    for n in (1, 3, 2):
        record(n, when=start + timedelta(hours=n))
    record(9, repository="other/app", when=start)

    page = viewer_client.get("/history/").content.decode()

    digests = re.findall(r'<tr class="record" data-digest="sha256:0*(\d+)">', page)
    assert digests == ["3", "2", "1", "9"]
    assert "<td>user3</td>" in page
    assert f'<a class="name" href="{LIST}">{REPO}</a>' in page
    assert 'title="2026-03-01 15:00:00 UTC"' in page
    assert f'data-copy="sha256:{3:064x}"' in page
    assert '<span class="tag" title="&lt;b&gt;x&lt;/b&gt;">&lt;b&gt;x&lt;/b&gt;</span>' in page
    assert 'title="3,000 bytes">3.0 kB</td>' in page and 'title="1,500 bytes">1.5 kB</td>' in page
    assert 'aria-current="page">Deletion history</a>' in page

    only = viewer_client.get("/history/", {"repository": "other/app"}, **HTMX)
    assert re.findall(r'data-digest="sha256:0*(\d+)"', only.content.decode()) == ["9"]
    assert only.content.decode().lstrip().startswith('<section id="records"')


def test_the_history_says_so_when_nothing_was_deleted(db, viewer_client):
    page = viewer_client.get("/history/", {"repository": "<i>x</i>"}).content.decode()

    assert 'Nothing deleted yet from repositories matching <bdi class="name">&lt;i&gt;x' in page


def test_the_history_costs_the_same_queries_however_many_records(db, viewer_client):
    start = datetime(2026, 3, 1, tzinfo=UTC)

    def queries_for_a_page(total: int) -> int:
        for n in range(DeletionRecord.objects.count(), total):
            record(n, when=start + timedelta(minutes=n))
        with CaptureQueriesContext(connection) as queries:
            response = viewer_client.get("/history/", {"page": 2 if total > 50 else 1})
        assert response.status_code == 200
        return len(queries)

    assert queries_for_a_page(3) == queries_for_a_page(80)
