"""Users API (admins only): list and create users; change one's roles, activity or password.
Each command calls one service in portal/users.py, which audits it."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from portal import users
from portal.audit import Actor
from portal.permissions import HasCapability
from portal.roles import ROLES


class UserOutSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()
    email = serializers.CharField()
    is_active = serializers.BooleanField()
    is_superuser = serializers.BooleanField()
    roles = serializers.SerializerMethodField()
    date_joined = serializers.DateTimeField()
    last_login = serializers.DateTimeField(allow_null=True)

    def get_roles(self, obj) -> list[str]:
        return users.user_role_names(obj)


class UserCreateSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    email = serializers.EmailField(required=False, allow_blank=True, default="")
    password = serializers.CharField(write_only=True)
    roles = serializers.ListField(child=serializers.ChoiceField(ROLES), default=list)


class UserChangeSerializer(serializers.Serializer):
    roles = serializers.ListField(child=serializers.ChoiceField(ROLES), required=False)
    is_active = serializers.BooleanField(required=False)
    password = serializers.CharField(write_only=True, required=False)


class UserListApi(APIView):
    permission_classes = [HasCapability("admin")]

    @extend_schema(responses=UserOutSerializer(many=True))
    def get(self, request):
        return Response(UserOutSerializer(users.user_list(), many=True).data)

    @extend_schema(request=UserCreateSerializer, responses={201: UserOutSerializer})
    def post(self, request):
        serializer = UserCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user = users.user_create(**serializer.validated_data, actor=Actor.from_request(request))
        return Response(
            UserOutSerializer(users.user_get(user_id=user.pk)).data, status=status.HTTP_201_CREATED
        )


class UserDetailApi(APIView):
    permission_classes = [HasCapability("admin")]

    @extend_schema(responses=UserOutSerializer)
    def get(self, request, user_id: int):
        return Response(UserOutSerializer(users.user_get(user_id=user_id)).data)

    @extend_schema(request=UserChangeSerializer, responses=UserOutSerializer)
    def patch(self, request, user_id: int):
        """Each field given is one audited change (roles, then activity, then password)."""
        serializer = UserChangeSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data, actor = serializer.validated_data, Actor.from_request(request)
        user = users.user_get(user_id=user_id)
        if "roles" in data:
            user = users.user_roles_set(user=user, roles=data["roles"], actor=actor)
        if "is_active" in data:
            users.user_active_set(user=user, active=data["is_active"], actor=actor)
        if "password" in data:
            users.user_password_set(user=user, password=data["password"], actor=actor)
        return Response(UserOutSerializer(users.user_get(user_id=user_id)).data)
