"""django-oauth-toolkit's validator with the claims the tests need: the username, the
e-mail and the groups, placed as the switches say (`switches`)."""

from oauth2_provider.oauth2_validators import OAuth2Validator

from devtools.oidc_provider import switches


def nest(path: str, value) -> dict:
    """`realm_access.roles` -> {"realm_access": {"roles": value}}."""
    parts = path.split(".")
    out = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        out = {part: out}
    return out


def groups_claim(user, now: dict) -> dict:
    names = sorted(group.name for group in user.groups.all())
    return nest(now["groups_claim"], [now["group_prefix"] + name for name in names])


class Validator(OAuth2Validator):
    # Every claim whatever the scopes: the tests choose where groups go by switches.
    oidc_claim_scope = None

    def get_additional_claims(self, request):
        user = request.user
        return {
            "preferred_username": user.username,
            "email": user.email,
            "email_verified": True,
            "name": user.get_full_name() or user.username,
        }

    def get_id_token_dictionary(self, token, token_handler, request):
        claims, expiration = super().get_id_token_dictionary(token, token_handler, request)
        now = switches.current()
        if now["groups_in"] in ("id_token", "both"):
            claims.update(groups_claim(request.user, now))
        if now["id_token_issuer"]:
            claims["iss"] = now["id_token_issuer"]
        return claims, expiration

    def finalize_id_token(self, id_token, token, token_handler, request):
        now = switches.current()
        if now["id_token_nonce"]:
            id_token["nonce"] = now["id_token_nonce"]
        return super().finalize_id_token(id_token, token, token_handler, request)

    def get_userinfo_claims(self, request):
        claims = super().get_userinfo_claims(request)
        now = switches.current()
        if now["groups_in"] in ("userinfo", "both"):
            claims.update(groups_claim(request.user, now))
        return claims
