from django.urls import path, re_path

from deployments_app.predict import views
from deployments_app.predict.routes import INFER_ROUTES

_NAME = "<str:name>"
_VERSION = "<int:version>"

urlpatterns = [
    *(re_path(r.pattern, views.infer_view(r.protocol), name=r.url_name) for r in INFER_ROUTES),
    path(f"api/v1/deployments/{_NAME}/ping", views.mlflow_ping, name="mlflow-ping"),
    path(f"v1/models/{_NAME}", views.v1_model, name="v1-model"),
    path("v2", views.v2_server_metadata, name="v2-server"),
    path("v2/health/ready", views.v2_server_ready, name="v2-ready"),
    path("v2/health/live", views.v2_server_live, name="v2-live"),
    path(f"v2/models/{_NAME}", views.v2_model, name="v2-model"),
    path(f"v2/models/{_NAME}/ready", views.v2_model_ready, name="v2-model-ready"),
    path(f"v2/models/{_NAME}/versions/{_VERSION}", views.v2_model, name="v2-model-version"),
    path(
        f"v2/models/{_NAME}/versions/{_VERSION}/ready",
        views.v2_model_ready,
        name="v2-model-version-ready",
    ),
    path("metrics", views.metrics_view, name="metrics"),
]
