"""API key pages: list your keys, create one (shown once), revoke."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from deployments_app.models import ApiKey, Deployment
from deployments_app.predict import keys
from portal.audit import Actor
from portal.errors import ApplicationError
from portal.permissions import capability_required
from portal.roles import user_can


class KeyForm(forms.Form):
    name = forms.CharField(max_length=100)
    deployments = forms.MultipleChoiceField(required=False, widget=forms.SelectMultiple)
    model = forms.CharField(required=False, help_text="Or every deployment of this model.")
    expires_at = forms.DateTimeField(required=False, help_text="Optional, e.g. 2027-01-31 00:00")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["deployments"].choices = [
            (n, n) for n in Deployment.objects.order_by("name").values_list("name", flat=True)
        ]


@capability_required("predict")
def key_list(request: HttpRequest) -> HttpResponse:
    created = None
    if request.method == "POST":
        form = KeyForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            try:
                key, created = keys.api_key_create(
                    user=request.user,
                    actor=Actor.from_request(request),
                    name=data["name"],
                    deployment_names=data["deployments"],
                    model_name=data["model"].strip(),
                    expires_at=data["expires_at"],
                )
                messages.success(
                    request, f"Key '{key.name}' created. Copy it now: it is not shown again."
                )
                form = KeyForm()
            except ApplicationError as exc:
                form.add_error(None, exc.message)
    else:
        form = KeyForm()
    qs = ApiKey.objects.select_related("user", "model").prefetch_related("deployments")
    if not user_can(request.user, "admin"):
        qs = qs.filter(user=request.user)
    return render(
        request,
        "deployments_app/key_list.html",
        {"keys": qs.order_by("-id"), "form": form, "created": created},
    )


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
