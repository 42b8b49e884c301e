"""Alerts API: a deployment's rules (GET/POST/DELETE), its webhook, and the alerts."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from deployments_app import selectors
from deployments_app.models import Alert, AlertRule
from deployments_app.monitoring import alerts, webhooks
from portal.audit import Actor
from portal.permissions import HasCapability
from portal.roles import user_can

MAX_LISTED = 500


class AlertRuleInSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=AlertRule.Kind.choices)
    threshold = serializers.FloatField(min_value=0)
    clear_threshold = serializers.FloatField(
        min_value=0, required=False, allow_null=True, default=None,
        help_text="resolve once the figure is back past this (default: the threshold)",
    )  # fmt: skip
    window_minutes = serializers.IntegerField(min_value=1, max_value=alerts.MAX_WINDOW_MINUTES,
                                              default=5)  # fmt: skip
    min_requests = serializers.IntegerField(min_value=0, max_value=1_000_000, default=20)
    fire_after = serializers.IntegerField(min_value=1, max_value=100, default=1)
    resolve_after = serializers.IntegerField(min_value=1, max_value=100, default=2)
    enabled = serializers.BooleanField(default=True)


class AlertRuleOutSerializer(serializers.ModelSerializer):
    class Meta:
        model = AlertRule
        fields = ["id", "kind", "threshold", "clear_threshold", "window_minutes", "min_requests",
                  "fire_after", "resolve_after", "enabled", "last_evaluated_at", "last_value",
                  "created_at"]  # fmt: skip


class AlertRuleDeleteSerializer(serializers.Serializer):
    id = serializers.IntegerField(min_value=1)


class AlertOutSerializer(serializers.ModelSerializer):
    deployment = serializers.CharField(source="deployment.name")

    class Meta:
        model = Alert
        fields = ["id", "deployment", "rule", "kind", "state", "value", "threshold", "message",
                  "fired_at", "resolved_at", "resolved_value", "delivery_status", "delivery_event",
                  "delivery_attempts", "delivery_error", "delivered_at"]  # fmt: skip


class AlertQuerySerializer(serializers.Serializer):
    deployment = serializers.CharField(required=False, max_length=63)
    state = serializers.ChoiceField(choices=Alert.State.choices, required=False)


class WebhookInSerializer(serializers.Serializer):
    url = serializers.CharField(max_length=500)
    enabled = serializers.BooleanField(default=True)
    rotate_secret = serializers.BooleanField(default=False)


class WebhookOutSerializer(serializers.Serializer):
    url = serializers.CharField(
        allow_null=True, help_text="scheme and host only for callers who may not deploy"
    )
    enabled = serializers.BooleanField()
    secret = serializers.CharField(
        required=False, help_text="only when it was just made: store it, it is not shown again"
    )


class DeploymentAlertRulesApi(APIView):
    """GET: the deployment's alert rules. POST: add one. DELETE (body or ?id=): remove one."""

    permission_classes = [HasCapability("view", write="deploy")]

    @extend_schema(responses=AlertRuleOutSerializer(many=True))
    def get(self, request, name: str):
        deployment = selectors.deployment_get(name=name)
        return Response(AlertRuleOutSerializer(deployment.alert_rules.all(), many=True).data)

    @extend_schema(request=AlertRuleInSerializer, responses={201: AlertRuleOutSerializer})
    def post(self, request, name: str):
        serializer = AlertRuleInSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        rule = alerts.alert_rule_create(
            deployment=selectors.deployment_get(name=name),
            actor=Actor.from_request(request),
            **serializer.validated_data,
        )
        return Response(AlertRuleOutSerializer(rule).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=AlertRuleDeleteSerializer,
        parameters=[OpenApiParameter("id", int, required=False)],
        responses={204: None},
    )
    def delete(self, request, name: str):
        data = request.data if request.data else request.query_params
        serializer = AlertRuleDeleteSerializer(data={"id": data.get("id")})
        serializer.is_valid(raise_exception=True)
        deployment = selectors.deployment_get(name=name)
        rule = alerts.alert_rule_get(deployment=deployment, rule_id=serializer.validated_data["id"])
        alerts.alert_rule_delete(rule=rule, actor=Actor.from_request(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


class DeploymentAlertWebhookApi(APIView):
    """GET: where the deployment's alerts are posted. PUT: set it (a secret is made on the
    first PUT and on rotate_secret, and returned once). DELETE: no webhook."""

    permission_classes = [HasCapability("view", write="deploy")]

    @extend_schema(responses=WebhookOutSerializer)
    def get(self, request, name: str):
        hook = getattr(selectors.deployment_get(name=name), "alert_webhook", None)
        url = hook.url if hook else None
        if url and not user_can(request.user, "deploy"):
            url = webhooks.redacted_url(url)  # the URL may hold the receiver's own secret
        return Response({"url": url, "enabled": bool(hook and hook.enabled)})

    @extend_schema(request=WebhookInSerializer, responses=WebhookOutSerializer)
    def put(self, request, name: str):
        serializer = WebhookInSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        hook, secret = webhooks.alert_webhook_set(
            deployment=selectors.deployment_get(name=name),
            actor=Actor.from_request(request),
            **serializer.validated_data,
        )
        body = {"url": hook.url, "enabled": hook.enabled} | ({"secret": secret} if secret else {})
        return Response(body)

    @extend_schema(request=None, responses={204: None})
    def delete(self, request, name: str):
        webhooks.alert_webhook_delete(
            deployment=selectors.deployment_get(name=name), actor=Actor.from_request(request)
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class AlertListApi(APIView):
    """The newest alerts (at most 500), optionally of one deployment and one state."""

    permission_classes = [HasCapability("view")]

    @extend_schema(parameters=[AlertQuerySerializer], responses=AlertOutSerializer(many=True))
    def get(self, request):
        query = AlertQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        deployment = None
        if name := query.validated_data.get("deployment"):
            deployment = selectors.deployment_get(name=name)
        qs = alerts.alerts_for(deployment=deployment, state=query.validated_data.get("state", ""))
        return Response(AlertOutSerializer(qs[:MAX_LISTED], many=True).data)
