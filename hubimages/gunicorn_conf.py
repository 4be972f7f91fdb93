"""gunicorn's settings for the web process (`--config python:hubimages.gunicorn_conf`, as
the Procfile starts it): what gunicorn writes by itself, before Django.

Its access log prints each request line, query string included, and its error log the
lines it refuses: both go through `redact`, so a token a client put in a URL (the API
refuses `?token=`, but only after the line was logged) never lands in a log.
"""

from __future__ import annotations

from gunicorn import glogging

from hubimages.lib.logs import RedactSecrets

_REDACT = RedactSecrets()


class Logger(glogging.Logger):
    """gunicorn's logger, its access and error lines redacted."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            log.addFilter(_REDACT)  # one instance: a reload (HUP) does not add a second


logger_class = Logger
