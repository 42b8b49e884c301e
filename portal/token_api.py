"""Personal access tokens API: list and create one's own (shown once), revoke by prefix.
Each command calls one service in portal/tokens.py, which audits it."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from portal import tokens
from portal.audit import Actor
from portal.permissions import HasCapability
from portal.roles import SCOPES


class TokenOutSerializer(serializers.Serializer):
    name = serializers.CharField()
    prefix = serializers.CharField()
    scopes = serializers.ListField(child=serializers.CharField())
    expires_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    last_used_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()


class TokenCreatedSerializer(TokenOutSerializer):
    token = serializers.CharField(help_text="the token itself: shown only in this answer")


class TokenCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    scopes = serializers.ListField(
        child=serializers.ChoiceField(SCOPES), min_length=1, max_length=len(SCOPES)
    )
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)


class TokenListApi(APIView):
    permission_classes = [HasCapability("view")]

    @extend_schema(responses=TokenOutSerializer(many=True))
    def get(self, request):
        return Response(
            TokenOutSerializer(tokens.access_token_list(user=request.user), many=True).data
        )

    @extend_schema(request=TokenCreateSerializer, responses={201: TokenCreatedSerializer})
    def post(self, request):
        serializer = TokenCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        token, raw = tokens.access_token_create(
            user=request.user, actor=Actor.from_request(request), **serializer.validated_data
        )
        body = {**TokenOutSerializer(token).data, "token": raw}
        return Response(body, status=status.HTTP_201_CREATED)


class TokenDetailApi(APIView):
    permission_classes = [HasCapability("view")]

    @extend_schema(responses=TokenOutSerializer)
    def delete(self, request, prefix: str):
        token = tokens.access_token_revoke(
            token=tokens.access_token_get(user=request.user, prefix=prefix),
            actor=Actor.from_request(request),
        )
        return Response(TokenOutSerializer(token).data)
