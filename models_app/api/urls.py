from django.urls import path

from models_app.api import views

urlpatterns = [
    path("models", views.ModelListApi.as_view(), name="api-model-list"),
    path("models/<str:name>", views.ModelDetailApi.as_view(), name="api-model-detail"),
    path("models/<str:name>/versions", views.VersionListApi.as_view(), name="api-version-list"),
    path(
        "models/<str:name>/versions/<int:number>",
        views.VersionDetailApi.as_view(),
        name="api-version-detail",
    ),
    path(
        "models/<str:name>/versions/<int:number>/download",
        views.VersionDownloadApi.as_view(),
        name="api-version-download",
    ),
    path(
        "models/<str:name>/versions/<int:number>/approval",
        views.VersionApprovalApi.as_view(),
        name="api-version-approval",
    ),
    path("models/<str:name>/aliases/<str:alias>", views.AliasApi.as_view(), name="api-alias"),
    path("models/<str:name>/archive", views.ModelArchiveApi.as_view(), name="api-model-archive"),
    path(
        "models/<str:name>/versions/<int:number>/archive",
        views.VersionArchiveApi.as_view(),
        name="api-version-archive",
    ),
]
