"""Following a job the caller started (SPEC §9): its state, progress and outcome."""

from __future__ import annotations

from django.http import HttpRequest
from ninja import Router

from hubimages.api.errors import ApiError
from hubimages.api.schemas import JobOut, error_responses
from hubimages.jobs import queue
from hubimages.models import Job
from hubimages.teams.rights import rights_of

router = Router(tags=["jobs"])


@router.get(
    "/jobs/{int:job_id}", response={200: JobOut, **error_responses(404)}, summary="Follow a job"
)
def get_job(request: HttpRequest, job_id: int) -> dict:
    """`status` is queued, running, succeeded or failed; `progress` says where a running
    job is; `outcome` what a finished one did. Users see their own jobs, admins also those in
    the repositories they may see."""
    within = rights_of(request).within(registry_field="registry_name", field="repository")
    job = queue.visible_to(request.user, within).filter(pk=job_id).first()
    if job is None:
        raise ApiError(404, "not_found", f"no job {job_id} that you started")
    return job_out(job)


def job_out(job: Job) -> dict:
    return {
        "id": job.pk,
        "name": job.name,
        "kind": job.kind,
        "status": job.state,
        "registry": job.registry,
        "repository": job.repository,
        "started_by": job.started_by,
        "started_by_label": job.started_by_label,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "progress": job.progress if not job.finished else "",
        "message": job.message,
        "outcome": job.outcome if job.finished else {},
    }
