"""`python manage.py apply_retention POLICY.json [--registry NAME] [--repository NAME …]
[--dry-run] [--json] [--yes]`: a retention policy's dry run, or its run, from the command
line (SPEC §8). Without `--registry` it covers every registry the policy's `registries`
match; `--repository` names repositories of one registry (`--registry`, else the default).

`--dry-run --json` prints SPEC §8's object; scripts rely on it, so keep it stable. The file
need not be a stored policy (`-` reads standard input, so `retention_policy export NAME |
apply_retention -` works). The `max_delete_fraction` brake is for scheduled runs: whoever
confirms here (or passes --yes) has seen the dry run.
"""

from __future__ import annotations

import getpass
import json
import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from hubimages.lib import audit, formatting
from hubimages.lib.audit import Action, Actor
from hubimages.lib.formatting import human_size, short_digest
from hubimages.management.options import add_registry_option, registry_from
from hubimages.models import RetentionPolicy, RetentionRun
from hubimages.registries.client import ClientsByRegistry
from hubimages.retention import engine, policies, runs


class Command(BaseCommand):
    help = "Apply a retention policy (SPEC §8); --dry-run shows what it would delete and keep."

    def add_arguments(self, parser):
        parser.add_argument("policy", metavar="POLICY.json", help="the policy's JSON file, or -")
        parser.add_argument(
            "--repository",
            action="append",
            dest="repositories",
            metavar="NAME",
            help="only this covered repository (repeat for more)",
        )
        parser.add_argument("--dry-run", action="store_true", help="show the plan only")
        parser.add_argument("--json", action="store_true", help="print JSON (the stable shape)")
        parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        add_registry_option(parser)

    def handle(self, *args, policy, repositories, dry_run, yes, **options):
        as_json = options["json"]
        parsed = read_policy(policy)
        registry = None
        if options.get("registry") or repositories:
            registry = registry_from(options).name
        try:
            if repositories:
                check_covered(parsed, registry, repositories)
            preview = engine.dry_run(parsed, registry=registry, repositories=repositories)
        except policies.PatternTooSlow as slow:
            raise CommandError(f"nothing was decided: {slow}") from None
        if dry_run or not as_json:
            self.write_dry_run(preview, as_json)
        if dry_run:
            return
        if not preview.manifest_count:
            self.stdout.write("Nothing to delete.")
            return
        if not yes and not self.confirm(preview):
            self.stderr.write("Nothing deleted.")
            return
        audit.record(
            Action.POLICY_RUN,
            by=Actor.command_line(),
            target=parsed.name,
            now=preview.now.isoformat(),
            fingerprint=preview.fingerprint,
            registry=registry or "",
            repositories=repositories or [],
        )
        with ClientsByRegistry() as client_for:
            result = runs.run(
                policy=parsed,
                now=preview.now,
                fingerprint=preview.fingerprint,
                client_for=client_for,
                trigger=RetentionRun.Trigger.COMMAND,
                started_by=f"cli:{getpass.getuser()}",
                registry=registry,
                repositories=repositories,
                row=stored_as(parsed),
            )
        self.report(result.record, as_json)
        if result.record.outcome != RetentionRun.Outcome.DONE:
            raise CommandError(result.record.message)

    def confirm(self, preview: engine.DryRun) -> bool:
        if not sys.stdin.isatty():
            raise CommandError(
                "refusing to delete without confirmation: standard input is not a terminal; "
                "pass --yes to confirm"
            )
        self.stderr.write(
            f"Delete {preview.manifest_count} manifests from {len(preview.repositories)} "
            f"repositories and reclaim {human_size(preview.reclaimable_bytes)}? [y/N] ",
            ending="",
        )
        self.stderr.flush()
        return sys.stdin.readline().strip().lower() in ("y", "yes")

    def write_dry_run(self, preview: engine.DryRun, as_json: bool) -> None:
        if as_json:
            self.stdout.write(json.dumps(preview.as_dict(), indent=2))
            return
        write = self.stdout.write
        write(f"Policy {preview.policy.name}, as of {formatting.iso(preview.now)}:")
        for number, rule in enumerate(preview.policy.rules, start=1):
            write(f"  rule {number}: {rule.describe()}")
        for repo in preview.repositories:
            write(f"\n{repo.name}: {len(repo.selected)} of {repo.candidates} top-level items go")
            for item in repo.plan.delete:
                tags = f"  tags: {', '.join(item.tags)}" if item.tags else ""
                in_use = f"  ({repo.in_use[item.digest]})" if item.digest in repo.in_use else ""
                because = "no rule keeps it" if item.because == "selected" else item.because
                write(
                    f"  delete  {short_digest(item.digest)}  {item.kind:<11} "
                    f"{human_size(item.size):>9}  {because}{tags}{in_use}"
                )
            for kept in repo.kept:
                tags = ", ".join(kept.tags) or "untagged"
                write(f"  keep    {short_digest(kept.digest)}  {tags}: {kept.reason}")
            for item in repo.plan.keep:
                write(f"  keep    {short_digest(item.digest)}  {item.kind}: {item.reason}")
            if repo.over(preview.policy.max_delete_fraction):
                write(
                    f"  (a scheduled run would stop here: {repo.delete_fraction:.0%} of the "
                    f"items, more than max_delete_fraction {preview.policy.max_delete_fraction:g})"
                )
            write(
                f"  {repo.plan.manifest_count} manifests and {repo.plan.tag_count} tags; "
                f"reclaims {human_size(repo.plan.reclaimable_bytes)}"
            )
        write(
            f"\nIn total: {preview.manifest_count} manifests and {preview.tag_count} tags; "
            f"reclaims {human_size(preview.reclaimable_bytes)} ({preview.reclaimable_bytes} "
            "bytes) when the registry's garbage collector runs."
        )

    def report(self, record: RetentionRun, as_json: bool) -> None:
        if as_json:
            self.stdout.write(
                json.dumps(
                    {
                        "policy": record.policy_name,
                        "now": formatting.iso(record.started_at),
                        "outcome": record.outcome,
                        "message": record.message,
                        "repositories": record.repositories,
                        "reclaimed_bytes": record.reclaimed_bytes,
                    },
                    indent=2,
                )
            )
            return
        for note in record.repositories:
            self.stdout.write(f"{note['repository']}: {note['note']}")
        self.stdout.write(record.message)


def read_policy(path: str) -> policies.Policy:
    """The policy in the file (or standard input for `-`), or a CommandError naming every
    problem with its field."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as error:
        raise CommandError(f"cannot read {path}: {error.strerror}") from None
    try:
        return policies.parse_policy_json(text)
    except policies.InvalidPolicy as invalid:
        raise CommandError(
            f"{path} is not a valid policy:\n" + "\n".join(f"  {e}" for e in invalid.errors)
        ) from None


def stored_as(policy: policies.Policy) -> RetentionPolicy | None:
    """The stored policy this file is an export of (same name, same rules): its runs from
    here show on its page too."""
    row = RetentionPolicy.objects.filter(name=policy.name).first()
    if row is not None and policies.policy_of(row).effective_json() == policy.effective_json():
        return row
    return None


def check_covered(policy: policies.Policy, registry: str, repositories: list[str]) -> None:
    outside = [name for name in repositories if not policy.covers(name, registry)]
    if outside:
        raise CommandError(
            f"policy {policy.name} does not cover {', '.join(outside)} in registry {registry}"
        )
