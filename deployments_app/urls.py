from django.urls import path

from deployments_app import views

urlpatterns = [
    path("deployments/", views.deployment_list, name="deployment-list"),
    path("deployments/<str:name>/", views.deployment_detail, name="deployment-detail"),
    path("deployments/<str:name>/status", views.deployment_status, name="deployment-status"),
    path("deployments/<str:name>/<str:action>", views.deployment_action, name="deployment-action"),
    path(
        "models/<str:model_name>/versions/<int:number>/deploy",
        views.deployment_create,
        name="deployment-create",
    ),
]
