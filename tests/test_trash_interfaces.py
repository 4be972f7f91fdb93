"""The Trash's page, API and commands (SPEC §12): what they show, who may start what, and
that checking and restoring are jobs (a request never asks the registry)."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from devtools.pusher import random_layer
from devtools.worker import run_tasks
from hubimages.jobs import queue
from hubimages.lib import audit
from hubimages.models import (
    ApiToken,
    AuditEntry,
    Deletion,
    DeletionRecord,
    Job,
    KeptManifest,
    RetentionRun,
)
from hubimages.trash import listing
from tests.api_helpers import API, assert_error, bearer, post_json
from tests.test_trash import REPO, delete, registry_tags

DIGEST = "sha256:" + "a" * 64
CHILD = "sha256:" + "b" * 64
INDEX_BODY = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": CHILD, "size": 9}
        ],
    }
).encode()


def kept_deletion(
    *, username: str = "alice", run: RetentionRun | None = None, state: str = "restorable"
) -> Deletion:
    """A deletion of an index and its image, as the Trash keeps it (no registry needed to
    show it: the page reads what the last check stored)."""
    deletion = Deletion.objects.create(
        username=username,
        repository=REPO,
        fingerprint="f" * 64,
        state="done",
        reclaimed_bytes=4_321,
        finished_at=timezone.now(),
        retention_run=run,
    )
    for digest, kind, tags in ((DIGEST, "index", ["v1", "latest"]), (CHILD, "image", [])):
        record = DeletionRecord.objects.create(
            operation=deletion,
            username=username,
            repository=REPO,
            digest=digest,
            kind=kind,
            tags=tags,
            size=1_000,
            state="done",
        )
        KeptManifest.objects.create(
            record=record,
            media_type="application/vnd.oci.image.index.v1+json",
            body=INDEX_BODY,
            state=state,
            checked_at=timezone.now() - timedelta(minutes=5),
            missing=[] if state == "restorable" else ["sha256:" + "c" * 64],
        )
    return deletion


# -- the page ----------------------------------------------------------------------------------


def test_the_trash_page_shows_each_deletion_its_items_their_states_and_when_checked(
    viewer_client, db
):
    deletion = kept_deletion()
    lost = kept_deletion(username="policy:ci", state="lost")

    page = viewer_client.get("/trash/")

    assert page.status_code == 200
    html = page.content.decode()
    assert '<a href="/trash/" aria-current="page">Trash</a>' in html  # in the header
    assert html.index(f'id="operation-{lost.pk}"') < html.index(f'id="operation-{deletion.pk}"')
    assert "2 restorable" in html and "2 lost" in html
    assert "checked <time" in html
    assert "can no longer be restored" in html
    assert "docker-registry garbage-collect /etc/docker/registry/config.yml" in html
    assert "docker exec REGISTRY_CONTAINER registry garbage-collect /etc/docker/" in html
    assert "--delete-untagged" in html and "read-only" in html
    assert "only until then" in html
    assert 'name="scope"' not in html  # a viewer sees no restore button


def test_a_deleter_sees_restore_buttons_only_where_something_may_come_back(deleter_client, db):
    restorable = kept_deletion()
    lost = kept_deletion(state="lost")

    html = deleter_client.get("/trash/").content.decode()

    def article(deletion: Deletion) -> str:
        start = html.index(f'id="operation-{deletion.pk}"')
        return html[start : html.index("</article>", start)]

    assert 'value="all"' in article(restorable) and 'name="digest"' in article(restorable)
    assert 'name="scope"' not in article(lost) and 'name="digest"' not in article(lost)
    assert "Check now" in html


def test_check_now_and_restore_are_post_only_jobs_for_those_who_may_delete(
    viewer_client, deleter_client, deleter, db
):
    deletion = kept_deletion()
    restore_url = f"/trash/{deletion.pk}/restore"
    assert deleter_client.get("/trash/check").status_code == 405
    assert deleter_client.get(restore_url).status_code == 405
    assert viewer_client.post("/trash/check", {"registry": "default"}).status_code == 403
    assert viewer_client.post(restore_url, {"scope": "all"}).status_code == 403
    assert not Job.objects.exists()

    check = deleter_client.post("/trash/check", {"registry": "default"})
    restore = deleter_client.post(
        restore_url, {"scope": "ticked", "digest": [CHILD], "move_tags": "yes"}
    )

    assert check.status_code == restore.status_code == 303
    jobs = {job.kind: job for job in Job.objects.all()}
    assert check["Location"] == f"/jobs/{jobs['trash_check'].pk}/"
    assert restore["Location"] == f"/jobs/{jobs['restore'].pk}/"
    assert jobs["restore"].params == {
        "operations": [deletion.pk],
        "digests": [CHILD],
        "move_tags": True,
    }
    assert (jobs["restore"].user, jobs["restore"].repository) == (deleter, REPO)
    assert jobs["trash_check"].registry == "default"


def test_restore_ticked_with_nothing_ticked_starts_nothing(deleter_client, db):
    deletion = kept_deletion()

    answer = deleter_client.post(f"/trash/{deletion.pk}/restore", {"scope": "ticked"}, follow=True)

    assert "Tick the items to restore" in answer.content.decode()
    assert not Job.objects.exists()


def test_restore_the_whole_run_takes_every_deletion_of_that_retention_run(deleter_client, db):
    run = RetentionRun.objects.create(
        policy_name="ci", trigger="manual", started_at=timezone.now(), outcome="done"
    )
    first, second = kept_deletion(run=run), kept_deletion(run=run)
    other = kept_deletion()

    deleter_client.post(f"/trash/{second.pk}/restore", {"scope": "run"})

    assert Job.objects.get().params["operations"] == [first.pk, second.pk]
    assert other.pk not in Job.objects.get().params["operations"]
    html = deleter_client.get("/trash/").content.decode()
    assert f"Restore the whole run #{run.pk}" in html
    assert "retention policy <a" in html


def test_a_big_deletion_opens_onto_its_first_hundred_items_and_counts_them_all(
    deleter_client, db, django_assert_max_num_queries
):
    deletion = kept_deletion()
    for n in range(100):
        record = DeletionRecord.objects.create(
            operation=deletion, repository=REPO, digest=f"sha256:{n:064x}", kind="image"
        )
        KeptManifest.objects.create(record=record, media_type="x", body=b"{}", state="lost")

    with django_assert_max_num_queries(25):
        html = deleter_client.get("/trash/").content.decode()

    assert html.count('class="trash-item"') == 100
    assert "102 items" in html and "2 restorable" in html and "100 lost" in html
    assert "and 2 more, not shown" in html
    assert f'title="{2 * len(INDEX_BODY) + 200:,} bytes"' in html  # all of it kept


def test_the_trash_forgets_deletions_older_than_trash_keep_days(viewer_client, settings, db):
    settings.TRASH_KEEP_DAYS = 3
    old = kept_deletion()
    old.records.update(deleted_at=timezone.now() - timedelta(days=4))
    fresh = kept_deletion()

    html = viewer_client.get("/trash/").content.decode()

    assert f'id="operation-{fresh.pk}"' in html and f'id="operation-{old.pk}"' not in html
    assert "in the last 3 days" in html


def test_the_storage_page_shows_what_the_collector_reclaimed(viewer_client, db):
    collected = kept_deletion()
    Deletion.objects.filter(pk=collected.pk).update(collected_at=timezone.now())
    kept_deletion()

    html = viewer_client.get("/storage/").content.decode()

    assert "Reclaimed by the garbage collector" in html
    assert re.search(r"4\.3 kB.*?from 1 deletion, collected", html, re.S)


# -- the API -----------------------------------------------------------------------------------


def test_the_api_lists_the_trash_with_each_items_state(client, viewer, db):
    deletion = kept_deletion(state="partly_lost")
    reader = bearer(viewer, ApiToken.Scope.READ)

    answer = client.get(f"{API}/trash", headers=reader)

    assert answer.status_code == 200
    [operation] = answer.json()["results"]
    assert operation["id"] == deletion.pk and operation["name"] == f"Deletion #{deletion.pk}"
    assert (operation["deleted_by"], operation["policy"], operation["reclaimed_bytes"]) == (
        "alice",
        None,
        4_321,
    )
    assert [(i["digest"], i["state"], i["tags"]) for i in operation["items"]] == [
        (DIGEST, "partly_lost", ["v1", "latest"]),
        (CHILD, "partly_lost", []),
    ]
    assert operation["items"][0]["missing"] == ["sha256:" + "c" * 64]
    assert operation["items"][0]["kept_bytes"] == len(INDEX_BODY)
    assert operation["items"][0]["conflicts"] == []
    assert client.get(f"{API}/trash?registry=default", headers=reader).json()["count"] == 1
    assert_error(client.get(f"{API}/trash?registry=nope", headers=reader), 404, "not_found")
    assert_error(client.get(f"{API}/trash?stauts=lost", headers=reader), 422, "invalid_request")


def test_restoring_over_the_api_starts_a_job_and_needs_a_delete_token(client, viewer, deleter, db):
    deletion = kept_deletion()
    url = f"{API}/trash/{deletion.pk}/restore"
    read_only = bearer(deleter, ApiToken.Scope.READ)
    assert_error(post_json(client, url, {}, headers=read_only), 403, "insufficient_scope")
    no_permission = bearer(viewer)
    assert_error(post_json(client, url, {}, headers=no_permission), 403, "permission_denied")
    token = bearer(deleter)
    assert_error(post_json(client, f"{API}/trash/999/restore", {}, headers=token), 404, "not_found")
    unknown = post_json(client, url, {"digests": ["d" * 64]}, headers=token)
    assert_error(unknown, 404, "not_in_trash")  # as an unknown deletion
    assert_error(post_json(client, url, {"dry_run": True}, headers=token), 422, "invalid_request")
    assert not Job.objects.exists()

    started = post_json(client, url, {"digests": [CHILD[7:]], "move_tags": True}, headers=token)

    assert started.status_code == 202
    job = Job.objects.get()
    assert started.json() == {"id": job.pk, "url": f"{API}/jobs/{job.pk}"}
    assert started["Location"] == f"{API}/jobs/{job.pk}"
    assert job.params == {"operations": [deletion.pk], "digests": [CHILD], "move_tags": True}
    followed = client.get(started["Location"], headers=token).json()
    assert (followed["kind"], followed["status"]) == ("restore", "queued")


def test_every_restore_started_on_the_page_or_through_the_api_is_in_the_audit_log(
    client, deleter, deleter_client, db
):
    deletion = kept_deletion()
    deleter_client.post(
        f"/trash/{deletion.pk}/restore",
        {"scope": "ticked", "digest": [CHILD]},
        REMOTE_ADDR="192.0.2.1",
    )
    post_json(
        client,
        f"{API}/trash/{deletion.pk}/restore",
        {"move_tags": True},
        headers=bearer(deleter),
        REMOTE_ADDR="192.0.2.2",
    )

    page, api = AuditEntry.objects.filter(action="restore").order_by("id")
    jobs = list(Job.objects.filter(kind="restore").order_by("id"))
    assert (page.actor, page.address, page.target) == ("deleter", "192.0.2.1", REPO)
    assert page.details == {
        "job": jobs[0].pk,
        "operations": [deletion.pk],
        "digests": [CHILD],
        "move_tags": False,
    }
    assert (api.actor, api.address, api.target) == ("deleter", "192.0.2.2", REPO)
    assert api.details == {
        "job": jobs[1].pk,
        "operations": [deletion.pk],
        "digests": [],
        "move_tags": True,
    }
    assert page.get_action_display() == "Started a restore from the Trash"


def test_a_restore_job_and_its_audit_entry_are_written_together_or_not_at_all(
    deleter, monkeypatch, db
):
    deletion = kept_deletion()

    def broken(*args, **kwargs):
        raise RuntimeError("the audit table is gone")

    monkeypatch.setattr(audit, "record", broken)
    with pytest.raises(RuntimeError):
        queue.start_restore(operations=[deletion], user=deleter)
    assert not Job.objects.exists()


# -- against the registry: the command line, the job and its page --------------------------------


@pytest.fixture
def deleted(pusher, sync, registry_client, registry_url):
    image = pusher.push_image(REPO, tag="v1", layers=[random_layer(900, "cli")])
    stays = pusher.push_image(REPO, tag="v2", layers=[random_layer(900, "stays")])
    sync()
    operation = delete(registry_client, image.digest)
    return operation, image, stays


def test_trash_list_checks_the_registry_and_prints_the_stable_json(deleted, registry_server):
    operation, image, _ = deleted
    out = StringIO()

    call_command("trash", "list", "--json", stdout=out)

    assert json.loads(out.getvalue()) == {
        "operations": [
            {
                "id": operation.pk,
                "registry": "default",
                "deleted_at": operation.started_at.isoformat().replace("+00:00", "Z"),
                "deleted_by": "alice",
                "policy": None,
                "items": [
                    {
                        "repository": REPO,
                        "digest": image.digest,
                        "kind": "image",
                        "tags": ["v1"],
                        "state": "restorable",
                    }
                ],
            }
        ]
    }
    registry_server.garbage_collect()
    out = StringIO()
    call_command("trash", "list", "--registry", "default", "--json", stdout=out)
    assert json.loads(out.getvalue())["operations"][0]["items"][0]["state"] == "lost"


def test_trash_restore_exits_zero_when_every_asked_item_is_back_and_says_why_otherwise(
    deleted, registry_client, registry_server
):
    operation, image, stays = deleted
    out = StringIO()

    call_command("trash", "restore", str(operation.pk), image.digest[7:], "--yes", stdout=out)

    assert f"restored  {image.digest}  image" in out.getvalue()
    assert registry_tags(registry_client) == {"v1": image.digest, "v2": stays.digest}
    entry = AuditEntry.objects.get(action="restore")
    assert entry.actor.endswith("(command line)") and entry.target == REPO
    assert entry.details == {
        "operations": [operation.pk],
        "digests": [image.digest],
        "move_tags": False,
    }
    again = StringIO()
    call_command("trash", "restore", str(operation.pk), "--yes", stdout=again)
    assert "nothing more to restore" in again.getvalue()

    second = delete(registry_client, image.digest)
    registry_server.garbage_collect()
    with pytest.raises(CommandError, match="is lost: the garbage collector removed"):
        call_command("trash", "restore", str(second.pk), "--yes", stdout=StringIO())
    with pytest.raises(CommandError, match="no deletion 999 in the Trash"):
        call_command("trash", "restore", "999", "--yes")
    with pytest.raises(CommandError, match="not in the Trash"):
        call_command("trash", "restore", str(second.pk), "e" * 64, "--yes")


def test_a_restore_job_page_says_what_came_back(deleted, deleter_client, registry_client):
    operation, image, _ = deleted
    started = deleter_client.post(f"/trash/{operation.pk}/restore", {"scope": "all"})
    run_tasks()

    page = deleter_client.get(started["Location"]).content.decode()

    assert "Restored 1 manifest and 1 tag." in page
    assert "Back to the Trash" in page
    assert registry_client.head_manifest(REPO, "v1").digest == image.digest
    trash = deleter_client.get("/trash/").content.decode()
    assert "1 restored" in trash and "by deleter" in trash
    history = deleter_client.get("/history/").content.decode()
    assert "+1 restored" in history
    assert listing.with_items([operation])[0].items[0].state == "restored"


def test_trash_keep_days_defaults_to_14_and_refuses_junk():
    from tests.test_hardening import manage

    script = "from django.conf import settings; print(settings.TRASH_KEEP_DAYS)"
    secret = {"SECRET_KEY": "x" * 50}
    assert manage("shell", "-c", script, **secret).stdout.split()[-1] == "14"
    assert manage("shell", "-c", script, TRASH_KEEP_DAYS="30", **secret).stdout.split()[-1] == "30"
    for junk, says in (("0", "at least 1"), ("two weeks", "whole number")):
        refused = manage("shell", "-c", script, TRASH_KEEP_DAYS=junk, **secret)
        assert refused.returncode != 0
        assert "TRASH_KEEP_DAYS" in refused.stderr and says in refused.stderr
