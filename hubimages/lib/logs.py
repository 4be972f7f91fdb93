"""What every log line goes through: `LOG_FORMAT=json` (one JSON object per line, for log
collectors), and the redaction of credentials a client put in a URL."""

import json
import logging
import re
from datetime import UTC, datetime

# Query parameters that carry credentials: the API refuses them (tokens go in the
# Authorization header), but the request line reaches the access log first.
SECRET_PARAMETERS = (
    "token",
    "access_token",
    "auth_token",
    "api_key",
    "apikey",
    "password",
    "secret",
    "client_secret",
)
_SECRET_PARAMETER = re.compile(
    rf"(?<![\w-])((?:{'|'.join(SECRET_PARAMETERS)})=)[^&;\s\"']*", re.IGNORECASE
)
# A personal access token anywhere else (a path, a referer): the first 12 characters, which
# the tokens page shows, stay to tell which token it was; the secret part goes.
_TOKEN = re.compile(r"(hubi_[\w-]{7})[\w-]+")
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """`text` without the values of credential parameters and without tokens."""
    text = _SECRET_PARAMETER.sub(rf"\1{REDACTED}", text)
    return _TOKEN.sub(rf"\1{REDACTED}", text)


class RedactSecrets(logging.Filter):
    """Every record's message, redacted (`redact`) before any handler writes it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: the handler reports it as logging does
            return True
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        status = getattr(record, "status_code", None)
        if status is not None:
            entry["status"] = status
        return json.dumps(entry, default=str)
