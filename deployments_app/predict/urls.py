from django.urls import path

from deployments_app.predict import views

urlpatterns = [
    path("api/v1/deployments/<str:name>/predict", views.predict, name="predict"),
    path("v2/health/ready", views.v2_server_ready, name="v2-ready"),
    path("v2/health/live", views.v2_server_live, name="v2-live"),
    path("v2/models/<str:name>", views.v2_model, name="v2-model"),
    path("v2/models/<str:name>/ready", views.v2_model_ready, name="v2-model-ready"),
    path("v2/models/<str:name>/infer", views.v2_infer, name="v2-infer"),
    path("metrics", views.metrics_view, name="metrics"),
]
