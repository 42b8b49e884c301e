from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from portal import token_api, token_views, user_api, user_views, views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("dashboard/data", views.dashboard_data, name="dashboard-data"),
    path("audit/", views.audit_list, name="audit-list"),
    path("audit/export.csv", views.audit_export, name="audit-export"),
    path("audit/verify", views.audit_verify_run, name="audit-verify"),
    path("users/", user_views.user_list, name="user-list"),
    path("users/<int:user_id>/roles", user_views.user_roles, name="user-roles"),
    path("users/<int:user_id>/active", user_views.user_active, name="user-active"),
    path("users/<int:user_id>/password", user_views.user_password, name="user-password"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("", include("deployments_app.predict.urls")),
    path("", include("models_app.urls")),
    path("", include("deployments_app.urls")),
    path("api/v1/users", user_api.UserListApi.as_view(), name="api-user-list"),
    path("api/v1/users/<int:user_id>", user_api.UserDetailApi.as_view(), name="api-user-detail"),
    path("api/v1/tokens", token_api.TokenListApi.as_view(), name="api-token-list"),
    path("api/v1/tokens/<str:prefix>", token_api.TokenDetailApi.as_view(), name="api-token-detail"),
    path("tokens/", token_views.token_list, name="token-list"),
    path("tokens/<str:prefix>/revoke", token_views.token_revoke, name="token-revoke"),
    path("api/v1/", include("models_app.api.urls")),
    path("api/v1/", include("deployments_app.api.urls")),
]

handler400 = "portal.error_pages.bad_request"
handler403 = "portal.error_pages.permission_denied"
handler404 = "portal.error_pages.page_not_found"
handler500 = "portal.error_pages.server_error"
