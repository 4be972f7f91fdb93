"""gunicorn's settings for the web process (`--config python:hubimages.gunicorn_conf`, as
the Procfile starts it): what gunicorn writes and answers by itself, before Django.

- Its access log prints each request line, query string included, and its error log the
  lines it refuses: both go through `redact`, so a token a client put in a URL (the API
  refuses `?token=`, but only after the line was logged) never lands in a log.
- It refuses a request line longer than `limit_request_line` (414) and headers over
  `limit_request_field_size` or `limit_request_fields` (431) before any application code
  runs, so before the path is known: the worker answers those with the API's JSON error
  shape, whatever the path, instead of gunicorn's HTML page. A proxy in front answers its
  own limits itself (nginx's `large_client_header_buffers`, `client_max_body_size`);
  those answers never reach hubimages.
"""

from __future__ import annotations

import json

from gunicorn import glogging, util
from gunicorn.http.errors import LimitRequestHeaders, LimitRequestLine
from gunicorn.workers import sync

from hubimages.lib.logs import RedactSecrets

_REDACT = RedactSecrets()


class Logger(glogging.Logger):
    """gunicorn's logger, its access and error lines redacted."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            log.addFilter(_REDACT)  # one instance: a reload (HUP) does not add a second


class SyncWorker(sync.SyncWorker):
    """gunicorn's sync worker; a request line or headers too large get a JSON answer.
    (Named like gunicorn's own, so `--threads N` still switches to its threaded worker,
    which answers these in HTML.)"""

    def handle_error(self, req, client, addr, exc) -> None:
        if isinstance(exc, LimitRequestLine):
            answer = _json_error(
                414,
                "URI Too Long",
                "uri_too_long",
                f"the request line is longer than {self.cfg.limit_request_line} bytes",
            )
        elif isinstance(exc, LimitRequestHeaders):
            answer = _json_error(
                431,
                "Request Header Fields Too Large",
                "headers_too_large",
                f"the request has more than {self.cfg.limit_request_fields} headers, or one "
                f"longer than {self.cfg.limit_request_field_size} bytes",
            )
        else:
            super().handle_error(req, client, addr, exc)
            return
        self.log.warning("Invalid request from ip=%s: %s", (addr or ("",))[0], exc)
        try:
            util.write_nonblock(client, answer)
        except Exception:
            self.log.debug("Failed to send error message.")


def _json_error(status: int, reason: str, code: str, message: str) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


logger_class = Logger
worker_class = "hubimages.gunicorn_conf.SyncWorker"
