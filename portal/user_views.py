"""The admin-only users page: list users with their roles; create, set roles, deactivate,
reactivate, set a password. Thin: each POST parses a form and calls one service."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from portal import users
from portal.audit import Actor
from portal.errors import ApplicationError
from portal.permissions import capability_required
from portal.roles import ROLES

ROLE_CHOICES = [(r, r) for r in ROLES]


class UserCreateForm(forms.Form):
    username = forms.CharField(max_length=150)
    email = forms.EmailField(required=False)
    password = forms.CharField(widget=forms.PasswordInput, min_length=1)
    roles = forms.MultipleChoiceField(
        choices=ROLE_CHOICES, required=False, widget=forms.CheckboxSelectMultiple
    )


class RolesForm(forms.Form):
    roles = forms.MultipleChoiceField(choices=ROLE_CHOICES, required=False)


class PasswordForm(forms.Form):
    password = forms.CharField(widget=forms.PasswordInput)


def _errors(form: forms.Form) -> str:
    return " ".join(m for ms in form.errors.values() for m in ms)


@require_http_methods(["GET", "POST"])
@capability_required("admin")
def user_list(request: HttpRequest) -> HttpResponse:
    form = UserCreateForm(request.POST or None)
    if request.method == "POST":
        if form.is_valid():
            data = form.cleaned_data
            try:
                user = users.user_create(
                    username=data["username"],
                    email=data["email"],
                    password=data["password"],
                    roles=data["roles"],
                    actor=Actor.from_request(request),
                )
            except ApplicationError as exc:
                form.add_error(None, exc.message)
            else:
                messages.success(request, f"User '{user.username}' is created.")
                return redirect("user-list")
        messages.error(request, _errors(form))
    rows = [(u, users.user_role_names(u)) for u in users.user_list()]
    return render(
        request,
        "portal/user_list.html",
        {"rows": rows, "roles": ROLES, "form": form},
        status=400 if form.errors else 200,
    )


@require_POST
@capability_required("admin")
def user_roles(request: HttpRequest, user_id: int) -> HttpResponse:
    user = users.user_get(user_id=user_id)
    form = RolesForm(request.POST)
    if not form.is_valid():
        messages.error(request, _errors(form))
        return redirect("user-list")
    try:
        users.user_roles_set(
            user=user, roles=form.cleaned_data["roles"], actor=Actor.from_request(request)
        )
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        roles = ", ".join(form.cleaned_data["roles"]) or "none"
        messages.success(request, f"{user.username}'s roles: {roles}.")
    return redirect("user-list")


@require_POST
@capability_required("admin")
def user_active(request: HttpRequest, user_id: int) -> HttpResponse:
    user = users.user_get(user_id=user_id)
    active = request.POST.get("active") == "1"
    try:
        users.user_active_set(user=user, active=active, actor=Actor.from_request(request))
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        state = "reactivated" if active else "deactivated"
        messages.success(request, f"{user.username} is {state}.")
    return redirect("user-list")


@require_POST
@capability_required("admin")
def user_password(request: HttpRequest, user_id: int) -> HttpResponse:
    user = users.user_get(user_id=user_id)
    form = PasswordForm(request.POST)
    try:
        if not form.is_valid():
            raise ApplicationError(_errors(form))
        users.user_password_set(
            user=user, password=form.cleaned_data["password"], actor=Actor.from_request(request)
        )
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"{user.username}'s password is changed.")
    return redirect("user-list")
