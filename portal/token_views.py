"""Personal access token pages: list your tokens, create one (shown once), revoke."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from portal import tokens
from portal.audit import Actor
from portal.errors import ApplicationError
from portal.forms import ExpiryForm
from portal.permissions import capability_required
from portal.roles import SCOPE_REQUIRES, SCOPES, user_can

NEW_TOKEN_SESSION = "portal:new-access-token"  # noqa: S105 - a session key name


class TokenForm(ExpiryForm):
    field_order = ["name", "scopes", "expires_on"]

    name = forms.CharField(max_length=100)
    scopes = forms.MultipleChoiceField(
        choices=[(s, s) for s in SCOPES], widget=forms.CheckboxSelectMultiple
    )

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        # Offer only the scopes the user's roles allow; the service checks again.
        self.fields["scopes"].choices = [
            (s, s) for s in SCOPES if user_can(user, SCOPE_REQUIRES[s])
        ]


@capability_required("view")
def token_list(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = TokenForm(request.POST, user=request.user)
        if form.is_valid():
            try:
                token, raw = tokens.access_token_create(
                    user=request.user,
                    actor=Actor.from_request(request),
                    name=form.cleaned_data["name"],
                    scopes=form.cleaned_data["scopes"],
                    expires_at=form.expires_at(),
                )
            except ApplicationError as exc:
                form.add_error(None, exc.message)
            else:
                # POST/redirect/GET, the secret riding in the session to that one page.
                request.session[NEW_TOKEN_SESSION] = {"name": token.name, "secret": raw}
                messages.success(
                    request, f"Token '{token.name}' created. Copy it now: it is not shown again."
                )
                return redirect("token-list")
    else:
        form = TokenForm(user=request.user)
    created = request.session.pop(NEW_TOKEN_SESSION, None)
    response = render(
        request,
        "portal/token_list.html",
        {
            "tokens": tokens.access_token_list(user=request.user),
            "form": form,
            "created": created,
        },
    )
    if created:
        response["Cache-Control"] = "no-store"
    return response


@require_POST
@capability_required("view")
def token_revoke(request: HttpRequest, prefix: str) -> HttpResponse:
    try:
        token = tokens.access_token_get(user=request.user, prefix=prefix)
    except ApplicationError:
        messages.error(request, "No such token.")
    else:
        tokens.access_token_revoke(token=token, actor=Actor.from_request(request))
        messages.success(request, f"Token {prefix}… revoked.")
    return redirect("token-list")
