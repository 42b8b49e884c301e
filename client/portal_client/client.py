"""PortalClient: the Model Portal's control-plane API (personal access token) and its
prediction routes (API key), over httpx.

Model URIs: `portal:/name/3` (version 3) and `portal:/name@alias` (what the alias points at).
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

CONFIG_FILE = Path("~/.config/model-portal/config.json")
DIALECTS = ("portal", "v1", "mlflow", "v2")
VERSION_DONE = ("ready", "invalid")
DEPLOYMENT_DONE = ("running", "failed")


class PortalError(Exception):
    """An answer the portal refused (status = its HTTP status, message = its `error`), or no
    answer at all (status None: unreachable, timed out waiting)."""

    def __init__(self, message: str, *, status: int | None = None, body: Any = None) -> None:
        super().__init__(message if status is None else f"{status}: {message}")
        self.message, self.status, self.body = message, status, body


@dataclass(frozen=True)
class ModelUri:
    name: str
    version: int | None = None
    alias: str | None = None


_URI = re.compile(r"^portal:/+(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[^/@]+))$")


def parse_uri(uri: str) -> ModelUri:
    match = _URI.match(uri)
    if not match:
        raise ValueError(f"not a model URI (portal:/name/3 or portal:/name@alias): {uri!r}")
    version = match.group("version")
    return ModelUri(
        name=match.group("name"),
        version=int(version) if version else None,
        alias=match.group("alias"),
    )


def _config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME")
    if base:
        return Path(base) / "model-portal" / "config.json"
    return CONFIG_FILE.expanduser()


def load_config() -> dict[str, str]:
    path = _config_path()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return (
        {k: str(v) for k, v in data.items() if k in ("url", "token")}
        if isinstance(data, dict)
        else {}
    )


class PortalClient:
    """`PortalClient()` reads PORTAL_URL and PORTAL_TOKEN, else ~/.config/model-portal/
    config.json (`{"url": ..., "token": ...}`)."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        progress: bool = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        config = load_config()
        self.url = (url or os.environ.get("PORTAL_URL") or config.get("url") or "").rstrip("/")
        if not self.url:
            raise PortalError("no portal URL: pass url=, set PORTAL_URL or the config file")
        token = token or os.environ.get("PORTAL_TOKEN") or config.get("token")
        self.progress = progress
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    def __repr__(self) -> str:  # never the token
        return f"PortalClient(url={self.url!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PortalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing -------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise PortalError(f"cannot reach the portal at {self.url}: {exc}") from exc
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = response.text
            message = body
            if isinstance(body, dict):
                message = body.get("error") or body.get("message") or body.get("detail") or body
                if isinstance(body.get("fields"), dict):
                    message = f"{message}: {json.dumps(body['fields'])}"
            raise PortalError(str(message), status=response.status_code, body=body)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        return response.json() if response.content else None

    def _say(self, text: str) -> None:
        if self.progress:
            print(text, file=sys.stderr, flush=True)

    # --- registry -------------------------------------------------------------------------
    def list_models(self, search: str = "") -> list[dict]:
        params = {"search": search, "limit": 1000} if search else {"limit": 1000}
        body = self._json("GET", "/api/v1/models", params=params)
        return body["results"] if isinstance(body, dict) and "results" in body else body

    def get_model(self, name: str) -> dict:
        return self._json("GET", f"/api/v1/models/{name}")

    def list_versions(self, name: str) -> list[dict]:
        return self._json("GET", f"/api/v1/models/{name}/versions")

    def register_model(
        self,
        path_or_estimator: Any,
        name: str,
        input_example: Any = None,
        *,
        description: str = "",
        tags: list[str] | None = None,
    ) -> dict:
        """Upload a model file, or a fitted estimator (dumped with joblib); returns the new
        version (status "uploaded": `wait()` for validation)."""
        if isinstance(path_or_estimator, str | os.PathLike):
            return self._upload(Path(path_or_estimator), name, input_example, description, tags)
        import joblib  # only for in-memory estimators

        with tempfile.TemporaryDirectory(prefix="portal-client-") as tmp:
            path = Path(tmp) / f"{name}.joblib"
            joblib.dump(path_or_estimator, path)
            return self._upload(path, name, input_example, description, tags)

    def _upload(self, path, name, input_example, description, tags) -> dict:
        data: dict[str, str] = {"description": description}
        if input_example is not None:
            if hasattr(input_example, "tolist"):
                input_example = input_example.tolist()
            data["input_example"] = json.dumps(input_example)
        if tags:
            data["tags"] = ",".join(tags)
        with path.open("rb") as fh:
            return self._json(
                "POST",
                f"/api/v1/models/{name}/versions",
                data=data,
                files={"file": (path.name, fh, "application/octet-stream")},
            )

    def get_model_version(self, name: str, version: int) -> dict:
        return self._json("GET", f"/api/v1/models/{name}/versions/{int(version)}")

    def get_model_version_by_alias(self, name: str, alias: str) -> dict:
        for entry in self.get_model(name).get("aliases", []):
            if entry["name"] == alias:
                return self.get_model_version(name, entry["version"])
        raise PortalError(f"model {name} has no alias {alias}", status=404)

    def set_registered_model_alias(self, name: str, alias: str, version: int) -> dict:
        return self._json(
            "PUT", f"/api/v1/models/{name}/aliases/{alias}", json={"version": version}
        )

    def delete_registered_model_alias(self, name: str, alias: str) -> None:
        self._request("DELETE", f"/api/v1/models/{name}/aliases/{alias}")

    def resolve(self, uri: str) -> dict:
        """The version a model URI names (`portal:/name/3`, `portal:/name@alias`)."""
        parsed = parse_uri(uri)
        if parsed.alias is not None:
            return self.get_model_version_by_alias(parsed.name, parsed.alias)
        return self.get_model_version(parsed.name, parsed.version)

    def approve(self, name: str, version: int, comment: str = "") -> dict:
        return self._json(
            "POST",
            f"/api/v1/models/{name}/versions/{int(version)}/approval",
            json={"decision": "approve", "comment": comment},
        )

    def reject(self, name: str, version: int, comment: str) -> dict:
        return self._json(
            "POST",
            f"/api/v1/models/{name}/versions/{int(version)}/approval",
            json={"decision": "reject", "comment": comment},
        )

    def download(self, name: str, version: int, path: str | os.PathLike) -> Path:
        return self._stream_to(f"/api/v1/models/{name}/versions/{int(version)}/download", path)

    def bundle(
        self,
        name: str,
        version: int,
        path: str | os.PathLike,
        *,
        onnx: bool = False,
        wheels: bool = False,
    ) -> Path:
        """The edge bundle of a ready version (.tar.gz: artifact, server, Dockerfile).

        ``onnx=True``: the small bundle of the version's ONNX export (onnxruntime, no
        scikit-learn); ``wheels=True``: with the pinned wheels, for hosts without an index.
        """
        query = "&".join(q for q, on in (("flavor=onnx", onnx), ("wheels=1", wheels)) if on)
        url = f"/api/v1/models/{name}/versions/{int(version)}/bundle"
        return self._stream_to(url + (f"?{query}" if query else ""), path)

    def _stream_to(self, url: str, path: str | os.PathLike) -> Path:
        target = Path(path)
        try:
            with self._http.stream("GET", url) as response:
                if response.status_code >= 400:
                    response.read()
                    try:
                        message = response.json().get("error", response.text)
                    except ValueError:
                        message = response.text
                    raise PortalError(str(message), status=response.status_code)
                tmp = target.with_name(f".{target.name}.part")
                with tmp.open("wb") as fh:
                    for chunk in response.iter_bytes():
                        fh.write(chunk)
                tmp.replace(target)
        except httpx.HTTPError as exc:
            raise PortalError(f"cannot reach the portal at {self.url}: {exc}") from exc
        return target

    # --- deployments ----------------------------------------------------------------------
    def list_deployments(self) -> list[dict]:
        return self._json("GET", "/api/v1/deployments")

    def get_deployment(self, name: str) -> dict:
        return self._json("GET", f"/api/v1/deployments/{name}")

    def deploy(
        self, name: str, model: str, version: int, replicas: int = 1, *, runtime: str = ""
    ) -> dict:
        body: dict[str, Any] = {"name": name, "model": model, "version": version}
        body["replicas"] = replicas
        if runtime:
            body["runtime"] = runtime
        return self._json("POST", "/api/v1/deployments", json=body)

    def _action(self, name: str, **body: Any) -> dict:
        return self._json("POST", f"/api/v1/deployments/{name}/actions", json=body)

    def update(self, name: str, version: int, *, wait: bool = False, timeout: float = 600) -> dict:
        since = self._last_event_at(name)
        result = self._action(name, action="update", version=version)
        if wait:
            return self.wait_deployment(name, version=version, timeout=timeout, since=since)
        return result

    def rollback(self, name: str, *, wait: bool = False, timeout: float = 600) -> dict:
        previous = self.get_deployment(name).get("previous_version")
        since = self._last_event_at(name)
        result = self._action(name, action="rollback")
        if wait:
            return self.wait_deployment(name, version=previous, timeout=timeout, since=since)
        return result

    def _last_event_at(self, name: str) -> str:
        events = self.events(name)
        return max((e["created_at"] for e in events), default="")

    def scale(self, name: str, replicas: int) -> dict:
        return self._action(name, action="scale", replicas=replicas)

    def stop(self, name: str) -> dict:
        return self._action(name, action="stop")

    def start(self, name: str) -> dict:
        return self._action(name, action="start")

    def delete_deployment(self, name: str) -> None:
        self._request("DELETE", f"/api/v1/deployments/{name}")

    def builds(self, name: str) -> list[dict]:
        return self._json("GET", f"/api/v1/deployments/{name}/builds")

    def events(self, name: str) -> list[dict]:
        return self._json("GET", f"/api/v1/deployments/{name}/events")

    def create_api_key(
        self, name: str, *, deployments: list[str] | None = None, model: str = ""
    ) -> str:
        """A prediction API key (shown once): the raw key."""
        body = {"name": name, "deployments": deployments or [], "model": model}
        return self._json("POST", "/api/v1/keys", json=body)["key"]

    # --- waiting --------------------------------------------------------------------------
    def wait(
        self,
        target: str | dict,
        version: int | None = None,
        *,
        timeout: float = 600,
        interval: float = 1.0,
    ) -> dict:
        """Wait for what `target` names: a version dict (from register_model) or a model name
        with `version` -> its validation; a deployment dict (from deploy) or a deployment
        name -> until it runs (serving `version` when given)."""
        if isinstance(target, dict):
            if "number" in target:
                return self.wait_version(target["model"], target["number"], timeout=timeout)
            return self.wait_deployment(target["name"], version=version, timeout=timeout)
        if version is not None and not self._is_deployment(target):
            return self.wait_version(target, version, timeout=timeout, interval=interval)
        return self.wait_deployment(target, version=version, timeout=timeout, interval=interval)

    def _is_deployment(self, name: str) -> bool:
        try:
            self.get_deployment(name)
        except PortalError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def _poll(self, what: str, step, *, timeout: float, interval: float) -> dict:
        """Call step() until it answers something (it raises PortalError when it is over)."""
        deadline = time.monotonic() + timeout
        while True:
            found = step()
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise PortalError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(interval)

    def wait_version(
        self, name: str, version: int, *, timeout: float = 600, interval: float = 1.0
    ) -> dict:
        """Until validation ends: the version when ready; PortalError when invalid."""
        last = None

        def step() -> dict | None:
            nonlocal last
            current = self.get_model_version(name, version)
            if current["status"] != last:
                last = current["status"]
                self._say(f"{name} v{version}: {last}")
            if current["status"] == "invalid":
                reason = current.get("rejection_reason") or "invalid"
                raise PortalError(f"{name} v{version} is invalid: {reason}", body=current)
            return current if current["status"] == "ready" else None

        return self._poll(f"{name} v{version}", step, timeout=timeout, interval=interval)

    def wait_deployment(
        self,
        name: str,
        *,
        version: int | None = None,
        timeout: float = 600,
        interval: float = 1.0,
        since: str | None = None,
    ) -> dict:
        """Until the deployment runs (on `version` when given): the deployment; PortalError
        when it failed, or (with `since`, an event time) when a version switch requested
        after `since` failed while the old version kept serving."""
        last = None

        def step() -> dict | None:
            nonlocal last
            if since is not None and version is not None:
                for event in self.events(name):
                    failed = f"update to v{version} failed" in event["message"]
                    if failed and event["created_at"] > since:
                        raise PortalError(f"deployment {name}: {event['message']}", body=event)
            current = self.get_deployment(name)
            seen = (current["state"], current["version"])
            if seen != last:
                last = seen
                self._say(f"{name}: {current['state']} (v{current['version']})")
            if current["state"] == "failed":
                reason = current.get("failure_reason") or "failed"
                raise PortalError(f"deployment {name} failed: {reason}", body=current)
            # A switch is over once the old version's replicas are gone too: an action sent
            # before that would race the switch's own clean-up.
            on_version = version is None or (
                current["version"] == version
                and all(r["version_number"] == version for r in current.get("replica_set", []))
            )
            return current if current["state"] == "running" and on_version else None

        return self._poll(f"deployment {name}", step, timeout=timeout, interval=interval)

    # --- predictions ----------------------------------------------------------------------
    def predict(
        self,
        name: str,
        rows_or_body: Any,
        *,
        dialect: str = "portal",
        api_key: str | None = None,
    ) -> Any:
        """Call a deployment. `rows_or_body`: a list of rows (or records) wrapped for the
        dialect, or a dict sent as it is. The API key defaults to PORTAL_API_KEY."""
        if dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {', '.join(DIALECTS)}")
        api_key = api_key or os.environ.get("PORTAL_API_KEY")
        if not api_key:
            raise PortalError("predictions need an API key: api_key= or PORTAL_API_KEY")
        if hasattr(rows_or_body, "tolist"):
            rows_or_body = rows_or_body.tolist()
        path, body = _prediction_request(name, rows_or_body, dialect)
        return self._json("POST", path, json=body, headers={"Authorization": f"Bearer {api_key}"})


def _prediction_request(name: str, data: Any, dialect: str) -> tuple[str, Any]:
    if dialect == "portal":
        return f"/api/v1/deployments/{name}/predict", (
            data if isinstance(data, dict) else {"instances": data}
        )
    if dialect == "v1":
        return f"/v1/models/{name}:predict", data if isinstance(data, dict) else {"instances": data}
    if dialect == "mlflow":
        return f"/api/v1/deployments/{name}/invocations", (
            data if isinstance(data, dict) else {"inputs": data}
        )
    if isinstance(data, dict):
        return f"/v2/models/{name}/infer", data
    flat = [value for row in data for value in row]
    shape = [len(data), len(data[0]) if data else 0]
    tensor = {"name": "input-0", "shape": shape, "datatype": "FP64", "data": flat}
    return f"/v2/models/{name}/infer", {"inputs": [tensor]}
