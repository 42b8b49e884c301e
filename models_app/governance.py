"""What may be deployed, and who may archive or delete: data and pure checks.

Every layer asks here: the deployment services refuse with the reason, the version page
disables its deploy form and shows the same reason, the API answers it as a 409.
"""

from __future__ import annotations

from django.conf import settings

from models_app.models import ModelVersion


def deploy_refusal(version: ModelVersion) -> str:
    """Why `version` may not be deployed (launched, updated or rolled back to); "" if it may.

    A version rejected by an approver never deploys; with PORTAL_REQUIRE_APPROVAL (the
    default) a pending one waits for an approver too.
    """
    if version.model.archived_at is not None:
        return f"model '{version.model.name}' is archived: archived models are not deployed"
    if version.archived_at is not None:
        return f"{version} is archived: archived versions are not deployed"
    if version.status != ModelVersion.Status.READY:
        return f"{version} is {version.status}: only ready versions can be deployed"
    if version.approval == ModelVersion.Approval.REJECTED:
        return f"{version} was rejected by an approver: a rejected version never deploys"
    if settings.PORTAL_REQUIRE_APPROVAL and version.approval != ModelVersion.Approval.APPROVED:
        return (
            f"{version} is not approved yet: an approver must approve it before it is deployed "
            "(PORTAL_REQUIRE_APPROVAL)"
        )
    return ""
