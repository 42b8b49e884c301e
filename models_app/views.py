"""Registry pages. Thin: parse input, call one service, render."""

from __future__ import annotations

from django.contrib import messages
from django.http import FileResponse, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_GET, require_POST

from models_app import selectors, services
from models_app.forms import AliasForm, ApprovalForm, UploadForm
from models_app.governance import deploy_refusal
from models_app.storage import artifact_open
from models_app.uploads import install_upload_limit, upload_too_large
from portal import tables
from portal.audit import Actor, audit_record
from portal.errors import ApplicationError
from portal.permissions import capability_required

MODEL_COLUMNS = {
    "name": ("name",),
    "versions": ("version_count",),
    "ready": ("ready_count",),
    "updated": ("updated_at",),
}


@require_GET
@capability_required("view")
def model_list(request: HttpRequest) -> HttpResponse:
    search = request.GET.get("q", "").strip()
    archived = request.GET.get("archived") == "1"
    return render(
        request,
        "models_app/model_list.html",
        {
            "table": tables.table(
                request,
                selectors.model_list(search=search, include_archived=archived),
                columns=MODEL_COLUMNS,
                default="name",
            ),
            "q": search,
            "show_archived": archived,
        },
    )


@require_GET
@capability_required("view")
def model_detail(request: HttpRequest, name: str) -> HttpResponse:
    model = selectors.model_get(name=name)
    archived = request.GET.get("archived") == "1"
    return render(
        request,
        "models_app/model_detail.html",
        {
            "model": model,
            "versions": selectors.version_list(model=model, include_archived=archived),
            "show_archived": archived,
            "aliases": model.aliases.select_related("version").order_by("name"),
        },
    )


@require_GET
@capability_required("view")
def version_detail(request: HttpRequest, name: str, number: int) -> HttpResponse:
    version = selectors.version_get(model_name=name, number=number)
    return render(
        request,
        "models_app/version_detail.html",
        {
            "version": version,
            "model": version.model,
            "approval_form": ApprovalForm(),
            "alias_form": AliasForm(),
            "can_review": request.user.pk != version.uploaded_by_id,
            "deploy_refusal": deploy_refusal(version),
        },
    )


@require_GET
@capability_required("view")
def version_download(request: HttpRequest, name: str, number: int) -> HttpResponse:
    version = selectors.version_get(model_name=name, number=number)
    try:
        plaintext = artifact_open(version.artifact_sha256)  # decrypts as it is sent
    except ApplicationError as exc:  # the key is wrong or missing here: say so on the page
        messages.error(request, exc.message)
        return redirect("version-detail", version.model.name, version.number)
    audit_record(
        actor=Actor.from_request(request), action="model_version.downloaded", target=version
    )
    suffix = {"pickle": ".pkl", "joblib": ".joblib", "skops": ".skops"}.get(version.format, ".bin")
    response = FileResponse(
        plaintext,  # closed by Django
        as_attachment=True,
        filename=f"{version.model.name}-v{version.number}{suffix}",
        content_type="application/octet-stream",
    )
    response["Content-Length"] = str(version.artifact_size)
    return response


@csrf_exempt  # checked by _upload_page: the CSRF check reads the body, so it must come after
@capability_required("upload")  # the size-limited upload handler is installed
def model_upload(request: HttpRequest) -> HttpResponse:
    """Upload page. The page's script posts with XHR (progress bar) and expects JSON back."""
    if request.method == "POST":
        install_upload_limit(request)
    return _upload_page(request)


@csrf_protect
def _upload_page(request: HttpRequest) -> HttpResponse:
    wants_json = request.headers.get("Accept", "").startswith("application/json")
    if request.method == "POST":
        if upload_too_large(request):
            error = f"The file is larger than the limit of {services.max_upload_mb()} MB."
            if wants_json:
                return JsonResponse({"errors": {"file": [error]}}, status=413)
            form = UploadForm(request.POST)
            form.add_error(None, error)
            return render(
                request,
                "models_app/upload.html",
                {"form": form, "max_mb": services.max_upload_mb()},
                status=413,
            )
        form = UploadForm(request.POST, request.FILES)
        if form.is_valid():
            data = form.cleaned_data
            try:
                version, created = services.model_version_upload(
                    model_name=data["model_name"],
                    chunks=data["file"].chunks(),
                    actor=Actor.from_request(request),
                    user=request.user,
                    filename=data["file"].name,
                    description=data["description"],
                    example_text=data["input_example"],
                    tags=data["tags"],
                    metrics=data["metrics"],
                    sklearn_version=data["sklearn_version"],
                )
            except ApplicationError as exc:
                form.add_error(None, exc.message)
            else:
                url = reverse("version-detail", args=[version.model.name, version.number])
                note = (
                    "uploaded; validation has started"
                    if created
                    else "these exact bytes were already uploaded: showing that version"
                )
                messages.success(request, f"{version}: {note}.")
                if wants_json:
                    return JsonResponse({"redirect": url, "created": created})
                return redirect(url)
        if wants_json:
            return JsonResponse({"errors": form.errors.get_json_data()}, status=400)
    else:
        form = UploadForm(initial={"model_name": request.GET.get("model", "")})
    return render(
        request, "models_app/upload.html", {"form": form, "max_mb": services.max_upload_mb()}
    )


@require_POST
@capability_required("approve")
def version_approve(request: HttpRequest, name: str, number: int) -> HttpResponse:
    version = selectors.version_get(model_name=name, number=number)
    form = ApprovalForm(request.POST)
    if form.is_valid():
        try:
            services.model_version_approve(
                version=version,
                user=request.user,
                actor=Actor.from_request(request),
                approve=form.cleaned_data["decision"] == "approve",
                comment=form.cleaned_data["comment"],
            )
            messages.success(request, f"{version} is now {version.approval}.")
        except ApplicationError as exc:
            messages.error(request, exc.message)
    else:
        messages.error(request, " ".join(m for ms in form.errors.values() for m in ms))
    return redirect("version-detail", name, number)


@require_POST
@capability_required("deploy")
def alias_set(request: HttpRequest, name: str, number: int) -> HttpResponse:
    version = selectors.version_get(model_name=name, number=number)
    form = AliasForm(request.POST)
    if form.is_valid():
        try:
            services.model_alias_set(
                model=version.model,
                name=form.cleaned_data["alias"],
                version_number=version.number,
                user=request.user,
                actor=Actor.from_request(request),
            )
            messages.success(
                request,
                f"Alias '{form.cleaned_data['alias']}' now points to version {version.number}.",
            )
        except ApplicationError as exc:
            messages.error(request, exc.message)
    else:
        messages.error(request, "; ".join(form.errors.get("alias", ["invalid alias"])))
    return redirect("version-detail", name, number)


def _archived_flag(request: HttpRequest) -> bool:
    """The archive forms post archived=1 (archive) or archived=0 (unarchive)."""
    return request.POST.get("archived", "1") != "0"


@require_POST
@capability_required("archive")
def model_archive(request: HttpRequest, name: str) -> HttpResponse:
    model = selectors.model_get(name=name)
    archived = _archived_flag(request)
    services.model_archive(model=model, actor=Actor.from_request(request), archived=archived)
    messages.success(request, f"{model} is {'archived' if archived else 'no longer archived'}.")
    return redirect("model-detail", name)


@require_POST
@capability_required("archive")
def version_archive(request: HttpRequest, name: str, number: int) -> HttpResponse:
    version = selectors.version_get(model_name=name, number=number)
    archived = _archived_flag(request)
    services.model_version_archive(
        version=version, actor=Actor.from_request(request), archived=archived
    )
    messages.success(request, f"{version} is {'archived' if archived else 'no longer archived'}.")
    return redirect("version-detail", name, number)


@require_POST
@capability_required("delete")
def model_delete(request: HttpRequest, name: str) -> HttpResponse:
    model = selectors.model_get(name=name)
    try:
        services.model_delete(model=model, actor=Actor.from_request(request))
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect("model-detail", name)
    messages.success(request, f"Model '{name}' and its versions are deleted.")
    return redirect("model-list")


@require_POST
@capability_required("delete")
def version_delete(request: HttpRequest, name: str, number: int) -> HttpResponse:
    version = selectors.version_get(model_name=name, number=number)
    try:
        services.model_version_delete(version=version, actor=Actor.from_request(request))
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect("version-detail", name, number)
    messages.success(request, f"{name} v{number} is deleted.")
    return redirect("model-detail", name)
