"""The provider's own pages: the discovery document (with its switch), and the control
endpoints the tests call to set up the client, people and groups, and the switches.
Control needs the bearer token the parent made for this run."""

import json
import secrets

from django.conf import settings
from django.contrib.auth.models import Group, User
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.html import escape
from django.views.decorators.csrf import csrf_exempt
from oauth2_provider.models import get_application_model
from oauth2_provider.views import ConnectDiscoveryInfoView

from devtools.oidc_provider import switches


class Discovery(ConnectDiscoveryInfoView):
    def get(self, request, *args, **kwargs):
        response = super().get(request, *args, **kwargs)
        wrong = switches.current()["discovery_issuer"]
        if wrong:
            document = json.loads(response.content)
            document["issuer"] = wrong
            return JsonResponse(document)
        return response


def _control(view):
    @csrf_exempt
    def wrapper(request: HttpRequest):
        expected = f"Bearer {settings.CONTROL_TOKEN}"
        if not secrets.compare_digest(request.headers.get("Authorization", ""), expected):
            return JsonResponse({"error": "control token needed"}, status=401)
        return view(request, json.loads(request.body or b"{}"))

    return wrapper


@_control
def client(request, body):
    """Create or update the one client: its redirect URIs and secret."""
    model = get_application_model()
    app, _ = model.objects.get_or_create(
        client_id=body["client_id"],
        defaults={
            "name": "hubimages",
            "client_type": model.CLIENT_CONFIDENTIAL,
            "authorization_grant_type": model.GRANT_AUTHORIZATION_CODE,
            "algorithm": model.RS256_ALGORITHM,
            "skip_authorization": True,
        },
    )
    app.redirect_uris = " ".join(body["redirect_uris"])
    app.client_secret = body["client_secret"]
    app.save()
    return JsonResponse({"client_id": app.client_id})


@_control
def user(request, body):
    """Create or update a person, and set their groups (a list of names, replaced whole)."""
    person, _ = User.objects.get_or_create(username=body["username"])
    if "password" in body:
        person.set_password(body["password"])
    person.email = body.get("email", person.email)
    person.save()
    if "groups" in body:
        person.groups.set([Group.objects.get_or_create(name=name)[0] for name in body["groups"]])
    return JsonResponse({"username": person.username, "id": person.pk})


@_control
def switch(request, body):
    try:
        return JsonResponse(switches.write(body))
    except ValueError as error:
        return JsonResponse({"error": str(error)}, status=400)


def pause_redirects(get_response):
    """Middleware: with the `pause_redirects` switch, a redirect away from the provider
    becomes a page with a link to its target."""

    def middleware(request: HttpRequest):
        response = get_response(request)
        location = response.get("Location", "")
        leaves = location.startswith("http") and not location.startswith(
            request.build_absolute_uri("/")
        )
        if response.status_code == 302 and leaves and switches.current()["pause_redirects"]:
            return HttpResponse(
                '<!doctype html><html lang="en"><head><title>Back to the application</title>'
                f'</head><body><main><a id="continue" href="{escape(location)}">Continue</a>'
                "</main></body></html>"
            )
        return response

    return middleware
