"""Where a request comes from, for every limit and the audit log (SPEC §7, §14): the one
place that computes a client's address.

Behind a TLS proxy every request arrives from the proxy's address: counted on
`REMOTE_ADDR`, all clients would be one, one guesser would lock out everyone, and the
audit log would name the proxy. The address the proxy saw is in `X-Forwarded-For`, but
any client can write that header, so it is read only when the request comes from a proxy
listed in `TRUSTED_PROXIES`, and then only what trusted proxies wrote: each appends the
address it saw, so walking from the right past every trusted proxy, the first address is
the client's. django-ipware reads the header (lists, ports, brackets, junk entries); this
module decides how far to trust it.

django-axes reads the address of sign-ins through this same function
(`AXES_CLIENT_IP_CALLABLE`), so sign-ins, tokens and the audit log agree on it.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from django.conf import settings
from django.http import HttpRequest
from ipware import get_client_ip

# More proxies than this in a row is not a deployment but a header someone wrote.
MAX_PROXIES = 10
MAX_LENGTH = 64  # what the audit log and the token limit store
HEADER = "HTTP_X_FORWARDED_FOR"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_address(request: HttpRequest) -> str:
    """The address of whoever sent `request`: `REMOTE_ADDR`, or behind trusted proxies the
    address the first of them saw; "" when the server gave none."""
    remote = (request.META.get("REMOTE_ADDR") or "").strip()[:MAX_LENGTH]
    networks = _networks(tuple(settings.TRUSTED_PROXIES))
    if not remote or not _trusted(remote, networks):
        return remote
    address = remote
    for hops in range(MAX_PROXIES):
        # The entry `hops` places from the right of X-Forwarded-For, or None past its start.
        found, _ = get_client_ip(
            request,
            proxy_count=hops,
            request_header_order=[HEADER],
            strict=False,
            algorithm="modern",
        )
        if found is None:
            break
        address = found
        if not _trusted(found, networks):
            break
    return address[:MAX_LENGTH]


@lru_cache(maxsize=8)
def _networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def _trusted(address: str, networks: tuple[Network, ...]) -> bool:
    if not networks:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip.version == network.version and ip in network for network in networks)
