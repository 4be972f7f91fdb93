"""What the API tests share: a registry with stale and active images in a repository whose
name has several `/` parts (and one named `…/images`), tokens, and the error shape."""

from __future__ import annotations

import json
from types import SimpleNamespace

from devtools.pusher import random_layer
from hubimages.accounts import tokens
from hubimages.models import ApiToken

REPO = "org/group/proj"
IMAGES_REPO = "team/images"  # its list is /api/v1/repositories/team/images/images
API = "/api/v1"
LONG_AGO = "2020-01-01T00:00:00Z"


def push_stock(pusher, sync) -> SimpleNamespace:
    """In REPO: two stale images (one tagged `1.0`, one untagged since its tag `2.0`
    moved on, both built in 2020), a tagged multi-arch index with attestations, a signed
    image (`edge`, with labels and build history) and a plain one (`main`), all recent.
    In IMAGES_REPO: one image. Pushed to a real registry and synced."""
    old = pusher.push_image(REPO, tag="1.0", layers=[random_layer(4_000, "old")], created=LONG_AGO)
    orphan = pusher.push_image(
        REPO, tag="2.0", layers=[random_layer(3_000, "orphan")], created=LONG_AGO
    )
    sync()
    rebuilt = pusher.push_image(REPO, tag="2.0", layers=[random_layer(3_500, "rebuilt")])
    amd = pusher.push_image(REPO, layers=[random_layer(2_000, "amd")])
    arm = pusher.push_image(REPO, layers=[random_layer(1_500, "arm")], architecture="arm64")
    index = pusher.push_index(REPO, tag="latest", images=[amd, arm], attestations=True)
    edge = pusher.push_image(
        REPO,
        tag="edge",
        layers=[random_layer(1_000, "edge-1"), random_layer(900, "edge-2")],
        labels={"org.opencontainers.image.source": "https://example.test/proj"},
        history=["ADD rootfs.tar /", "RUN make install"],
    )
    signature = pusher.push_cosign_signature(REPO, edge)
    main = pusher.push_image(REPO, tag="main", layers=[random_layer(800, "main")])
    other = pusher.push_image(IMAGES_REPO, tag="v1", layers=[random_layer(600, "other")])
    sync()
    return SimpleNamespace(
        old=old,
        orphan=orphan,
        rebuilt=rebuilt,
        amd=amd,
        arm=arm,
        index=index,
        attestations=index.children[2:],
        edge=edge,
        signature=signature,
        main=main,
        other=other,
    )


def bearer(user, scope: str = ApiToken.Scope.READ_DELETE, **options) -> dict[str, str]:
    """Headers that authenticate as a new token of `user`."""
    token = tokens.issue(user=user, name="test", scope=scope, **options).token
    return {"Authorization": f"Bearer {token}"}


def post_json(client, url: str, body: object, **kwargs):
    return client.post(url, json.dumps(body), content_type="application/json", **kwargs)


def put_json(client, url: str, body: object, **kwargs):
    return client.put(url, json.dumps(body), content_type="application/json", **kwargs)


def documented(client, headers: dict[str, str], component: str):
    """A validator for `component` of the API's own OpenAPI document, as the API serves it.
    jsonschema-rs reads `pattern` as ECMA-262 does, as the document means it (Python's
    `re` would let `$` match before a final newline)."""
    from jsonschema_rs import Draft202012Validator

    document = client.get(f"{API}/openapi.json", headers=headers).json()
    root = {"$ref": f"#/components/schemas/{component}", "components": document["components"]}
    return Draft202012Validator(root)


def assert_error(response, status: int, code: str) -> dict:
    """The one error shape, as JSON (never HTML): returns the body."""
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"].startswith("application/json")
    body = json.loads(response.content)
    assert set(body["error"]) <= {"code", "message", "fields"}
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert b"<html" not in response.content.lower()
    return body
