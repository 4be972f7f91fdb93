"""The image's HEALTHCHECK: exit 0 when this container does its job, 1 when it does not.

One image runs every role, so the check looks at what runs in the container: where
gunicorn runs (the `web` role), `GET /healthz` on $PORT must answer 200 with status "ok"
(it answers 503 when the database does not); where the task worker runs, its process
must be alive. Standard library only, so the image needs no curl.
"""

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path


def commands() -> list[str]:
    """The command line of every process this container can see."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue  # ended meanwhile
    return found


def web_health(host: str, port: str) -> str | None:
    """None when /healthz says ok, else what is wrong."""
    url = f"http://{host}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            body = json.load(response)
    except urllib.error.HTTPError as error:
        return f"{url} answered {error.code}"
    except (OSError, ValueError) as error:
        return f"{url}: {error}"
    if body.get("status") != "ok":
        return f"{url} says {body}"
    return None


def main() -> int:
    running = commands()
    if any("gunicorn" in command for command in running):
        bound = os.environ.get("BIND_ADDRESS", "")
        host = "127.0.0.1" if bound in ("", "0.0.0.0", "::", "[::]") else bound
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 address
        problem = web_health(host, os.environ.get("PORT") or "8000")
    elif any("db_worker" in command for command in running):
        problem = None
    else:
        problem = "neither the web server nor a task worker runs in this container"
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
