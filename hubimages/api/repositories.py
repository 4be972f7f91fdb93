"""Repositories, their images, one image, and deleting images (SPEC §9).

Repository names hold `/`, so their paths take the rest of the URL up to the endpoint's
own last part (`/repositories/org/group/proj/images`); a digest contains `:`, which no
repository name can, so `…/images/<digest>` never reads as a name ending in `images`.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import register_converter, reverse
from django.utils import timezone
from ninja import Path, Query, Router, Status

from hubimages.api.auth import require_delete
from hubimages.api.errors import ApiError
from hubimages.api.paging import paginate, reject_unknown_parameters
from hubimages.api.schemas import (
    DIGEST_PATTERN,
    DeleteImagesIn,
    ImageDetailOut,
    ImagePage,
    ImagesQuery,
    JobStartedOut,
    PlanChangedOut,
    PlanOut,
    RegistryQuery,
    RepositoriesQuery,
    RepositoryPage,
    error_responses,
)
from hubimages.deletion import planning, preview
from hubimages.inventory import details, lists, repositories
from hubimages.jobs import queue
from hubimages.lib import formatting
from hubimages.lib.audit import Actor
from hubimages.models import Manifest, Registry, Repository
from hubimages.registries import rows as registry_rows
from hubimages.teams.rights import rights_of
from registry import media

router = Router(tags=["repositories"])

NAME = Path(
    pattern=media.REPOSITORY_NAME_PATTERN,
    max_length=media.MAX_NAME_LENGTH,
    description="The repository's name, slashes as they are: `team/api`.",
)
DIGEST = Path(pattern=DIGEST_PATTERN, description="`sha256:<64 hex digits>`.")
PLAN_CHANGED = (
    "the repository changed since your dry run, so the plan differs: nothing was deleted; "
    "check the new plan and send its fingerprint"
)


class DigestConverter:
    """`algorithm:hex`: what a repository name can never be (names hold no `:`)."""

    regex = r"[a-z0-9]+:[^/]+"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(DigestConverter, "oci_digest")


@router.get(
    "/repositories",
    response={200: RepositoryPage, **error_responses(404, 422)},
    summary="List repositories",
)
def list_repositories(request: HttpRequest, query: Query[RepositoriesQuery]) -> dict:
    """Every repository the caller may see, with its counts, stored bytes and last push."""
    reject_unknown_parameters(request, RepositoriesQuery)
    registry = _registry(query.registry) if query.registry else None
    rows = repositories.repository_overview(
        query.search.strip(), query.ordering, registry, within=rights_of(request).within()
    )
    return paginate(request, rows, query, lambda page: [_repository_out(row) for row in page])


def _repository_out(row: Repository) -> dict:
    return {
        "registry": row.registry.name,
        "name": row.name,
        "tag_count": row.tag_count,
        "image_count": row.image_count,
        "stale_count": row.stale_count,
        "size": row.total_size,
        "last_pushed": formatting.iso(row.last_pushed),
        "synced_at": formatting.iso(row.synced_at),
    }


@router.get(
    "/repositories/{path:name}/images",
    response={200: ImagePage, **error_responses(404, 422)},
    summary="List a repository's images",
)
def list_images(request: HttpRequest, query: Query[ImagesQuery], name: str = NAME) -> dict:
    """The Image Management list: one item per index and per image no index holds, in the
    shape of `list_images --json`."""
    reject_unknown_parameters(request, ImagesQuery)
    repository = _repository(request, name, query.registry)
    listing = lists.ListQuery(
        search=query.search.strip(),
        filter=query.filter,
        sort=query.ordering,
        status=query.status or "",
    )
    rows = lists.with_details(lists.top_level(repository, listing))
    now = timezone.now()
    return paginate(
        request, rows, query, lambda page: lists.rows_as_dicts(page, repository.registry, now)
    )


@router.get(
    "/repositories/{path:name}/images/{oci_digest:digest}",
    response={200: ImageDetailOut, **error_responses(404, 422)},
    summary="One image's details",
)
def image_detail(
    request: HttpRequest, query: Query[RegistryQuery], digest: str = DIGEST, name: str = NAME
) -> dict:
    """An index or image with its children, referrers, layers (each with the build step
    that made it), labels and annotations, and where else the same digest lives."""
    reject_unknown_parameters(request, RegistryQuery)
    repository = _repository(request, name, query.registry)
    digest = checked_digest(digest, "digest")
    try:
        manifest = details.manifest_detail(repository, digest)
    except Manifest.DoesNotExist:
        raise ApiError(404, "not_found", f"no manifest {digest} in {repository.name}") from None
    return {
        **lists.rows_as_dicts([manifest], repository.registry)[0],
        "also_in": [
            {"registry": other.repository.registry.name, "repository": other.repository.name}
            for other in details.also_in(
                manifest,
                within=rights_of(request).within(
                    registry_field="repository__registry__name", field="repository__name"
                ),
            )
        ],
        "platform": manifest.platform,
        "manifest_size": manifest.size,
        "artifact_type": manifest.artifact_type,
        "config_digest": manifest.config_digest,
        "created": formatting.iso(manifest.created_at),
        "subject": manifest.subject_digest or None,
        "parents": [entry.index.digest for entry in manifest.parent_entries.all()],
        "referrers": [
            {
                "digest": referrer.digest,
                "kind": referrer.kind,
                "artifact_type": referrer.artifact_type,
                "size": referrer.total_size,
                "tags": [tag.name for tag in referrer.tags.all()],
            }
            for referrer in manifest.referrers.all()
        ],
        "layers": [vars(layer) for layer in details.layers_of(manifest)],
        "labels": manifest.labels if isinstance(manifest.labels, dict) else {},
        "annotations": manifest.annotations if isinstance(manifest.annotations, dict) else {},
    }


@router.post(
    "/repositories/{path:name}/delete-images",
    response={
        200: PlanOut,
        202: JobStartedOut,
        409: PlanChangedOut,
        **error_responses(400, 403, 404, 422),
    },
    summary="Dry-run, or delete, images",
)
def delete_images(
    request: HttpRequest,
    payload: DeleteImagesIn,
    query: Query[RegistryQuery],
    response: HttpResponse,
    name: str = NAME,
) -> Status:
    """With `dry_run` true (the default), the plan: what goes with the selection, what
    stays and why, the tags removed, the bytes the garbage collector will free, and its
    `fingerprint`. With `dry_run` false and that fingerprint, the deletion of exactly that
    plan starts as a job: 202 and the job's URL. 409 and the new plan when the registry or
    the database changed since the dry run; nothing is deleted then. 404 for a repository
    the caller may not see; 403 where they see but may not delete (or with a `read`
    token), the dry run included."""
    reject_unknown_parameters(request, RegistryQuery)
    repository = _repository(request, name, query.registry)
    require_delete(request, repository.registry.name, repository.name)
    digests = [checked_digest(text, f"digests[{i}]") for i, text in enumerate(payload.digests)]
    plan = planning.plan_deletion(
        repository=repository, digests=digests, allow_in_use=payload.allow_in_use
    )
    if payload.dry_run:
        return Status(200, plan_out(plan))
    if not payload.fingerprint:
        raise ApiError(
            422,
            "fingerprint_required",
            "deleting needs the fingerprint of a dry run: send dry_run true first",
            fields=[{"field": "fingerprint", "message": "required when dry_run is false"}],
        )
    if payload.fingerprint != plan.fingerprint:
        raise ApiError(409, "plan_changed", PLAN_CHANGED, plan=plan_out(plan))
    if plan.refused:
        raise ApiError(
            422,
            "plan_refused",
            f"{len(plan.refused)} of the selected digests cannot be deleted (see `refused`): "
            "dry-run again without them",
            plan=plan_out(plan),
        )
    if not plan.delete:
        raise ApiError(422, "nothing_to_delete", "the plan deletes nothing")
    if not payload.allow_active and preview.needs_active_confirmation(plan):
        raise ApiError(
            422,
            "confirmation_required",
            "the plan deletes items that are not stale (see each item's `active`): send "
            "allow_active true to delete them too, as the UI asks a second tick for them",
            plan=plan_out(plan),
        )
    job = queue.start_deletion(
        repository=repository,
        digests=list(plan.selected),
        fingerprint=plan.fingerprint,
        user=request.user,
        allow_in_use=payload.allow_in_use,
        in_use=plan.in_use_deleted(),
        by=Actor.of(request),
    )
    url = reverse("api:get_job", kwargs={"job_id": job.pk})
    response["Location"] = url
    return Status(202, {"id": job.pk, "url": url})


def plan_out(plan: planning.DeletionPlan) -> dict:
    """`delete_images --dry-run --json`, plus the fingerprint and the refused digests, and
    each item's guard rails: where it runs (`in_use`), `active`, `latest`, `signed`,
    `signature`; each kept item's `in_use`."""
    document = plan.as_dict()
    flags = preview.flags(plan)
    in_use = {item.digest: item.in_use for item in plan.keep}
    return {
        **document,
        "delete": [{**item, **flags[item["digest"]]} for item in document["delete"]],
        "keep": [
            {**item, "in_use": in_use[item["digest"]].as_list() if in_use[item["digest"]] else []}
            for item in document["keep"]
        ],
        "fingerprint": plan.fingerprint,
        "refused": [{"digest": item.digest, "reason": item.reason} for item in plan.refused],
    }


def _registry(name: str) -> Registry:
    try:
        return registry_rows.get(name or None)
    except registry_rows.UnknownRegistry as error:
        raise ApiError(404, "not_found", str(error)) from None


def _repository(request: HttpRequest, name: str, registry: str = "") -> Repository:
    """The repository `name` of the registry `registry` (`default`, or the only one); 404
    for one the caller may not see, exactly as for one that does not exist."""
    owner = _registry(registry)
    repository = None
    if rights_of(request).may_view(owner.name, name):
        repository = owner.repositories.select_related("registry").filter(name=name).first()
    if repository is None:
        raise ApiError(
            404, "not_found", f"no repository {name} in registry {owner.name}: is it synced?"
        )
    return repository


def checked_digest(text: str, field: str) -> str:
    """`text` as a digest (bare hex taken as sha256), or a 422 naming `field`."""
    digest = planning.normalize_digest(text)
    if not media.is_digest(digest):
        raise ApiError(
            422,
            "invalid_request",
            f"{field}: {text[:100]!r} is not a digest: give sha256:<64 hex digits>",
            fields=[{"field": field, "message": "not a digest"}],
        )
    return digest
