"""Deployments REST API: list/retrieve/create/delete, one actions endpoint, rollouts and
shadow traffic."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from deployments_app import rollouts, selectors, services
from deployments_app.api.serializers import (
    ActionSerializer,
    ApiKeyCreateSerializer,
    ApiKeyOutSerializer,
    BuildOutSerializer,
    DeploymentCreateSerializer,
    DeploymentOutSerializer,
    EventOutSerializer,
    RolloutAbortSerializer,
    RolloutOutSerializer,
    RolloutPromoteSerializer,
    RolloutSetSerializer,
    ShadowOutSerializer,
    ShadowQuerySerializer,
    ShadowSetSerializer,
)
from deployments_app.models import ApiKey
from deployments_app.predict import keys
from models_app import selectors as model_selectors
from portal.audit import Actor
from portal.errors import ApplicationError, NotFoundError
from portal.permissions import HasCapability
from portal.roles import user_can


def _context(request) -> dict:
    return {"show_endpoints": user_can(request.user, "replica_endpoints")}


class DeploymentListApi(APIView):
    permission_classes = [HasCapability("view", write="deploy")]

    @extend_schema(responses=DeploymentOutSerializer(many=True))
    def get(self, request):
        return Response(
            DeploymentOutSerializer(
                selectors.deployment_list(), many=True, context=_context(request)
            ).data
        )

    @extend_schema(request=DeploymentCreateSerializer, responses={202: DeploymentOutSerializer})
    def post(self, request):
        serializer = DeploymentCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        version = model_selectors.version_get(model_name=data["model"], number=data["version"])
        deployment = services.deployment_launch(
            version=version,
            name=data["name"],
            actor=Actor.from_request(request),
            user=request.user,
            runtime=data["runtime"],
            replicas=data["replicas"],
            memory_mb=data["memory_mb"],
            cpus=data["cpus"],
            batch_max_size=data["batch_max_size"],
            batch_max_wait_ms=data["batch_max_wait_ms"],
        )
        return Response(
            DeploymentOutSerializer(deployment, context=_context(request)).data,
            status=status.HTTP_202_ACCEPTED,
        )


class DeploymentDetailApi(APIView):
    permission_classes = [HasCapability("view", write="deploy")]

    @extend_schema(responses=DeploymentOutSerializer)
    def get(self, request, name: str):
        deployment = selectors.deployment_get(name=name)
        return Response(DeploymentOutSerializer(deployment, context=_context(request)).data)

    @extend_schema(responses={204: None})
    def delete(self, request, name: str):
        services.deployment_delete(
            deployment=selectors.deployment_get(name=name), actor=Actor.from_request(request)
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class DeploymentActionApi(APIView):
    """POST {"action": "stop"|"start"|"restart"|"scale"|"update"|"rollback", ...}."""

    permission_classes = [HasCapability("deploy")]

    @extend_schema(request=ActionSerializer, responses={202: DeploymentOutSerializer})
    def post(self, request, name: str):
        serializer = ActionSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        deployment = run_action(
            deployment=selectors.deployment_get(name=name),
            actor=Actor.from_request(request),
            **serializer.validated_data,
        )
        return Response(
            DeploymentOutSerializer(deployment, context=_context(request)).data,
            status=status.HTTP_202_ACCEPTED,
        )


def run_action(
    *,
    deployment,
    actor: Actor,
    action: str,
    replicas: int | None = None,
    version: int | None = None,
):
    """Shared by the API and the page: map an action name to its service."""
    if action == "stop":
        return services.deployment_stop(deployment=deployment, actor=actor)
    if action == "start":
        return services.deployment_start(deployment=deployment, actor=actor)
    if action == "restart":
        return services.deployment_restart(deployment=deployment, actor=actor)
    if action == "scale":
        if replicas is None:
            raise ApplicationError("scale needs 'replicas'")
        return services.deployment_scale(deployment=deployment, replicas=replicas, actor=actor)
    if action == "update":
        if version is None:
            raise ApplicationError("update needs 'version'")
        target = model_selectors.version_get(model_name=deployment.model.name, number=version)
        return services.deployment_update(deployment=deployment, version=target, actor=actor)
    if action == "rollback":
        return services.deployment_rollback(deployment=deployment, actor=actor)
    raise ApplicationError(f"unknown action '{action}'")


class DeploymentBuildsApi(APIView):
    permission_classes = [HasCapability("view")]

    @extend_schema(responses=BuildOutSerializer(many=True))
    def get(self, request, name: str):
        deployment = selectors.deployment_get(name=name)
        return Response(
            BuildOutSerializer(deployment.builds.select_related("version")[:20], many=True).data
        )


class DeploymentEventsApi(APIView):
    permission_classes = [HasCapability("view")]

    @extend_schema(responses=EventOutSerializer(many=True))
    def get(self, request, name: str):
        deployment = selectors.deployment_get(name=name)
        return Response(EventOutSerializer(deployment.events.all()[:200], many=True).data)


class ApiKeyListApi(APIView):
    """GET: your keys (admins: all). POST: create one; the key is in the answer, once."""

    permission_classes = [HasCapability("predict")]

    @extend_schema(responses=ApiKeyOutSerializer(many=True))
    def get(self, request):
        qs = ApiKey.objects.select_related("user", "model").prefetch_related("deployments")
        if not user_can(request.user, "admin"):
            qs = qs.filter(user=request.user)
        return Response(ApiKeyOutSerializer(qs.order_by("-id"), many=True).data)

    @extend_schema(request=ApiKeyCreateSerializer, responses={201: ApiKeyOutSerializer})
    def post(self, request):
        serializer = ApiKeyCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        key, raw = keys.api_key_create(
            user=request.user,
            actor=Actor.from_request(request),
            name=data["name"],
            deployment_names=data["deployments"],
            model_name=data["model"],
            expires_at=data["expires_at"],
            rate_limit_per_minute=data["rate_limit_per_minute"],
        )
        body = ApiKeyOutSerializer(key).data
        body["key"] = raw
        return Response(body, status=status.HTTP_201_CREATED)


class ApiKeyDetailApi(APIView):
    permission_classes = [HasCapability("predict")]

    @extend_schema(responses={204: None})
    def delete(self, request, prefix: str):
        key = ApiKey.objects.filter(prefix=prefix).first()
        if key is None or (key.user_id != request.user.pk and not user_can(request.user, "admin")):
            raise NotFoundError(f"no key with prefix '{prefix}'")
        keys.api_key_revoke(key=key, actor=Actor.from_request(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


# --------------------------------------------------------------------------- rollouts


def _rollout_body(deployment) -> dict:
    return RolloutOutSerializer(selectors.rollout_status(deployment)).data


class DeploymentRolloutApi(APIView):
    """GET: the active rollout (else the last one). PUT: start one, or replace the active
    one's configuration."""

    permission_classes = [HasCapability("view", write="deploy")]

    @extend_schema(responses=RolloutOutSerializer)
    def get(self, request, name: str):
        return Response(_rollout_body(selectors.deployment_get(name=name)))

    @extend_schema(request=RolloutSetSerializer, responses=RolloutOutSerializer)
    def put(self, request, name: str):
        serializer = RolloutSetSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        deployment = selectors.deployment_get(name=name)
        rollouts.rollout_set(
            deployment=deployment,
            candidates=[
                rollouts.CandidateSpec(c["version"], c["weight"]) for c in data.pop("candidates")
            ],
            actor=Actor.from_request(request),
            **data,
        )
        return Response(_rollout_body(deployment))


class DeploymentRolloutPromoteApi(APIView):
    permission_classes = [HasCapability("deploy")]

    @extend_schema(request=RolloutPromoteSerializer, responses=RolloutOutSerializer)
    def post(self, request, name: str):
        serializer = RolloutPromoteSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        deployment = rollouts.rollout_promote(
            deployment=selectors.deployment_get(name=name),
            actor=Actor.from_request(request),
            version=serializer.validated_data["version"],
        )
        return Response(_rollout_body(deployment))


class DeploymentRolloutAbortApi(APIView):
    permission_classes = [HasCapability("deploy")]

    @extend_schema(request=RolloutAbortSerializer, responses=RolloutOutSerializer)
    def post(self, request, name: str):
        serializer = RolloutAbortSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        deployment = selectors.deployment_get(name=name)
        rollouts.rollout_abort(
            deployment=deployment,
            actor=Actor.from_request(request),
            reason=serializer.validated_data["reason"],
        )
        return Response(_rollout_body(deployment))


def _shadow_body(deployment, *, minutes: int = 60) -> dict:
    since = timezone.now() - timedelta(minutes=minutes)
    return ShadowOutSerializer(
        {
            "version": deployment.shadow_version.number if deployment.shadow_version else None,
            "percent": deployment.shadow_percent,
            "report": rollouts.shadow_report(deployment=deployment, since=since),
        }
    ).data


class DeploymentShadowApi(APIView):
    """GET: the shadow version and its report. PUT: copy a share of the calls to a version
    after they are answered. DELETE: no shadow traffic."""

    permission_classes = [HasCapability("view", write="deploy")]

    @extend_schema(parameters=[ShadowQuerySerializer], responses=ShadowOutSerializer)
    def get(self, request, name: str):
        query = ShadowQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        deployment = selectors.deployment_get(name=name)
        return Response(_shadow_body(deployment, minutes=query.validated_data["minutes"]))

    @extend_schema(request=ShadowSetSerializer, responses=ShadowOutSerializer)
    def put(self, request, name: str):
        serializer = ShadowSetSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        deployment = rollouts.shadow_set(
            deployment=selectors.deployment_get(name=name),
            actor=Actor.from_request(request),
            **serializer.validated_data,
        )
        return Response(_shadow_body(deployment))

    @extend_schema(request=None, responses={204: None})
    def delete(self, request, name: str):
        rollouts.shadow_set(
            deployment=selectors.deployment_get(name=name),
            actor=Actor.from_request(request),
            version=None,
            percent=0,
        )
        return Response(status=status.HTTP_204_NO_CONTENT)
