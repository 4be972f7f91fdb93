"""`python -m hubimages.inuse kubectl`: read what a Kubernetes cluster runs from kubectl's
JSON on standard input and send it to hubimages as this source's in-use report (SPEC §13).

    kubectl get pods,deployments,replicasets,statefulsets,daemonsets,cronjobs,jobs -A -o json \\
      | python -m hubimages.inuse kubectl --url https://hubimages.example.com --source prod

Options fall back on the environment, as a CronJob sets it: HUBIMAGES_URL,
HUBIMAGES_TOKEN (or HUBIMAGES_TOKEN_FILE, a mounted secret), HUBIMAGES_SOURCE,
HUBIMAGES_CLUSTER, HUBIMAGES_TTL_SECONDS, HUBIMAGES_REQUIRED. The token is a `report`
token. Exits 0 once hubimages has the report, 1 when it refused it or could not be reached,
2 on bad usage or input. No Django: the reporter needs only this package, the `registry`
library and requests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import IO
from urllib.parse import quote

import requests

from hubimages.inuse import kubectl

DEFAULT_TTL = 3600
TIMEOUT = (5.0, 120.0)  # connect, read: hubimages resolves and stores the report at once
TRUE = ("1", "true", "yes", "on")
FALSE = ("", "0", "false", "no", "off")


def main(
    argv: list[str] | None = None,
    *,
    stdin: IO[str] | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
    session: requests.Session | None = None,
) -> int:
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    parser = _parser()
    options = parser.parse_args(argv)
    try:
        settings = _settings(options)
    except ValueError as error:
        stderr.write(f"error: {error}\n")
        return 2
    try:
        document = json.load(stdin)
        reading = kubectl.read(document, cluster=settings["cluster"])
    except (ValueError, RecursionError, kubectl.NotAList) as error:
        stderr.write(f"error: standard input is not kubectl's JSON: {error}\n")
        return 2
    for why, count in sorted(reading.skipped.items()):
        examples = ", ".join(reading.examples.get(why, []))
        stderr.write(f"skipped {count} × {why}: {examples}\n")
    report = {
        "images": reading.images,
        "ttl_seconds": settings["ttl"],
        "required": settings["required"],
    }
    if options.dry_run:
        stdout.write(json.dumps(report, indent=2) + "\n")
        return 0
    return _send(report, settings, session or requests.Session(), stdout, stderr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hubimages.inuse",
        description="Send what a cluster runs to hubimages as an in-use report.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser(
        "kubectl", help="read `kubectl get pods,deployments,… -A -o json` on standard input"
    )
    command.add_argument("--url", help="hubimages' address (HUBIMAGES_URL)")
    command.add_argument("--source", help="this report's source name (HUBIMAGES_SOURCE)")
    command.add_argument(
        "--cluster", help="the first part of each place (HUBIMAGES_CLUSTER; default: --source)"
    )
    command.add_argument(
        "--ttl",
        type=int,
        help=f"seconds the report holds (HUBIMAGES_TTL_SECONDS; default {DEFAULT_TTL})",
    )
    command.add_argument(
        "--required",
        action="store_true",
        default=None,
        help="retention stops while this source's report is out of date (HUBIMAGES_REQUIRED)",
    )
    command.add_argument(
        "--token-file", help="a file holding the report token (HUBIMAGES_TOKEN_FILE)"
    )
    command.add_argument(
        "--dry-run", action="store_true", help="print the report instead of sending it"
    )
    return parser


def _settings(options: argparse.Namespace) -> dict:
    env = os.environ
    source = options.source or env.get("HUBIMAGES_SOURCE", "")
    if not source:
        raise ValueError("give the source's name: --source NAME or HUBIMAGES_SOURCE")
    ttl_text = options.ttl if options.ttl is not None else env.get("HUBIMAGES_TTL_SECONDS")
    try:
        ttl = int(ttl_text) if ttl_text not in (None, "") else DEFAULT_TTL
    except ValueError:
        raise ValueError(
            f"HUBIMAGES_TTL_SECONDS must be a number of seconds, not {ttl_text!r}"
        ) from None
    required = options.required
    if required is None:
        value = env.get("HUBIMAGES_REQUIRED", "").strip().lower()
        if value not in TRUE + FALSE:
            raise ValueError(f"HUBIMAGES_REQUIRED must be true or false, not {value!r}")
        required = value in TRUE
    settings = {
        "source": source,
        "cluster": options.cluster or env.get("HUBIMAGES_CLUSTER") or source,
        "ttl": ttl,
        "required": required,
        "url": (options.url or env.get("HUBIMAGES_URL", "")).rstrip("/"),
        "token": "",
    }
    if options.dry_run:
        return settings
    if not settings["url"]:
        raise ValueError("give hubimages' address: --url URL or HUBIMAGES_URL")
    settings["token"] = _token(options.token_file or env.get("HUBIMAGES_TOKEN_FILE"))
    return settings


def _token(path: str | None) -> str:
    if path:
        try:
            with open(path, encoding="utf-8") as file:
                token = file.read().strip()
        except OSError as error:
            raise ValueError(f"cannot read the token file {path}: {error.strerror}") from None
    else:
        token = os.environ.get("HUBIMAGES_TOKEN", "").strip()
    if not token:
        raise ValueError("give a report token: HUBIMAGES_TOKEN or --token-file")
    return token


def _send(
    report: dict, settings: dict, session: requests.Session, stdout: IO[str], stderr: IO[str]
) -> int:
    url = f"{settings['url']}/api/v1/in-use/{quote(settings['source'], safe='')}"
    try:
        response = session.put(
            url,
            json=report,
            headers={"Authorization": f"Bearer {settings['token']}"},
            timeout=TIMEOUT,
        )
    except requests.RequestException as error:
        stderr.write(f"error: could not reach hubimages at {settings['url']}: {error}\n")
        return 1
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    if response.status_code != 200:
        error = answer.get("error", {}) if isinstance(answer, dict) else {}
        message = error.get("message") or response.reason
        stderr.write(f"error: hubimages answered {response.status_code}: {message}\n")
        for problem in (error.get("fields") or [])[:20]:
            stderr.write(f"  {problem.get('field')}: {problem.get('message')}\n")
        return 1
    stdout.write(_summary(answer, len(report["images"])) + "\n")
    for item in answer.get("unresolved", [])[:20]:
        stderr.write(
            f"unknown to hubimages: {item['reference']} ({item['where']}): {item['reason']}\n"
        )
    return 0


def _summary(answer: dict, sent: int) -> str:
    others = answer.get("other_registries") or {}
    text = (
        f"Sent {sent} images as source {answer.get('source')}: hubimages keeps "
        f"{answer.get('references')} on the registries it serves, until {answer.get('expires_at')}"
    )
    if others:
        hosts = ", ".join(f"{host} ×{count}" for host, count in sorted(others.items())[:10])
        text += f"; on other registries: {hosts}"
    if answer.get("unresolved"):
        text += f"; {len(answer['unresolved'])} tags unknown to hubimages"
    return text


if __name__ == "__main__":
    sys.exit(main())
