"""Settings, read from the environment through strict helpers: a junk value is an error."""

import os
import secrets
from pathlib import Path
from urllib.parse import unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
# A checkout keeps its SQLite file and collected static files beside manage.py; an
# installed copy (`pip install .`) keeps them in the directory it runs from.
PROJECT_DIR = BASE_DIR if (BASE_DIR / "manage.py").exists() else Path.cwd()

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be one of {_TRUE + _FALSE[:-1]}, not {raw!r}")


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, not {raw!r}") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {value}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_url(name: str) -> str:
    raw = env_str(name)
    if not raw:
        return ""
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ImproperlyConfigured(
            f"{name} must be an http(s) URL such as https://registry.example.com"
        )
    if parts.username or parts.password:
        raise ImproperlyConfigured(
            f"{name} must not hold credentials: use REGISTRY_USERNAME and REGISTRY_PASSWORD"
        )
    return raw.rstrip("/")


def database_from_url(url: str) -> dict:
    """Parse `DATABASE_URL` (postgres://user:pass@host:port/name or sqlite:///path)."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = unquote(parts.path)
        if not path:
            return _sqlite(PROJECT_DIR / "db.sqlite3")
        return _sqlite(Path(path[1:] if path.startswith("//") else path))
    if parts.scheme in ("postgres", "postgresql"):
        name = unquote(parts.path.lstrip("/"))
        if not name:
            raise ImproperlyConfigured("DATABASE_URL must name the database: postgres://…/NAME")
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
            "CONN_MAX_AGE": 60,
        }
    raise ImproperlyConfigured("DATABASE_URL must start with postgres:// or sqlite:///")


def _sqlite(path: Path) -> dict:
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": path,
        # A file, not shared-cache memory, so the live server's threads and the events
        # worker wait for locks (busy timeout) instead of failing "table is locked".
        "TEST": {"NAME": str(path.with_name(f"test-{path.stem}.sqlite3"))},
        "OPTIONS": {
            # Events, syncs and page views write at once: wait for the lock, take it up front.
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
    }


DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    # A key made per process: safe, but sessions end when the server restarts.
    SECRET_KEY = secrets.token_urlsafe(50)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

REGISTRY_URL = env_url("REGISTRY_URL")
REGISTRY_USERNAME = env_str("REGISTRY_USERNAME")
REGISTRY_PASSWORD = os.environ.get("REGISTRY_PASSWORD", "")
REGISTRY_EVENTS_TOKEN = env_str("REGISTRY_EVENTS_TOKEN")
# For registries whose catalog API is closed to us (Docker Hub, GHCR): what to sync instead.
REGISTRY_REPOSITORIES = env_list("REGISTRY_REPOSITORIES", [])
REGISTRY_TIMEOUT = env_int("REGISTRY_TIMEOUT", 30, minimum=1)
# The whole of one request (retries, waits and a trickled body included), in seconds.
REGISTRY_DEADLINE = env_int("REGISTRY_DEADLINE", 60, minimum=1)
SYNC_WORKERS = env_int("SYNC_WORKERS", 8, minimum=1)
STALE_AFTER_MONTHS = env_int("STALE_AFTER_MONTHS", 6, minimum=1)
PULL_IGNORE_USER_AGENTS = env_list(
    "PULL_IGNORE_USER_AGENTS", ["trivy", "clair", "grype", "snyk", "harbor-scanner"]
)
PAGE_SIZES = (10, 25, 50, 100)
PAGE_SIZE = env_int("PAGE_SIZE", 25, minimum=1)
if PAGE_SIZE not in PAGE_SIZES:
    raise ImproperlyConfigured(f"PAGE_SIZE must be one of {PAGE_SIZES}, not {PAGE_SIZE}")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_htmx",
    "hubimages",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "hubimages.urls"
WSGI_APPLICATION = "hubimages.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "hubimages.context_processors.registry",
            ],
        },
    },
]

DATABASES = {
    "default": database_from_url(env_str("DATABASE_URL"))
    if env_str("DATABASE_URL")
    else _sqlite(PROJECT_DIR / "db.sqlite3")
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "repositories"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
# The checkout's static/ and templates/; an installed copy carries them inside the
# hubimages package, where the app directories loaders find them.
STATICFILES_DIRS = [path for path in [BASE_DIR / "static"] if path.is_dir()]
STATIC_ROOT = Path(env_str("STATIC_ROOT") or PROJECT_DIR / ".static")

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "hubimages": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO").upper()},
        "registry": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO").upper()},
    },
}
