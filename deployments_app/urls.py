from django.urls import path

from deployments_app import alert_views, bundle_api, key_views, views
from deployments_app.monitoring import views as monitoring_views

urlpatterns = [
    path(
        "api/v1/models/<str:name>/versions/<int:number>/bundle",
        bundle_api.VersionBundleApi.as_view(),
        name="api-version-bundle",
    ),
    path("metrics/series", views.metrics_series, name="metrics-series"),
    path("keys/", key_views.key_list, name="key-list"),
    path("keys/<str:prefix>/revoke", key_views.key_revoke, name="key-revoke"),
    path("deployments/", views.deployment_list, name="deployment-list"),
    path("deployments/<str:name>/", views.deployment_detail, name="deployment-detail"),
    path("deployments/<str:name>/status", views.deployment_status, name="deployment-status"),
    path("deployments/<str:name>/capture", monitoring_views.capture_set, name="deployment-capture"),
    path(
        "deployments/<str:name>/capture/export",
        monitoring_views.capture_export,
        name="deployment-capture-export",
    ),
    path("deployments/<str:name>/rollout", views.deployment_rollout, name="deployment-rollout"),
    path(
        "deployments/<str:name>/rollout/promote",
        views.deployment_rollout,
        {"op": "promote"},
        name="deployment-rollout-promote",
    ),
    path(
        "deployments/<str:name>/rollout/abort",
        views.deployment_rollout,
        {"op": "abort"},
        name="deployment-rollout-abort",
    ),
    path("deployments/<str:name>/shadow", views.deployment_shadow, name="deployment-shadow"),
    path("alerts/", alert_views.alert_list, name="alert-list"),
    path(
        "deployments/<str:name>/alert-rules",
        alert_views.alert_rule_add,
        name="deployment-alert-rules",
    ),
    path(
        "deployments/<str:name>/alert-rules/<int:rule_id>/delete",
        alert_views.alert_rule_remove,
        name="deployment-alert-rule-delete",
    ),
    path(
        "deployments/<str:name>/alert-webhook",
        alert_views.alert_webhook,
        name="deployment-alert-webhook",
    ),
    path("deployments/<str:name>/<str:action>", views.deployment_action, name="deployment-action"),
    path(
        "models/<str:model_name>/versions/<int:number>/deploy",
        views.deployment_create,
        name="deployment-create",
    ),
]
