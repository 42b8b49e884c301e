"""Registry reads: ordered querysets for pages and the API."""

from __future__ import annotations

from django.db.models import Count, Q, QuerySet
from django.shortcuts import get_object_or_404

from models_app.models import ModelVersion, RegisteredModel


def model_list(*, search: str = "", include_archived: bool = False) -> QuerySet[RegisteredModel]:
    """Models by name; archived ones only when asked for."""
    qs = RegisteredModel.objects.annotate(
        version_count=Count("versions", distinct=True),
        ready_count=Count(
            "versions", filter=Q(versions__status=ModelVersion.Status.READY), distinct=True
        ),
    ).order_by("name")
    if search:
        qs = qs.filter(Q(name__icontains=search) | Q(description__icontains=search))
    if not include_archived:
        qs = qs.filter(archived_at__isnull=True)
    return qs


def model_get(*, name: str) -> RegisteredModel:
    return get_object_or_404(RegisteredModel, name=name)


def version_list(
    *, model: RegisteredModel, include_archived: bool = False
) -> QuerySet[ModelVersion]:
    """A model's versions, newest first; archived ones only when asked for."""
    qs = (
        model.versions.select_related("model", "uploaded_by", "approval_by")
        .prefetch_related("aliases")
        .order_by("-number")
    )
    return qs if include_archived else qs.filter(archived_at__isnull=True)


def version_get(*, model_name: str, number: int) -> ModelVersion:
    return get_object_or_404(
        ModelVersion.objects.select_related("model", "uploaded_by", "approval_by"),
        model__name=model_name,
        number=number,
    )
