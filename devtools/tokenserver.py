"""A small Docker token server, for running a real registry with `auth: token`.

Docker Hub, GHCR, Harbor and GitLab answer `401` with a `Bearer realm=…,service=…,scope=…`
challenge; the client asks the realm for a token (Basic credentials, the scopes it needs)
and sends it back as `Authorization: Bearer`. This server plays the realm for a
`devtools.server.LocalRegistry(token_auth=server)`: it signs JWTs (ES256) with a key made
when it starts, and the registry trusts them through the certificate it writes
(`rootcertbundle`). Each account may do only what `grants` allows; a scope asking for more
gets the allowed part only (maybe nothing), and the registry then refuses the request, as
a real token server and registry do::

    with TokenServer({"ci": Account("s3cret", {"team/*": {"pull"}})}) as tokens, \\
            LocalRegistry(tmp, token_auth=tokens) as registry:
        RegistryClient(registry.url, username="ci", password="s3cret")

`valid_for` (seconds) sets how long the registry honours a token, whatever `expires_in`
says to the client, so a test can make tokens die mid-sync.
"""

from __future__ import annotations

import base64
import datetime
import fnmatch
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

import requests
import requests.auth
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

SERVICE = "hubimages-test-registry"
ISSUER = "hubimages-test-token-server"
# distribution accepts a token for this long after its `exp` (clock skew allowance).
REGISTRY_LEEWAY = 60
_REPOSITORY_PATH = re.compile(r"^/v2/(.+?)/(?:blobs|manifests|tags)/")


@dataclass
class Account:
    """A password and what it may do: repository glob -> actions (`pull`, `push`,
    `delete`, `*`); `catalog` lets it read `/v2/_catalog`."""

    password: str
    grants: dict[str, set[str]] = field(default_factory=dict)
    catalog: bool = False

    def allowed(self, repository: str, actions: list[str]) -> list[str]:
        granted: set[str] = set()
        for pattern, allowed in self.grants.items():
            if fnmatch.fnmatchcase(repository, pattern):
                granted |= {"pull", "push", "delete"} if "*" in allowed else allowed
        return [action for action in actions if action in granted]


@dataclass
class Issued:
    """One token request, as the tests inspect it."""

    account: str | None
    scopes: list[str]
    granted: list[dict]


class TokenServer:
    def __init__(
        self,
        accounts: dict[str, Account],
        *,
        anonymous: Account | None = None,
        expires_in: int = 300,
        valid_for: float | None = None,
    ) -> None:
        self.accounts = accounts
        self.anonymous = anonymous
        self.expires_in = expires_in
        self.valid_for = valid_for
        self.issued: list[Issued] = []
        self.refused = 0
        self._lock = threading.Lock()
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._certificate = _self_signed(self._key)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def realm(self) -> str:
        assert self._server is not None, "start the token server first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/token"

    def write_certificate(self, path: Path) -> Path:
        """The `rootcertbundle` the registry verifies tokens with."""
        path.write_bytes(self._certificate.public_bytes(serialization.Encoding.PEM))
        return path

    def registry_auth(self, certificate: Path, *, realm: str | None = None) -> dict:
        """The registry configuration's `auth` section."""
        return {
            "token": {
                "realm": realm or self.realm,
                "service": SERVICE,
                "issuer": ISSUER,
                "rootcertbundle": str(self.write_certificate(certificate)),
            }
        }

    def start(self) -> TokenServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.tokens = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> TokenServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def auth_for(self, username: str) -> requests.auth.AuthBase:
        """requests auth for test helpers (the image pusher): each request carries a token
        for its repository with what `username` may do, signed in-process, unrecorded."""
        account = self.accounts[username]

        def sign(request: requests.PreparedRequest) -> requests.PreparedRequest:
            match = _REPOSITORY_PATH.match(urlsplit(request.url or "").path)
            if match:
                scope = f"repository:{match.group(1)}:pull,push,delete"
                claims = self._claims(username, SERVICE, [self._grant(account, scope)])
                request.headers["Authorization"] = f"Bearer {self._sign(claims)}"
            return request

        return _CallableAuth(sign)

    def tokens_for(self, scope: str) -> int:
        """How many tokens were issued for requests naming `scope`."""
        with self._lock:
            return sum(1 for issued in self.issued if scope in issued.scopes)

    # -- issuing ---------------------------------------------------------------------

    def issue(self, authorization: str | None, service: str, scopes: list[str]) -> dict | None:
        """The token answer, or None when the credentials are wrong (401)."""
        name, account = self._account(authorization)
        if account is None:
            with self._lock:
                self.refused += 1
            return None
        access = [grant for scope in scopes if (grant := self._grant(account, scope))]
        claims = self._claims(name, service, access)
        with self._lock:
            self.issued.append(Issued(name, scopes, access))
        return {
            "token": self._sign(claims),
            "expires_in": self.expires_in,
            "issued_at": datetime.datetime.now(datetime.UTC).isoformat(),
        }

    def _claims(self, name: str | None, service: str, access: list) -> dict:
        now = int(time.time())
        valid_for = self.expires_in if self.valid_for is None else self.valid_for
        return {
            "iss": ISSUER,
            "sub": name or "",
            "aud": service,
            "iat": now,
            "nbf": now - 1,
            # The registry allows REGISTRY_LEEWAY past `exp`: take it off, so the token
            # stops working `valid_for` seconds from now.
            "exp": int(now + valid_for - REGISTRY_LEEWAY),
            "jti": secrets.token_hex(8),
            "access": access,
        }

    def _account(self, authorization: str | None) -> tuple[str | None, Account | None]:
        if not authorization:
            return None, self.anonymous
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "basic":
            return None, None
        try:
            username, _, password = base64.b64decode(value).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None, None
        account = self.accounts.get(username)
        if account is None or not secrets.compare_digest(account.password, password):
            return username, None
        return username, account

    def _grant(self, account: Account, scope: str) -> dict | None:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        wanted = [action for action in actions.split(",") if action]
        if kind == "registry" and name == "catalog":
            granted = wanted if account.catalog else []
        elif kind == "repository":
            granted = account.allowed(name, wanted)
        else:
            return None
        return {"type": kind, "name": name, "actions": granted}

    def _sign(self, claims: dict) -> str:
        der = self._certificate.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(der).decode()]}
        signing_input = f"{_b64(json.dumps(header))}.{_b64(json.dumps(claims))}"
        r, s = decode_dss_signature(
            self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        )
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return f"{signing_input}.{_b64(signature)}"


class _Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def do_GET(self) -> None:
        tokens: TokenServer = self.server.tokens  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        if parts.path != "/token":
            self._answer(404, {"errors": [{"code": "NOT_FOUND", "message": "no such path"}]})
            return
        query = parse_qs(parts.query)
        scopes = [scope for value in query.get("scope", []) for scope in value.split(" ")]
        answer = tokens.issue(
            self.headers.get("Authorization"), query.get("service", [""])[0], scopes
        )
        if answer is None:
            self._answer(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad login"}]})
        else:
            self._answer(200, answer)

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _CallableAuth(requests.auth.AuthBase):
    def __init__(self, sign) -> None:
        self.sign = sign

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return self.sign(request)


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _self_signed(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
