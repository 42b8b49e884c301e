from django.urls import path

from deployments_app.api import alerts, monitoring, views

urlpatterns = [
    path("keys", views.ApiKeyListApi.as_view(), name="api-key-list"),
    path("keys/<str:prefix>", views.ApiKeyDetailApi.as_view(), name="api-key-detail"),
    path("deployments", views.DeploymentListApi.as_view(), name="api-deployment-list"),
    path(
        "deployments/<str:name>", views.DeploymentDetailApi.as_view(), name="api-deployment-detail"
    ),
    path(
        "deployments/<str:name>/actions",
        views.DeploymentActionApi.as_view(),
        name="api-deployment-actions",
    ),
    path(
        "deployments/<str:name>/builds",
        views.DeploymentBuildsApi.as_view(),
        name="api-deployment-builds",
    ),
    path(
        "deployments/<str:name>/events",
        views.DeploymentEventsApi.as_view(),
        name="api-deployment-events",
    ),
    path(
        "deployments/<str:name>/rollout",
        views.DeploymentRolloutApi.as_view(),
        name="api-deployment-rollout",
    ),
    path(
        "deployments/<str:name>/rollout/promote",
        views.DeploymentRolloutPromoteApi.as_view(),
        name="api-deployment-rollout-promote",
    ),
    path(
        "deployments/<str:name>/rollout/abort",
        views.DeploymentRolloutAbortApi.as_view(),
        name="api-deployment-rollout-abort",
    ),
    path(
        "deployments/<str:name>/shadow",
        views.DeploymentShadowApi.as_view(),
        name="api-deployment-shadow",
    ),
    path(
        "deployments/<str:name>/alert-rules",
        alerts.DeploymentAlertRulesApi.as_view(),
        name="api-deployment-alert-rules",
    ),
    path(
        "deployments/<str:name>/alert-webhook",
        alerts.DeploymentAlertWebhookApi.as_view(),
        name="api-deployment-alert-webhook",
    ),
    path("alerts", alerts.AlertListApi.as_view(), name="api-alert-list"),
    path(
        "deployments/<str:name>/capture",
        monitoring.DeploymentCaptureApi.as_view(),
        name="api-deployment-capture",
    ),
    path(
        "deployments/<str:name>/capture/export",
        monitoring.DeploymentCaptureExportApi.as_view(),
        name="api-deployment-capture-export",
    ),
    path(
        "deployments/<str:name>/drift",
        monitoring.DeploymentDriftApi.as_view(),
        name="api-deployment-drift",
    ),
    path(
        "models/<str:name>/versions/<int:number>/drift-reference",
        monitoring.VersionDriftReferenceApi.as_view(),
        name="api-version-drift-reference",
    ),
]
