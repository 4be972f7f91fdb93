"""What the Trash keeps per deleted image, on the demo's sample images (issue 20).

Pushes what `scripts/demo` pushes to its prod registry (`devtools.samples`: the base set,
a sync, the rebuilds that leave builds untagged, a sync) to a fresh local registry, then
deletes every top-level item of every repository through the plan engine (each index with
its images and attestations, each image with its signature and SBOM), as "Delete
forever" does. It prints what the Trash kept: the manifests' own bytes, in all, per
deleted top-level item (an "image" as the list shows it), per manifest, and against the
bytes those deletions free. Then it restores every deletion and checks that each manifest
answers again with the exact bytes that were deleted.

No wall time is measured: the figure is bytes, the same on every machine.

    .venv/bin/python bench/trash_bench.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devtools import samples  # noqa: E402
from devtools.processes import setup_django  # noqa: E402
from devtools.pusher import ImagePusher  # noqa: E402
from devtools.server import LocalRegistry  # noqa: E402


def main() -> int:
    with (
        tempfile.TemporaryDirectory(prefix="trash-bench-") as directory,
        LocalRegistry(Path(directory) / "registry") as server,
    ):
        setup_django(f"sqlite:///{directory}/bench.sqlite3", REGISTRY_URL=server.url)
        return measure(server)


def measure(server: LocalRegistry) -> int:
    from django.db.models import Sum
    from django.db.models.functions import Length

    from hubimages.deletion import execution, planning
    from hubimages.models import Deletion, KeptManifest, Manifest, Repository
    from hubimages.registries import rows
    from hubimages.sync.service import sync_registry
    from hubimages.trash.restore import restore_operations
    from registry.client import RegistryClient

    pusher = ImagePusher(server.url, user_agent="hubimages-samples/1")
    with RegistryClient(server.url) as client:

        def sync() -> None:
            summary = sync_registry(client, registry=rows.get(), workers=4)
            assert summary.errors == [], summary.errors

        samples.push_base(pusher)
        sync()
        samples.push_rebuilds(pusher)
        sync()
        manifests_before = Manifest.objects.count()
        top_level, operations = 0, []
        for repository in Repository.objects.select_related("registry").order_by("name"):
            digests = list(
                repository.manifests.filter(is_top_level=True).values_list("digest", flat=True)
            )
            plan = planning.plan_deletion(repository=repository, digests=digests)
            outcome = execution.execute_deletion(
                repository=repository,
                digests=digests,
                fingerprint=plan.fingerprint,
                user=None,
                client=client,
                username="bench",
            )
            assert outcome.succeeded, (outcome.failed, outcome.skipped)
            top_level += len(digests)
            operations.append(Deletion.objects.get(pk=outcome.operation_id))
        kept = KeptManifest.objects.all()
        count = kept.count()
        kept_bytes = kept.aggregate(n=Sum(Length("body")))["n"] or 0
        images = kept.filter(record__kind="image").count()
        freed = sum(op.reclaimed_bytes for op in operations)
        bodies = {k.record.digest: bytes(k.body) for k in kept.select_related("record")}

        outcome = restore_operations(
            operations, client_for=lambda registry: client, username="bench"
        )
        assert outcome.complete, outcome.failed
        repositories = {k.record.digest: k.record.repository for k in kept.select_related("record")}
        same = all(
            client.get_manifest(repositories[digest], digest).body == body
            for digest, body in bodies.items()
        )

    print(f"demo samples: {manifests_before} manifests in {len(operations)} repositories")
    print(f"deleted: {top_level} top-level items, {count} manifests ({images} of them images)")
    print(f"kept by the Trash: {kept_bytes:,} bytes in all")
    print(f"  per deleted top-level item: {kept_bytes / top_level:,.0f} bytes")
    print(f"  per image manifest:                    {_mean(kept, 'image'):,.0f} bytes")
    print(f"  per index (its own bytes):             {_mean(kept, 'index'):,.0f} bytes")
    print(f"  per manifest, any kind:                {kept_bytes / count:,.0f} bytes")
    for repository, tag in EXAMPLES:
        print(f"  {repository}:{tag}: {_item_bytes(kept, repository, tag):,} bytes")
    print(f"freed by those deletions: {freed:,} bytes; kept / freed = {kept_bytes / freed:.3%}")
    print(f"restored: {len(outcome.restored)} manifests; every one byte-identical: {same}")
    return 0 if same and len(outcome.restored) == count else 1


EXAMPLES = (("team/api", "v1.0"), ("library/nginx", "1.26"))


def _item_bytes(kept, repository: str, tag: str) -> int:
    """What the Trash kept of one tagged item: its manifest and, for an index, each child
    manifest its deletion took (the kept index names them)."""
    from registry import media

    mine = {k.record.digest: k for k in kept.filter(record__repository=repository)}
    [top] = [k for k in mine.values() if tag in k.record.tags]
    parsed = media.parse_manifest(bytes(top.body), top.media_type)
    children = [mine[d.digest] for d in parsed.manifests if d.digest in mine]
    return sum(len(bytes(k.body)) for k in [top, *children])


def _mean(kept, kind: str) -> float:
    from django.db.models import Avg
    from django.db.models.functions import Length

    return kept.filter(record__kind=kind).aggregate(n=Avg(Length("body")))["n"] or 0.0


if __name__ == "__main__":
    sys.exit(main())
