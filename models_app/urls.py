from django.urls import path

from models_app import views

urlpatterns = [
    path("models/", views.model_list, name="model-list"),
    path("models/upload/", views.model_upload, name="model-upload"),
    path("models/<str:name>/", views.model_detail, name="model-detail"),
    path("models/<str:name>/versions/<int:number>/", views.version_detail, name="version-detail"),
    path(
        "models/<str:name>/versions/<int:number>/download",
        views.version_download,
        name="version-download",
    ),
    path(
        "models/<str:name>/versions/<int:number>/approve",
        views.version_approve,
        name="version-approve",
    ),
    path("models/<str:name>/versions/<int:number>/alias", views.alias_set, name="alias-set"),
    path("models/<str:name>/archive", views.model_archive, name="model-archive"),
    path("models/<str:name>/delete", views.model_delete, name="model-delete"),
    path(
        "models/<str:name>/versions/<int:number>/archive",
        views.version_archive,
        name="version-archive",
    ),
    path(
        "models/<str:name>/versions/<int:number>/delete",
        views.version_delete,
        name="version-delete",
    ),
]
