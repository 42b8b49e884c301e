"""Deployment reads."""

from __future__ import annotations

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404

from deployments_app.models import Deployment


def deployment_list() -> QuerySet[Deployment]:
    return (
        Deployment.objects.select_related("model", "version")
        .prefetch_related("replica_set")
        .order_by("name")
    )


def deployment_get(*, name: str) -> Deployment:
    return get_object_or_404(
        Deployment.objects.select_related("model", "version", "previous_version"), name=name
    )
