"""Every prediction route, once: the URL conf and the ASGI lane both read this table."""

from __future__ import annotations

import re
from dataclasses import dataclass

from deployments_app.predict.protocols import KSERVE_V1, MLFLOW, PORTAL, V2, Protocol

_NAME = r"(?P<name>[A-Za-z0-9._-]+)"
_VERSION = r"(?P<version>[0-9]{1,9})"


@dataclass(frozen=True)
class InferRoute:
    pattern: str  # a regular expression over the path without its leading "/"
    protocol: Protocol
    url_name: str


INFER_ROUTES = (
    InferRoute(rf"^api/v1/deployments/{_NAME}/predict$", PORTAL, "predict"),
    InferRoute(
        rf"^api/v1/deployments/{_NAME}/versions/{_VERSION}/predict$", PORTAL, "predict-version"
    ),
    InferRoute(rf"^api/v1/deployments/{_NAME}/invocations$", MLFLOW, "mlflow-invocations"),
    InferRoute(rf"^v1/models/{_NAME}:predict$", KSERVE_V1, "v1-predict"),
    InferRoute(rf"^v2/models/{_NAME}/infer$", V2, "v2-infer"),
    InferRoute(rf"^v2/models/{_NAME}/versions/{_VERSION}/infer$", V2, "v2-infer-version"),
)
_COMPILED = tuple((re.compile(r.pattern), r.protocol) for r in INFER_ROUTES)


def match(path: str) -> tuple[Protocol, str, int | None] | None:
    """(protocol, deployment name, pinned version) for a prediction path, else None."""
    relative = path[1:] if path.startswith("/") else path
    for regex, protocol in _COMPILED:
        found = regex.match(relative)
        if found is not None:
            version = found.groupdict().get("version")
            return protocol, found["name"], int(version) if version else None
    return None
