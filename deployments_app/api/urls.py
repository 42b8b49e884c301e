from django.urls import path

from deployments_app.api import views

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
]
