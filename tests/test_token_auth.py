"""A real registry with `auth: token` and a real token server (SPEC §1): the Bearer flow of
Docker Hub, GHCR, Harbor and GitLab, end to end.

`devtools.tokenserver` signs JWTs with a key made for each test, the registry verifies
them against its certificate, and each account may do only what its grants say: the
registry refuses the rest, as in production.
"""

from __future__ import annotations

import io
import json
import time

import pytest
from django.core.management import CommandError, call_command

from devtools.pusher import ImagePusher, random_layer
from devtools.server import LocalRegistry
from devtools.tokenserver import Account, TokenServer
from hubimages.models import DeletionRecord, Manifest, Tag
from hubimages.sync.service import sync_registry
from registry.client import RegistryClient

pytestmark = pytest.mark.django_db

PASSWORDS = {"admin": "admin-pass-1", "reader": "reader-pass-2", "ci": "ci-pass-3"}


@pytest.fixture
def tokens():
    accounts = {
        "admin": Account(PASSWORDS["admin"], {"*": {"*"}}, catalog=True),
        "reader": Account(PASSWORDS["reader"], {"team/*": {"pull"}}, catalog=True),
        # Pull and delete in team/*, no catalog: Docker Hub's and GHCR's shape.
        "ci": Account(PASSWORDS["ci"], {"team/*": {"pull", "delete"}}),
    }
    with TokenServer(accounts) as server:
        yield server


@pytest.fixture
def token_registry(tmp_path, tokens):
    with LocalRegistry(tmp_path / "registry", token_auth=tokens) as server:
        yield server


@pytest.fixture
def pushed(token_registry, tokens):
    pusher = ImagePusher(token_registry.url)
    pusher.session.auth = tokens.auth_for("admin")
    amd64 = pusher.push_image("team/api", layers=[random_layer(900, "amd64")])
    arm64 = pusher.push_image("team/api", layers=[random_layer(900, "arm64")], architecture="arm64")
    index = pusher.push_index("team/api", tag="v1", images=[amd64, arm64])
    loose = pusher.push_image("team/api", tag="old", layers=[random_layer(800, "old")])
    web = pusher.push_image("team/web", tag="latest", layers=[random_layer(700, "web")])
    secret = pusher.push_image("other/secret", tag="v1", layers=[random_layer(600, "secret")])
    return {"index": index, "loose": loose, "web": web, "secret": secret, "pusher": pusher}


def use(settings, registry: LocalRegistry, account: str, *repositories: str) -> None:
    settings.REGISTRY_URL = registry.url
    settings.REGISTRY_USERNAME = account
    settings.REGISTRY_PASSWORD = PASSWORDS[account]
    settings.REGISTRY_REPOSITORIES = list(repositories)


def command(name: str, *args: str) -> tuple[str, str, str]:
    """Standard output, standard error, and the CommandError's message ("" if none)."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command(name, *args, stdout=out, stderr=err)
    except CommandError as error:
        return out.getvalue(), err.getvalue(), str(error)
    return out.getvalue(), err.getvalue(), ""


def tags_of(repository: str) -> set[str]:
    return set(Tag.objects.filter(repository__name=repository).values_list("name", flat=True))


def test_a_sync_gets_the_tokens_its_account_may_have_and_is_refused_the_rest(
    pushed, token_registry, tokens, settings
):
    use(settings, token_registry, "reader")

    out, err, failed = command("sync_registry")

    assert tags_of("team/api") == {"v1", "old"}
    assert tags_of("team/web") == {"latest"}
    assert not Manifest.objects.filter(repository__name="other/secret").exists()
    assert "1 repository failed to sync" in failed
    assert "other/secret: registry answered 401" in err
    # It asked only for reading, and got pull on team/* and nothing on other/*.
    asked = {scope for issued in tokens.issued for scope in issued.scopes}
    assert asked == {
        "registry:catalog:*",
        "repository:team/api:pull",
        "repository:team/web:pull",
        "repository:other/secret:pull",
    }
    granted = {
        (grant["name"], tuple(grant["actions"])) for i in tokens.issued for grant in i.granted
    }
    assert ("other/secret", ()) in granted and ("team/api", ("pull",)) in granted
    assert PASSWORDS["reader"] not in out + err + failed


def test_the_list_and_the_preview_read_what_a_token_sync_stored(pushed, token_registry, settings):
    use(settings, token_registry, "reader", "team/api")
    command("sync_registry")

    out, _, _ = command("list_images", "team/api", "--json")
    listed = {row["digest"]: row for row in json.loads(out)["results"]}
    assert listed[pushed["index"].digest]["tags"] == ["v1"]
    assert len(listed[pushed["index"].digest]["children"]) == 2

    out, _, _ = command("delete_images", "team/api", pushed["index"].digest, "--dry-run", "--json")
    plan = json.loads(out)
    assert [item["kind"] for item in plan["delete"]] == ["index", "image", "image"]
    assert plan["tags_removed"] == ["v1"] and plan["reclaimable_bytes"] > 0


def test_deleting_needs_an_account_whose_tokens_carry_delete(pushed, token_registry, settings):
    loose = pushed["loose"]
    use(settings, token_registry, "reader", "team/api")
    command("sync_registry")

    _, err, failed = command("delete_images", "team/api", loose.digest, "--yes")

    assert failed
    assert "401" in err + failed and PASSWORDS["reader"] not in err + failed
    assert DeletionRecord.objects.get(digest=loose.digest).state == "failed"
    assert pushed["pusher"].list_tags("team/api") == ["old", "v1"]  # nothing deleted

    use(settings, token_registry, "ci", "team/api")
    _, _, failed = command("delete_images", "team/api", loose.digest, "--yes")

    assert failed == ""
    assert pushed["pusher"].list_tags("team/api") == ["v1"]
    assert tags_of("team/api") == {"v1"}
    assert DeletionRecord.objects.filter(digest=loose.digest, state="done").exists()


def test_a_registry_with_its_catalog_closed_syncs_the_repositories_named_in_settings(
    pushed, token_registry, settings
):
    use(settings, token_registry, "ci")
    _, err, failed = command("sync_registry")
    assert "the catalog could not be read" in failed
    assert "name the repositories to sync in REGISTRY_REPOSITORIES" in err
    assert not Manifest.objects.exists()

    use(settings, token_registry, "ci", "team/api", "team/web")
    _, _, failed = command("sync_registry")

    assert failed == ""
    assert tags_of("team/api") == {"v1", "old"} and tags_of("team/web") == {"latest"}


def test_a_token_that_expires_mid_sync_is_renewed_and_the_sync_completes(
    pushed, token_registry, tokens, monkeypatch
):
    # The registry honours each token for 1 to 2 s, while the token server tells the client
    # 300 s: the client learns of the expiry from the registry's 401, mid-sync.
    tokens.valid_for = 2
    client = RegistryClient(token_registry.url, username="ci", password=PASSWORDS["ci"])
    get_blob = client.get_blob
    paused = []

    def slow_first_config(*args, **kwargs):
        if not paused:
            paused.append(True)
            time.sleep(3)  # every token fetched so far is dead when this returns
        return get_blob(*args, **kwargs)

    monkeypatch.setattr(client, "get_blob", slow_first_config)

    summary = sync_registry(client, catalog=["team/api"], workers=1)

    assert summary.errors == []
    assert tags_of("team/api") == {"v1", "old"}
    assert Manifest.objects.filter(repository__name="team/api").count() == 4
    assert tokens.tokens_for("repository:team/api:pull") >= 2


def test_credentials_go_to_no_token_server_on_another_host_over_plain_http(tmp_path, tokens):
    # The registry sends clients for their token to `localhost`, another host than the
    # 127.0.0.1 they reach it on, over plain http: the password would travel to it in clear.
    realm = tokens.realm.replace("127.0.0.1", "localhost")
    with LocalRegistry(tmp_path / "registry", token_auth=tokens, token_realm=realm) as server:
        client = RegistryClient(server.url, username="admin", password=PASSWORDS["admin"])
        summary = sync_registry(client, catalog=["team/api"])

    assert len(summary.errors) == 1
    assert "over plain http" in summary.errors[0]
    assert "localhost" in summary.errors[0] and "none were sent" in summary.errors[0]
    assert PASSWORDS["admin"] not in summary.errors[0]
    assert tokens.issued == [] and tokens.refused == 0  # the token server never heard of it
