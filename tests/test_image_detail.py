"""The Image details page: facts, layers with their build steps, an index's contents,
untrusted text escaped and clipped, and the HTMX panel."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from devtools.pusher import random_layer
from hubimages.models import Manifest

REPO = "acme/api"


def detail_url(digest: str, repository: str = REPO) -> str:
    return reverse("image_detail", args=["default", repository, digest])


def test_an_image_page_shows_its_facts_and_layers_with_the_steps_that_built_them(
    pusher, sync, viewer_client
):
    history = [
        {"created_by": "ADD rootfs.tar.gz / # buildkit"},
        {"created_by": 'ENV PATH="/app/bin:$PATH"', "empty_layer": True},
        {"created_by": "RUN apt-get install -y curl # buildkit"},
        {"created_by": 'CMD ["serve"]', "empty_layer": True},
    ]
    image = pusher.push_image(
        REPO,
        tag="2.0",
        layers=[random_layer(4000, "base"), random_layer(1200, "curl")],
        architecture="arm64",
        variant="v8",
        labels={"org.opencontainers.image.source": "https://github.com/acme/api"},
        annotations={"org.opencontainers.image.revision": "abc123"},
        config_extra={"history": history},
    )
    sync()

    response = viewer_client.get(detail_url(image.digest))

    assert response.status_code == 200
    page = response.content.decode()
    assert '<h1 id="details-title">Image <code' in page
    assert image.digest in page
    assert "application/vnd.oci.image.manifest.v1+json" in page
    assert '<bdi class="platform">linux/arm64/v8</bdi>' in page
    assert f"({image.config_size + 5200} bytes)" in page
    assert 'title="2.0">2.0</span>' in page
    assert "org.opencontainers.image.source" in page and "https://github.com/acme/api" in page
    assert "org.opencontainers.image.revision" in page and "abc123" in page
    # Layers in order; ENV and CMD made no layer, so the second layer is the RUN step.
    base, curl = image.layer_digests
    first, second = page.index(base), page.index(curl)
    assert first < second
    assert "ADD rootfs.tar.gz / # buildkit" in page[:first]
    assert "RUN apt-get install -y curl # buildkit" in page[first:second]
    assert "ENV PATH" not in page
    assert "4.0 kB" in page and "1.2 kB" in page


def test_an_index_page_lists_its_platforms_and_contents(pusher, sync, viewer_client):
    amd = pusher.push_image(REPO, layers=[random_layer(100, "amd")])
    arm = pusher.push_image(REPO, layers=[random_layer(100, "arm")], architecture="arm64")
    index = pusher.push_index(REPO, tag="multi", images=[amd, arm], attestations=True)
    signature = pusher.push_cosign_signature(REPO, index)
    sync()
    # Pulled: the index is Active, and so are its images, whose own times date nothing.
    Manifest.objects.filter(digest=index.digest).update(last_pulled_at=timezone.now())

    page = viewer_client.get(detail_url(index.digest)).content.decode()

    assert '<h1 id="details-title">Image index <code' in page
    assert '<bdi class="platform">linux/amd64</bdi> <bdi class="platform">linux/arm64</bdi>' in page
    assert "Platforms and contents" in page
    for child in (amd, arm, *(c for c in index.children if c.platform[0] == "unknown")):
        assert detail_url(child.digest) in page
    assert page.count(">Attestation</td>") == 2
    assert "Referrers" in page and detail_url(signature.digest) in page
    # An image inside the index links back to it.
    child_page = viewer_client.get(detail_url(amd.digest)).content.decode()
    assert "Part of" in child_page and detail_url(index.digest) in child_page
    assert page.count("badge-active") >= 3 and "badge-unknown" not in page
    assert "badge-active" in child_page and "badge-unknown" not in child_page
    signature_page = viewer_client.get(detail_url(signature.digest)).content.decode()
    assert "badge-active" in signature_page and "badge-unknown" not in signature_page


def test_hostile_labels_annotations_and_history_are_escaped_and_clipped(
    pusher, sync, viewer_client
):
    long_label = "A" * 20_000
    long_step = "RUN " + "B" * 5_000
    image = pusher.push_image(
        REPO,
        tag="evil",
        layers=[random_layer(10, "x"), random_layer(10, "y")],
        labels={"evil": "<script>alert('label')</script>", "long": long_label},
        annotations={"org.opencontainers.image.title": "<img src=x onerror=alert(1)>"},
        history=["<script>alert('history')</script>", long_step],
    )
    sync()

    page = viewer_client.get(detail_url(image.digest)).content.decode()

    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&#x27;label&#x27;)&lt;/script&gt;" in page
    assert "&lt;script&gt;alert(&#x27;history&#x27;)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    # Long text: 200 characters shown, the rest behind "Show all", itself capped.
    assert '<bdi class="clipped">' + "A" * 199 + "…</bdi>" in page
    assert "A" * 10_000 in page and "A" * 10_001 not in page
    assert "Show all (first 10,000 characters)" in page
    assert '<bdi class="clipped">RUN ' + "B" * 195 + "…</bdi>" in page
    assert "B" * 5_000 in page


def test_htmx_gets_the_details_as_a_panel_over_the_list(pusher, sync, viewer_client):
    image = pusher.push_image(REPO, tag="1", layers=[random_layer(10, "p")])
    sync()

    response = viewer_client.get(detail_url(image.digest), headers={"HX-Request": "true"})

    page = response.content.decode()
    assert page.lstrip().startswith('<dialog class="panel"')
    assert "<html" not in page
    assert f'<a href="{detail_url(image.digest)}">Open as a page</a>' in page
    assert '<form method="dialog">' in page
    assert "HX-Request" in response["Vary"]


def test_unknown_or_malformed_digests_are_not_found(pusher, sync, viewer_client):
    image = pusher.push_image(REPO, tag="1", layers=[random_layer(10, "n")])
    pusher.push_image("other/repo", tag="1", layers=[random_layer(10, "o")])
    sync()

    assert viewer_client.get(detail_url("sha256:" + "0" * 64)).status_code == 404
    assert viewer_client.get(detail_url("latest")).status_code == 404
    assert viewer_client.get(detail_url("sha256:<script>")).status_code == 404
    assert viewer_client.get(detail_url(image.digest, "other/repo")).status_code == 404
    assert viewer_client.get(detail_url(image.digest, "no/such")).status_code == 404


@pytest.mark.django_db
def test_the_details_require_signing_in(client):
    url = detail_url("sha256:" + "0" * 64)

    response = client.get(url)

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=")
