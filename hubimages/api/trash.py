"""The Trash (SPEC §12): what deletions kept, as last checked, and restoring it (a job)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from ninja import Query, Router, Status

from hubimages.api.auth import require_write_scope
from hubimages.api.errors import ApiError
from hubimages.api.paging import paginate, reject_unknown_parameters
from hubimages.api.repositories import checked_digest
from hubimages.api.schemas import (
    JobStartedOut,
    RestoreIn,
    TrashPage,
    TrashQuery,
    error_responses,
)
from hubimages.jobs import queue
from hubimages.lib.audit import Actor
from hubimages.lib.formatting import iso
from hubimages.registries import rows
from hubimages.teams.rights import restore_refusal, rights_of
from hubimages.trash import listing

router = Router(tags=["trash"])


@router.get("/trash", response={200: TrashPage, **error_responses(404, 422)}, summary="The Trash")
def list_trash(request: HttpRequest, query: Query[TrashQuery]) -> dict:
    """Deletions of the last `TRASH_KEEP_DAYS`, newest first, each with what it kept and
    each item's state as last checked (the workers check after each garbage collection
    they notice; `manage.py trash list` checks first). Restorable only until the
    registry's garbage collector runs. Only the deletions in repositories the caller may
    see."""
    reject_unknown_parameters(request, TrashQuery)
    registry = None
    if query.registry:
        try:
            registry = rows.get(query.registry).name
        except rows.UnknownRegistry as error:
            raise ApiError(404, "not_found", str(error)) from None
    return paginate(
        request,
        listing.operations(registry, within=_seen(request)),
        query,
        lambda page: [operation_out(op) for op in listing.with_items(page)],
    )


def operation_out(operation: listing.Operation) -> dict:
    deletion = operation.deletion
    return {
        "id": deletion.pk,
        "name": deletion.name,
        "registry": deletion.registry,
        "repository": deletion.repository,
        "deleted_at": iso(deletion.started_at),
        "deleted_by": deletion.username,
        "policy": operation.policy,
        "retention_run": deletion.retention_run_id,
        "reclaimed_bytes": deletion.reclaimed_bytes,
        "collected_at": iso(deletion.collected_at) if deletion.collected_at else None,
        "items": [
            {
                **item.as_dict(),
                "checked_at": iso(item.checked_at) if item.checked_at else None,
                "missing": list(item.missing),
                "size": item.size,
                "kept_bytes": item.kept_bytes,
                "restored_at": iso(item.restored_at) if item.restored_at else None,
                "restored_by": item.restored_by,
                "conflicts": list(item.conflicts),
            }
            for item in operation.items
        ],
    }


@router.post(
    "/trash/{int:operation}/restore",
    response={202: JobStartedOut, **error_responses(403, 404, 422)},
    summary="Restore from the Trash",
)
def restore(
    request: HttpRequest, operation: int, payload: RestoreIn, response: HttpResponse
) -> Status:
    """Start a job that puts back what the deletion `operation` deleted (or only
    `digests` of it; with `whole_run`, every deletion of its retention run): 202 and the
    job's URL. The job checks the registry first and restores nothing if anything asked
    can no longer come back (its outcome says why); children go before their index,
    subjects before their referrers, then the tags. Needs a `read+delete` token and the
    deleter role on every repository restored; 404 for a deletion the caller may not
    see."""
    require_write_scope(request, "restoring")
    deletion = listing.operations(within=_seen(request)).filter(pk=operation).first()
    if deletion is None:
        raise ApiError(404, "not_found", f"no deletion {operation} in the Trash")
    digests = [checked_digest(text, f"digests[{i}]") for i, text in enumerate(payload.digests)]
    operations = [deletion]
    if payload.whole_run and deletion.retention_run_id:
        operations = list(
            listing.operations().filter(retention_run=deletion.retention_run_id).reverse()
        )
    refusal = restore_refusal(rights_of(request), operations)
    if refusal:
        raise ApiError(403, "permission_denied", refusal)
    kept = set(
        listing.kept_records().filter(operation__in=operations).values_list("digest", flat=True)
    )
    unknown = [d for d in digests if d not in kept]
    if unknown:
        raise ApiError(  # like an unknown deletion: nothing of that name is in the Trash
            404,
            "not_in_trash",
            f"not in the Trash of deletion {operation}: {', '.join(unknown)}",
            fields=[{"field": "digests", "message": f"not in the Trash: {d}"} for d in unknown],
        )
    job = queue.start_restore(
        operations=operations,
        digests=digests,
        move_tags=payload.move_tags,
        user=request.user,
        by=Actor.of(request),
    )
    url = reverse("api:get_job", kwargs={"job_id": job.pk})
    response["Location"] = url
    return Status(202, {"id": job.pk, "url": url})


def _seen(request: HttpRequest):
    """The deletions the caller may see: those in repositories they may see."""
    return rights_of(request).within(registry_field="registry", field="repository")
