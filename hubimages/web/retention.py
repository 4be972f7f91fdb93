"""Retention policies' pages: the list, the editor with its live dry run, Run now,
import and export (SPEC §8)."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_GET, require_POST

from hubimages.jobs import queue
from hubimages.lib.audit import Actor
from hubimages.models import RetentionPolicy, RetentionRun
from hubimages.registries.config import DEFAULT
from hubimages.retention import engine, policies
from hubimages.retention.form import KEEP_CHOICES, PolicyForm
from hubimages.teams.rights import Rights, Role, may_see_policy, policy_refusal
from hubimages.web.access import rights
from hubimages.web.deletion import CHANGED, UNCONFIRMED
from hubimages.web.jobs import follow_job
from hubimages.web.rendering import render_page, vary_on_htmx

# -- retention policies (SPEC §8) --------------------------------------------------------------

RUNS_SHOWN = 10


# -- who may see and change a policy (SPEC §14) -------------------------------------------


def _sees_run(mine: Rights, run: RetentionRun) -> bool:
    """A run's figures add up the repositories it touched: for those who see them all."""
    return all(
        mine.may_view(note.get("registry", DEFAULT), note.get("repository", ""))
        for note in run.repositories
        if isinstance(note, dict)
    )


def may_write_policies(request: HttpRequest) -> None:
    """403 unless the user administers retention policies somewhere."""
    if not rights(request).holds(Role.POLICY_ADMIN):
        raise PermissionDenied(
            "retention policies are written by policy admins: you are not one anywhere"
        )


def _refusal(request: HttpRequest, policy: policies.Policy, doing: str) -> str | None:
    """Why the user may not `doing` this policy (it covers what they do not administer)."""
    return policy_refusal(rights(request), policy.registries, policy.repositories, doing=doing)


def _visible_overview(request: HttpRequest) -> list[policies.PolicySummary]:
    """The policies the user may see (`may_see_policy`), each counting only the
    repositories they see, with its last run if they see every repository it touched."""
    mine = rights(request)
    shown = []
    for summary in policies.policy_overview(within=mine.within()):
        policy = summary.policy
        if not may_see_policy(mine, policy.registries, policy.repositories):
            continue
        if summary.last_run is not None and not _sees_run(mine, summary.last_run):
            summary = dataclasses.replace(summary, last_run=None)
        shown.append(summary)
    return shown


@require_GET
def retention_policies(request: HttpRequest) -> HttpResponse:
    """Every policy the user may see: what it covers, its last run and what that freed,
    its next run."""
    context = {
        "policies": _visible_overview(request),
        "can_edit": rights(request).holds(Role.POLICY_ADMIN),
    }
    return render(request, "retention.html", context)


def _editor(
    request: HttpRequest,
    *,
    row: RetentionPolicy | None,
    form: PolicyForm,
    notice: str = "",
    error: str = "",
    status: int = 200,
    check: bool = True,
) -> HttpResponse:
    """The editor with the dry run of what its fields say (the whole page, or only the dry
    run for htmx); Run now only when that is the stored policy, unchanged. `check=False`
    for a blank new policy, which has nothing to complain about yet."""
    mine = rights(request)
    draft = form.validate() if check else None
    saved = policies.policy_of(row) if row is not None else None
    # Who may change the stored policy (anyone who holds the role, for a new one).
    can_edit = mine.holds(Role.POLICY_ADMIN) and (
        saved is None or _refusal(request, saved, "change") is None
    )
    beyond = _refusal(request, draft, "save") if draft is not None and can_edit else None
    recent = list(row.runs.all()[:RUNS_SHOWN]) if row is not None else []
    runs = [run for run in recent if _sees_run(mine, run)]
    preview = None
    if draft is not None:
        try:
            # Only the repositories the user sees: the totals are theirs too.
            preview = engine.dry_run(draft, within=mine.within())
        except policies.PatternTooSlow as slow:  # shown on its field, as any other problem
            form.add_errors(slow.errors)
    context = {
        "row": row,
        "form": form,
        "keep_choices": KEEP_CHOICES,
        "draft": draft,
        "preview": preview,
        "is_saved": saved is not None
        and draft is not None
        and draft.effective_json() == saved.effective_json(),
        "policy_json": json.dumps(draft.as_json(), indent=2) if draft else "",
        "runs": runs,
        "runs_hidden": len(runs) < len(recent),
        "can_edit": can_edit,
        "beyond": beyond if not error else "",
        "notice": notice,
        "error": error,
        "checked": check,
    }
    # "Add rule" and "Remove rule" change the form itself: htmx gets the whole editor.
    partial = "editor" if form.rows_changed else "dry_run"
    return render_page(request, "retention_policy.html", partial, context, status=status)


def _stored_policy(request: HttpRequest, name: str) -> RetentionPolicy:
    """The stored policy, 404 unless the user may see it (`may_see_policy`)."""
    row = get_object_or_404(RetentionPolicy, name=name)
    policy = policies.policy_of(row)
    if not may_see_policy(rights(request), policy.registries, policy.repositories):
        raise Http404("no such retention policy")
    return row


def _changeable_policy(request: HttpRequest, name: str, doing: str) -> RetentionPolicy:
    """The stored policy, 404 unless the user may see it, 403 unless they administer
    everything it covers."""
    row = _stored_policy(request, name)
    refusal = _refusal(request, policies.policy_of(row), doing)
    if refusal:
        raise PermissionDenied(refusal)
    return row


@require_GET
@vary_on_htmx
def retention_policy(request: HttpRequest, name: str) -> HttpResponse:
    row = _stored_policy(request, name)
    return _editor(request, row=row, form=PolicyForm.from_policy(policies.policy_of(row)))


@require_GET
def retention_new(request: HttpRequest) -> HttpResponse:
    may_write_policies(request)
    return _editor(request, row=None, form=_blank_form(rights(request)), check=False)


def _blank_form(mine: Rights) -> PolicyForm:
    """A new policy's fields: every repository, or, for who administers policies under
    one grant list, what that list names (a policy beyond it could not be saved)."""
    form = PolicyForm.from_policy(None)
    if mine.sees_everything(Role.POLICY_ADMIN):
        return form
    held = [
        (registry, patterns)
        for registry in mine.registries(Role.POLICY_ADMIN)
        for patterns in mine.pattern_lists(Role.POLICY_ADMIN, registry)
    ]
    if len(held) == 1:
        [(registry, patterns)] = held
        form.registries, form.repositories = registry, "\n".join(patterns)
    return form


@require_POST
@vary_on_htmx
def retention_preview(request: HttpRequest) -> HttpResponse:
    """The dry run of the editor's fields as they stand, saved or not: htmx asks for it as
    you type; the Preview button gets the whole page; "Add rule" and "Remove rule" the
    editor with one rule more or less (the whole page without JavaScript)."""
    may_write_policies(request)
    original = request.POST.get("original", "")
    row = RetentionPolicy.objects.filter(name=original).first() if original else None
    if row is not None:
        row = _stored_policy(request, original)
    return _editor(request, row=row, form=PolicyForm.from_post(request.POST))


@require_POST
def retention_save(request: HttpRequest, name: str = "") -> HttpResponse:
    """Save the editor's policy: the user must administer what it covered (an existing
    one) and what it will cover."""
    row = _changeable_policy(request, name, "change") if name else None
    may_write_policies(request)
    form = PolicyForm.from_post(request.POST)
    policy = form.validate()
    if policy is None:
        return _editor(request, row=row, form=form, status=422)
    refusal = _refusal(request, policy, "save")
    if refusal:
        return _editor(request, row=row, form=form, error=refusal, status=403)
    try:
        saved = policies.save_policy(policy, original=row, by=Actor.of(request))
    except policies.PolicyExists as exists:
        form.errors.setdefault("name", []).append(f"{exists}: choose another name")
        return _editor(request, row=row, form=form, status=422)
    messages.success(request, f"Saved policy {saved.name}.")
    return HttpResponseRedirect(reverse("retention_policy", args=[saved.name]), status=303)


@require_POST
def retention_run(request: HttpRequest, name: str) -> HttpResponse:
    """Run now: exactly the previewed dry run (its `now` and fingerprint came with the
    form), or nothing and a fresh preview."""
    row = _changeable_policy(request, name, "run")
    policy = policies.policy_of(row)
    form = PolicyForm.from_policy(policy)
    now = _aware_datetime(request.POST.get("now", ""))
    fingerprint = request.POST.get("fingerprint", "")
    refusal = {}
    if now is None or _fingerprint(policy, now) != fingerprint:
        # A junk time, or a plan that already differs in the database: no job, the fresh
        # preview at once.
        refusal = {"notice": CHANGED, "status": 409}
    elif request.POST.get("confirm") != "yes":
        refusal = {"error": UNCONFIRMED, "status": 422}
    if refusal:
        response = _editor(request, row=row, form=form, **refusal)
        if request.htmx:  # the dry run shows it, not the dialog the run would have opened
            response["HX-Retarget"] = "#dry-run"
            response["HX-Reswap"] = "outerHTML"
        return response
    job = queue.start_retention(
        policy=row.name, now=now, fingerprint=fingerprint, user=request.user, by=Actor.of(request)
    )
    return follow_job(request, job)


def _fingerprint(policy: policies.Policy, now: datetime) -> str:
    """The dry run's fingerprint; "" when its patterns are too slow (the editor then
    shows why)."""
    try:
        return engine.dry_run(policy, now=now).fingerprint
    except policies.PatternTooSlow:
        return ""


def _aware_datetime(text: str) -> datetime | None:
    """The preview's `now` as the form carried it; None when it is not one."""
    try:
        value = parse_datetime(text.strip()[:40])
    except ValueError:
        return None
    return value if value is not None and value.tzinfo is not None else None


@require_POST
def retention_delete(request: HttpRequest, name: str) -> HttpResponse:
    """Delete the policy (its runs stay on record, under its name)."""
    row = _changeable_policy(request, name, "delete")
    policies.delete_policy(row, by=Actor.of(request))
    messages.success(request, f"Deleted policy {name}; its runs stay in the records.")
    return HttpResponseRedirect(reverse("retention_policies"), status=303)


@require_GET
def retention_export(request: HttpRequest, name: str) -> HttpResponse:
    policy = policies.policy_of(_stored_policy(request, name))
    response = HttpResponse(
        json.dumps(policy.as_json(), indent=2) + "\n", content_type="application/json"
    )
    response["Content-Disposition"] = f'attachment; filename="{policy.name}.json"'
    return response


@require_POST
def retention_import(request: HttpRequest) -> HttpResponse:
    """Store a policy from its JSON (pasted, or an uploaded file); a policy of the same
    name is replaced only when asked."""
    may_write_policies(request)
    upload = request.FILES.get("file")
    text = request.POST.get("policy", "")
    if upload is not None:
        text = upload.read(policies.MAX_IMPORT_BYTES + 1).decode("utf-8", errors="replace")
    problems: list[str] = []
    status = 422
    if len(text) > policies.MAX_IMPORT_BYTES:
        problems = [f"the file is larger than {policies.MAX_IMPORT_BYTES // 1000} kB"]
    else:
        try:
            policy = policies.parse_policy_json(text)
            problems = _import_refusals(request, policy)
            status = 403 if problems else status
            if not problems:
                row = policies.save_policy(
                    policy, replace=request.POST.get("replace") == "yes", by=Actor.of(request)
                )
        except policies.InvalidPolicy as invalid:
            problems = [str(error) for error in invalid.errors]
        except policies.PolicyExists as exists:
            problems = [f"{exists}: tick “Replace” to replace it"]
    if problems:
        context = {
            "policies": _visible_overview(request),
            "can_edit": True,
            "import_errors": problems,
            "import_text": text,
        }
        return render(request, "retention.html", context, status=status)
    messages.success(request, f"Imported policy {row.name}.")
    return HttpResponseRedirect(reverse("retention_policy", args=[row.name]), status=303)


def _import_refusals(request: HttpRequest, policy: policies.Policy) -> list[str]:
    """The imported policy must cover only what the user administers, and so must the
    policy it would replace."""
    refusal = _refusal(request, policy, "import")
    if refusal:
        return [refusal]
    existing = RetentionPolicy.objects.filter(name=policy.name).first()
    if existing is not None and request.POST.get("replace") == "yes":
        refusal = _refusal(request, policies.policy_of(existing), "replace")
        if refusal:
            return [f"{policy.name} exists: {refusal}"]
    return []
