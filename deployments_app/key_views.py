"""API key pages: list your keys, create one (shown once), revoke."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from deployments_app.models import ApiKey, Deployment
from deployments_app.predict import keys
from models_app.models import RegisteredModel
from portal import tables
from portal.audit import Actor
from portal.errors import ApplicationError
from portal.forms import ExpiryForm
from portal.permissions import capability_required
from portal.roles import user_can

NEW_KEY_SESSION = "portal:new-api-key"
KEY_COLUMNS = {
    "name": ("name",),
    "prefix": ("prefix",),
    "owner": ("user__username",),
    "expires": ("expires_at",),
    "last_used": ("last_used_at",),
    "created": ("created_at",),
}


class KeyForm(ExpiryForm):
    field_order = ["name", "deployments", "model", "expires_on"]

    name = forms.CharField(max_length=100)
    deployments = forms.MultipleChoiceField(required=False, widget=forms.SelectMultiple)
    model = forms.ChoiceField(required=False, help_text="Or every deployment of this model.")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["deployments"].choices = [
            (n, n) for n in Deployment.objects.order_by("name").values_list("name", flat=True)
        ]
        self.fields["model"].choices = [("", "no model")] + [
            (n, n) for n in RegisteredModel.objects.order_by("name").values_list("name", flat=True)
        ]


@capability_required("predict")
def key_list(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = KeyForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            try:
                key, raw = keys.api_key_create(
                    user=request.user,
                    actor=Actor.from_request(request),
                    name=data["name"],
                    deployment_names=data["deployments"],
                    model_name=data["model"],
                    expires_at=form.expires_at(),
                )
            except ApplicationError as exc:
                form.add_error(None, exc.message)
            else:
                # POST/redirect/GET: a reload of the next page must not create a second key.
                # The secret rides in the session to that one page, then is gone.
                request.session[NEW_KEY_SESSION] = {"name": key.name, "secret": raw}
                messages.success(
                    request, f"Key '{key.name}' created. Copy it now: it is not shown again."
                )
                return redirect("key-list")
    else:
        form = KeyForm()
    created = request.session.pop(NEW_KEY_SESSION, None)
    qs = ApiKey.objects.select_related("user", "model").prefetch_related("deployments")
    if not user_can(request.user, "admin"):
        qs = qs.filter(user=request.user)
    response = render(
        request,
        "deployments_app/key_list.html",
        {
            "table": tables.table(request, qs, columns=KEY_COLUMNS, default="-created"),
            "form": form,
            "created": created,
        },
    )
    if created:
        response["Cache-Control"] = "no-store"  # the secret must not come back from a cache
    return response


@require_POST
@capability_required("predict")
def key_revoke(request: HttpRequest, prefix: str) -> HttpResponse:
    key = ApiKey.objects.filter(prefix=prefix).first()
    if key is None or (key.user_id != request.user.pk and not user_can(request.user, "admin")):
        messages.error(request, "No such key.")
    else:
        keys.api_key_revoke(key=key, actor=Actor.from_request(request))
        messages.success(request, f"Key {prefix}… revoked.")
    return redirect("key-list")
