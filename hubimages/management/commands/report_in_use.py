"""`python manage.py report_in_use SOURCE FILE`: replace SOURCE's in-use report with the
JSON in FILE (`-` reads standard input), the body `PUT /api/v1/in-use/{source}` takes:
`{"images": [{"reference", "where"}], "ttl_seconds": N, "required": false}` (SPEC §13)."""

import getpass
import json
import sys

from django.core.management.base import BaseCommand, CommandError

from hubimages.inuse import reports
from registry.errors import ContentTooComplex
from registry.media import load_json

KEYS = ("images", "ttl_seconds", "required")


class Command(BaseCommand):
    help = "Replace a source's in-use report with the JSON of a file (SPEC §13)."

    def add_arguments(self, parser):
        parser.add_argument("source", help="the source's name, e.g. prod-eu or ci")
        parser.add_argument("file", help="the report's JSON; - reads standard input")
        parser.add_argument("--json", action="store_true", help="print the answer as JSON")

    def handle(self, *args, source, file, **options):
        document = self.read(file)
        try:
            received = reports.replace(
                source=source,
                images=document.get("images", []),
                ttl_seconds=document.get("ttl_seconds"),
                required=document.get("required", False),
                reported_by=f"cli:{getpass.getuser()}",
            )
        except reports.InvalidReport as invalid:
            problems = "".join(f"\n  {field}: {message}" for field, message in invalid.problems)
            raise CommandError(f"{invalid}{problems}") from None
        answer = received.as_dict()
        if options["json"]:
            self.stdout.write(json.dumps(answer, indent=2))
            return
        for item in answer["unresolved"]:
            self.stderr.write(f"unknown: {item['reference']} ({item['where']}): {item['reason']}")
        others = ", ".join(f"{host} ×{n}" for host, n in answer["other_registries"].items())
        self.stdout.write(
            f"Source {source}: {answer['references']} references kept, live until "
            f"{answer['expires_at']}{' (required)' if answer['required'] else ''}"
            + (f"; on other registries: {others}" if others else "")
            + (f"; {len(answer['unresolved'])} unknown tags" if answer["unresolved"] else "")
        )

    def read(self, file: str) -> dict:
        try:
            if file == "-":
                body = sys.stdin.buffer.read()
            else:
                with open(file, "rb") as handle:
                    body = handle.read()
        except OSError as error:
            raise CommandError(f"cannot read {file}: {error.strerror}") from None
        try:
            document = load_json(body, file)
        except (ValueError, ContentTooComplex) as error:
            raise CommandError(f"{file} is not JSON: {error}") from None
        if not isinstance(document, dict):
            raise CommandError(f"{file} must hold a JSON object with images and ttl_seconds")
        unknown = sorted(set(document) - set(KEYS))
        if unknown:
            raise CommandError(
                f"{file}: unknown keys {', '.join(unknown)} (known: images, ttl_seconds, required)"
            )
        if "ttl_seconds" not in document:
            raise CommandError(f"{file}: ttl_seconds is required")
        if not isinstance(document.get("required", False), bool):
            raise CommandError(f"{file}: required must be true or false")
        if not isinstance(document.get("images", []), list):
            raise CommandError(f"{file}: images must be a list")
        return document
