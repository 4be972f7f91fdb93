"""The provider's test switches, in a JSON file the control endpoint writes and every
request reads, so a test changes the provider's answers while it runs:

- `groups_in`: `id_token` (the default), `userinfo` (GitLab's way) or `both`;
- `groups_claim`: where the groups go, a dotted path (`groups`, `realm_access.roles`);
- `group_prefix`: written before each group name (Keycloak's full paths start with `/`);
- `id_token_nonce`: a nonce written into ID tokens instead of the one asked for;
- `id_token_issuer`: an `iss` written into ID tokens instead of the issuer's;
- `discovery_issuer`: an `issuer` the discovery document names instead of the real one;
- `pause_redirects`: instead of redirecting the browser back to the application, show a
  page with a "Continue" link to where it would have gone (a test can read, change and
  follow it: browsers hand redirects to nobody).
"""

import json

from django.conf import settings

DEFAULTS = {
    "groups_in": "id_token",
    "groups_claim": "groups",
    "group_prefix": "",
    "id_token_nonce": None,
    "id_token_issuer": None,
    "discovery_issuer": None,
    "pause_redirects": False,
}


def path():
    return settings.STATE / "switches.json"


def current() -> dict:
    try:
        return {**DEFAULTS, **json.loads(path().read_text())}
    except FileNotFoundError:
        return dict(DEFAULTS)


def write(values: dict) -> dict:
    unknown = set(values) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown switches: {', '.join(sorted(unknown))}")
    merged = {**DEFAULTS, **values}
    path().write_text(json.dumps(merged))
    return merged
