"""The preview's reclaimable bytes are exactly what the registry's garbage collector frees.

distribution 2.8's `garbage-collect` (without `--delete-untagged`) marks, per repository,
every manifest revision left, its config and layers, and an index's children; a subject
marks nothing. Each round collects once first, so only the deletion's effect is measured.
"""

from devtools.pusher import random_layer
from hubimages.deletion import execution, planning
from hubimages.deletion import preview as explained
from hubimages.models import Repository

APP = "team/app"
OTHER = "team/other"


def test_reclaimable_bytes_equal_what_garbage_collection_frees(
    registry_server, pusher, sync, registry_client
):
    base = random_layer(30_000, "base")  # shared within team/app
    across = random_layer(40_000, "across")  # shared with team/other
    amd64 = pusher.push_image(APP, layers=[base, random_layer(20_000, "amd64")])
    arm64 = pusher.push_image(
        APP, layers=[base, random_layer(21_000, "arm64")], architecture="arm64", variant="v8"
    )
    in_two = pusher.push_image(APP, layers=[random_layer(9_000, "two")], architecture="s390x")
    v2 = pusher.push_index(APP, tag="v2", images=[amd64, arm64, in_two], attestations=True)
    pusher.push_index(APP, tag="stable", images=[in_two])
    pusher.push_referrer(APP, v2, payload=random_layer(5_000, "sbom"))
    pusher.push_cosign_signature(APP, v2)
    pusher.push_image(APP, tag="v1", layers=[base, random_layer(8_000, "v1")])
    untagged = pusher.push_image(APP, tag="nightly", layers=[base, random_layer(7_000, "old")])
    cross = pusher.push_image(APP, tag="cross", layers=[across, random_layer(6_000, "cross")])
    twin = pusher.push_image(APP, tag="twin", layers=[random_layer(5_500, "twin")])
    pusher.push_image(OTHER, tag="v1", layers=[across, random_layer(4_000, "other")])
    pusher.push_image(OTHER, tag="twin", layers=[random_layer(5_500, "twin")])
    sync()
    pusher.push_image(APP, tag="nightly", layers=[random_layer(7_000, "new")])
    sync()  # the old nightly stays known, untagged

    def delete_and_collect(*digests: str) -> tuple[int, planning.DeletionPlan, int]:
        registry_server.garbage_collect()
        before = registry_server.blob_bytes_on_disk()
        repository = Repository.objects.get(name=APP)
        preview = planning.plan_deletion(repository=repository, digests=list(digests))
        sharing = explained.plan_sharing(preview)
        outcome = execution.execute_deletion(
            repository=repository,
            digests=list(digests),
            fingerprint=preview.fingerprint,
            user=None,
            client=registry_client,
            username="test",
        )
        assert outcome.succeeded
        assert len(outcome.deleted) == len(preview.delete)
        registry_server.garbage_collect()
        freed = before - registry_server.blob_bytes_on_disk()
        # The page's cards (one per selected item) add up to what the collector freed too.
        assert sharing.groups_frees + sharing.shared_among_groups == freed
        return freed, preview, outcome.reclaimed_bytes

    # An index with attestations, a referrer and a signature; one image stays in "stable".
    freed, preview, reclaimed = delete_and_collect(v2.digest)
    assert len(preview.delete) == 9  # index, 2 images, 3 attestations, fallback, sbom, sig
    assert explained.cascade_words(list(preview.delete[1:])) == (
        "2 images (linux/amd64, linux/arm64/v8), 3 attestations, 1 signature, 1 SBOM, "
        "1 list of linked artifacts"
    )
    assert [k.digest for k in preview.keep] == [in_two.digest]
    assert freed == preview.reclaimable_bytes == reclaimed
    assert preview.reclaimable_bytes > 41_000  # the images' own layers, not the base

    # An untagged image: its own layer goes, the base it shares with v1 stays.
    freed, preview, reclaimed = delete_and_collect(untagged.digest)
    assert freed == preview.reclaimable_bytes == reclaimed
    assert preview.reclaimable_bytes == untagged.size + untagged.config_size + 7_000

    # A layer shared with another repository, and a manifest that lives there too.
    freed, preview, reclaimed = delete_and_collect(cross.digest, twin.digest)
    assert freed == preview.reclaimable_bytes == reclaimed
    assert preview.reclaimable_bytes == cross.size + cross.config_size + 6_000
