"""Settings, read from the environment through strict helpers: a junk value is an error."""

import ipaddress
import os
import secrets
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

from hubimages.registries.config import read_registries_file

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


def env_networks(name: str) -> list[str]:
    """Comma-separated IP addresses or CIDR ranges, each checked (`10.0.0.0/8,192.0.2.7`)."""
    networks = []
    for item in env_list(name, []):
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ImproperlyConfigured(
                f"{name} must list IP addresses or CIDR ranges, such as 10.0.0.0/8, not {item!r}"
            ) from None
    return networks


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


def env_secret(name: str) -> str:
    """A secret from `NAME`, or from the file `NAME_FILE` names (as Kubernetes and Docker
    mount secrets); both set is an error."""
    value, path = os.environ.get(name, ""), env_str(f"{name}_FILE")
    if value and path:
        raise ImproperlyConfigured(f"set {name} or {name}_FILE, not both")
    if not path:
        return value.strip()
    try:
        return Path(path).read_text().strip()
    except OSError as error:
        raise ImproperlyConfigured(f"{name}_FILE: cannot read {path}: {error.strerror}") from None


def env_issuer(name: str) -> str:
    """An OpenID Connect issuer: https (http only on loopback, for tests and demos), no
    credentials, no query; kept as written, since it is compared with the provider's."""
    raw = env_str(name)
    if not raw:
        return ""
    parts = urlsplit(raw)
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if not parts.hostname or parts.scheme not in ("https", "http") or parts.query:
        raise ImproperlyConfigured(f"{name} must be the issuer's URL, e.g. https://sso.example.com")
    if parts.scheme == "http" and not loopback:
        raise ImproperlyConfigured(f"{name} must be https (http only on a loopback address)")
    if parts.username or parts.password:
        raise ImproperlyConfigured(f"{name} must not hold credentials: use OIDC_CLIENT_SECRET")
    return raw


def oidc_providers(*, issuer: str, client_id: str, secret: str, name: str, scopes: list[str]):
    """django-allauth's `SOCIALACCOUNT_PROVIDERS`: one OpenID Connect provider (its id in
    URLs is `oidc`) when `issuer` is set, none otherwise, with PKCE, the userinfo read at
    each sign-in, and hubimages's provider class (a nonce, the issuer checked:
    `hubimages.accounts.oidc`), which allauth registers once, configured or not."""
    return {
        "openid_connect": {
            "provider_class": "hubimages.accounts.oidc.Provider",
            "OAUTH_PKCE_ENABLED": True,
            "APPS": [
                {
                    "provider_id": OIDC_PROVIDER_ID,
                    "name": name,
                    "client_id": client_id,
                    "secret": secret,
                    "settings": {
                        "server_url": issuer,
                        "oauth_pkce_enabled": True,
                        "fetch_userinfo": True,
                        "scope": scopes,
                    },
                }
            ]
            if issuer
            else [],
        }
    }


def oidc_form_action(issuer: str) -> list[str]:
    """The provider's origin, for the CSP's `form-action`: "Sign in with …" is a form whose
    answer redirects there, and browsers hold a form's redirects to that list too."""
    if not issuer:
        return []
    parts = urlsplit(issuer)
    return [f"{parts.scheme}://{parts.netloc}"]


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
            "CONN_HEALTH_CHECKS": True,
            # ?sslmode=verify-full&connect_timeout=5 and the like go to libpq as they are.
            "OPTIONS": dict(parse_qsl(parts.query)),
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
    if not DEBUG:
        # Several web workers (or hosts) with keys of their own would log each other's
        # users out, and a restart would end every session.
        raise ImproperlyConfigured(
            "SECRET_KEY must be set when DEBUG is false: give every web and worker process "
            "the same long random value, e.g. from "
            "`python -c 'import secrets; print(secrets.token_urlsafe(50))'`"
        )
    SECRET_KEY = secrets.token_urlsafe(50)  # development only: sessions end at restart
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
# The proxies in front of the web processes: only a request from one of them says, in
# X-Forwarded-For, which client it carries (`hubimages.lib.addresses`).
TRUSTED_PROXIES = env_networks("TRUSTED_PROXIES")

REGISTRY_URL = env_url("REGISTRY_URL")
REGISTRY_USERNAME = env_str("REGISTRY_USERNAME")
REGISTRY_PASSWORD = os.environ.get("REGISTRY_PASSWORD", "")
REGISTRY_EVENTS_TOKEN = env_str("REGISTRY_EVENTS_TOKEN")
# For registries whose catalog API is closed to us (Docker Hub, GHCR): what to sync instead.
REGISTRY_REPOSITORIES = env_list("REGISTRY_REPOSITORIES", [])
# Several registries, declared as code (SPEC §11): a JSON list read (secrets included,
# from the environment or files it names) once, at start. Without it, REGISTRY_URL alone
# is the one registry `default`.
REGISTRIES_FILE = env_str("REGISTRIES_FILE")
REGISTRIES = read_registries_file(REGISTRIES_FILE) if REGISTRIES_FILE else None
if REGISTRIES is not None and REGISTRY_URL:
    raise ImproperlyConfigured(
        "REGISTRY_URL and REGISTRIES_FILE are both set: declare every registry in the file "
        "(name the one REGISTRY_URL was `default`), and unset REGISTRY_URL"
    )
REGISTRY_TIMEOUT = env_int("REGISTRY_TIMEOUT", 30, minimum=1)
# The whole of one request (retries, waits and a trickled body included), in seconds.
REGISTRY_DEADLINE = env_int("REGISTRY_DEADLINE", 60, minimum=1)
SYNC_WORKERS = env_int("SYNC_WORKERS", 8, minimum=1)
STALE_AFTER_MONTHS = env_int("STALE_AFTER_MONTHS", 6, minimum=1)
PULL_IGNORE_USER_AGENTS = env_list(
    "PULL_IGNORE_USER_AGENTS", ["trivy", "clair", "grype", "snyk", "harbor-scanner"]
)
# The workers run a full sync this often (0: never; then run `sync_registry` yourself).
SYNC_INTERVAL_MINUTES = env_int("SYNC_INTERVAL_MINUTES", 15)
# Processed registry events are forgotten after this many days.
EVENTS_KEEP_DAYS = env_int("EVENTS_KEEP_DAYS", 7, minimum=1)
# Deleted manifests' bytes are kept this long, restorable until the collector runs.
TRASH_KEEP_DAYS = env_int("TRASH_KEEP_DAYS", 14, minimum=1)
# A lock (a repository's, the full sync's) whose holder stopped renewing it for this long
# may be taken over; a worker silent for this long is dead and its task recovered.
LOCK_LEASE_SECONDS = env_int("LOCK_LEASE_SECONDS", 60, minimum=2)
WORKER_LEASE_SECONDS = env_int("WORKER_LEASE_SECONDS", 60, minimum=2)
PAGE_SIZES = (10, 25, 50, 100)
PAGE_SIZE = env_int("PAGE_SIZE", 25, minimum=1)
if PAGE_SIZE not in PAGE_SIZES:
    raise ImproperlyConfigured(f"PAGE_SIZE must be one of {PAGE_SIZES}, not {PAGE_SIZE}")

# -- signing in (SPEC §14) -----------------------------------------------------------------
# Local accounts (username and password) and/or one OpenID Connect provider.
OIDC_PROVIDER_ID = "oidc"
OIDC_ISSUER = env_issuer("OIDC_ISSUER")
OIDC_CLIENT_ID = env_str("OIDC_CLIENT_ID")
OIDC_CLIENT_SECRET = env_secret("OIDC_CLIENT_SECRET")
OIDC_PROVIDER_NAME = env_str("OIDC_PROVIDER_NAME", "single sign-on") or "single sign-on"
OIDC_SCOPES = env_list("OIDC_SCOPES", ["openid", "profile", "email"])
# Where the groups are, in the ID token or else in userinfo: `groups`, `realm_access.roles`.
OIDC_GROUPS_CLAIM = env_str("OIDC_GROUPS_CLAIM", "groups") or "groups"
LOCAL_ACCOUNTS = env_bool("LOCAL_ACCOUNTS", True)
if OIDC_ISSUER and not OIDC_CLIENT_ID:
    raise ImproperlyConfigured("OIDC_ISSUER needs OIDC_CLIENT_ID (and usually OIDC_CLIENT_SECRET)")
if not OIDC_ISSUER and (OIDC_CLIENT_ID or OIDC_CLIENT_SECRET):
    raise ImproperlyConfigured("OIDC_CLIENT_ID and OIDC_CLIENT_SECRET need OIDC_ISSUER")
if "openid" not in OIDC_SCOPES:
    raise ImproperlyConfigured("OIDC_SCOPES must include openid")
if not LOCAL_ACCOUNTS and not OIDC_ISSUER:
    raise ImproperlyConfigured("LOCAL_ACCOUNTS=false needs OIDC_ISSUER: nobody could sign in")
SOCIALACCOUNT_PROVIDERS = oidc_providers(
    issuer=OIDC_ISSUER,
    client_id=OIDC_CLIENT_ID,
    secret=OIDC_CLIENT_SECRET,
    name=OIDC_PROVIDER_NAME,
    scopes=OIDC_SCOPES,
)
SOCIALACCOUNT_ADAPTER = "hubimages.accounts.oidc.SocialAccountAdapter"
ACCOUNT_ADAPTER = "hubimages.accounts.oidc.AccountAdapter"
# People come from the provider: made at their first sign-in, never asked for a form, never
# matched to a local account by their email (that would let the provider's users take
# over local accounts).
SOCIALACCOUNT_AUTO_SIGNUP = True
SOCIALACCOUNT_EMAIL_AUTHENTICATION = False
SOCIALACCOUNT_EMAIL_VERIFICATION = "none"
SOCIALACCOUNT_STORE_TOKENS = False
ACCOUNT_EMAIL_VERIFICATION = "none"
ACCOUNT_UNIQUE_EMAIL = False

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    # Before staticfiles: runserver leaves static files to WhiteNoise, as gunicorn does.
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_htmx",
    "axes",
    "allauth",
    "allauth.account",
    "allauth.socialaccount",
    "allauth.socialaccount.providers.openid_connect",
    # The API; listed so its docs page uses the Swagger UI files it ships, not a CDN.
    "ninja",
    # Before django_tasks_db: hubimages's db_worker extends django-tasks-db's.
    "hubimages",
    "django_tasks_db",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into its 429 answer.
    "axes.middleware.AxesMiddleware",
]

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    # ModelBackend, refusing passwords while LOCAL_ACCOUNTS is false.
    "hubimages.accounts.backends.LocalAccountsBackend",
]
# Failed logins: after 5 for one username from one address, that pair waits 15 minutes.
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("LOGIN_COOLOFF_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_RESET_ON_SUCCESS = True
# The client behind TRUSTED_PROXIES, read as the API's token limit reads it.
AXES_CLIENT_IP_CALLABLE = "hubimages.lib.addresses.client_address"
AXES_VERBOSE = False

TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}

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
                "hubimages.web.context_processors.registry",
            ],
            # The template tags live with the pages they serve (hubimages/web/).
            "libraries": {"hubimages_tags": "hubimages.web.templatetags"},
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
# WhiteNoise serves what collectstatic wrote: compressed, with hashed names cached forever;
# before collectstatic, the source's files as they are (`hubimages.staticfiles`).
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "hubimages.staticfiles.StaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"

# One switch for deployments behind HTTPS (a TLS-terminating proxy that sets
# X-Forwarded-Proto): secure cookies, HSTS, and redirects from plain HTTP.
HTTPS = env_bool("HTTPS", False)
if HTTPS:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    SECURE_HSTS_SECONDS = 31_536_000
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    # Preloading is a commitment for the whole domain, its owner's to make, not ours.
    SILENCED_SYSTEM_CHECKS = ["security.W021"]

# Scripts and styles come from our own static files only: no inline code, no eval.
SECURE_CSP = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'", "data:"],
    "connect-src": ["'self'"],
    "object-src": ["'none'"],
    "base-uri": ["'none'"],
    "form-action": ["'self'", *oidc_form_action(OIDC_ISSUER)],
    "frame-ancestors": ["'none'"],
}

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
LOG_FORMAT = env_str("LOG_FORMAT", "text").lower()
if LOG_FORMAT not in ("text", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be text or json, not {LOG_FORMAT!r}")
# Everything goes to the root logger's one handler on standard error, with a timestamp;
# Django's own loggers propagate there, so every 500 is logged with its traceback.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s %(process)d: %(message)s"},
        "json": {"()": "hubimages.lib.logs.JsonFormatter"},
    },
    # A token a client put in a URL (runserver's request lines) is redacted from every line.
    "filters": {"redact": {"()": "hubimages.lib.logs.RedactSecrets"}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["redact"],
        }
    },
    "root": {"handlers": ["stderr"], "level": LOG_LEVEL},
    "loggers": {
        "django": {"level": "INFO"},
        "django.request": {"level": "WARNING"},
        "django.server": {"handlers": [], "propagate": True},
        "axes": {"level": "WARNING"},
    },
}
