"""`portal`: the Model Portal from a shell.

The token comes from PORTAL_TOKEN (or the config file), or from stdin with --token-stdin;
it is never printed. Prediction calls use an API key: PORTAL_API_KEY or --api-key-stdin.

Exit codes (stable): 0 ok, 1 usage error, 2 not found, 3 refused or conflict (the portal
answered 4xx: invalid input, no permission, wrong state; a version came out invalid),
4 server error or unavailable (5xx, unreachable, timed out, a deployment failed).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from portal_client.client import PortalClient, PortalError, parse_uri

EXIT_OK, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_REFUSED, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4


def exit_code(exc: PortalError) -> int:
    if exc.status == 404:
        return EXIT_NOT_FOUND
    if exc.status is not None and 400 <= exc.status < 500:
        return EXIT_REFUSED
    body = exc.body if isinstance(exc.body, dict) else {}
    if exc.status is None and body.get("status") == "invalid":  # validation said no
        return EXIT_REFUSED
    return EXIT_UNAVAILABLE


class Context:
    def __init__(self, url: str | None, token: str | None, output: str) -> None:
        self.url, self.token, self.output = url, token, output
        self._client: PortalClient | None = None

    @property
    def client(self) -> PortalClient:
        if self._client is None:
            try:
                self._client = PortalClient(self.url, self.token)
            except PortalError as exc:  # no URL anywhere: the caller's to fix
                raise click.UsageError(exc.message) from None
        return self._client

    def emit(self, data: Any, text: str | None = None) -> None:
        if self.output == "json":
            click.echo(json.dumps(data, indent=2, default=str))
        else:
            click.echo(text if text is not None else _text(data))


def _text(data: Any) -> str:
    if isinstance(data, list):
        return "\n".join(_text(item) for item in data)
    if isinstance(data, dict):
        return "\n".join(
            f"{k}: {json.dumps(v) if isinstance(v, dict | list) else v}" for k, v in data.items()
        )
    return str(data)


pass_ctx = click.make_pass_decorator(Context)


@click.group()
@click.option("--url", envvar="PORTAL_URL", help="portal base URL (PORTAL_URL)")
@click.option("--token-stdin", is_flag=True, help="read the access token from stdin")
@click.option("--output", "-o", "output", type=click.Choice(["text", "json"]), default="text")
@click.pass_context
def cli(ctx: click.Context, url: str | None, token_stdin: bool, output: str) -> None:
    """Model Portal client. Exit codes: 0 ok, 1 usage, 2 not found, 3 refused or conflict,
    4 server error or unavailable."""
    token = sys.stdin.readline().strip() if token_stdin else None
    ctx.obj = Context(url, token or None, output)


@cli.group()
def models() -> None:
    """Registered models and their versions."""


@models.command("list")
@click.option("--search", default="")
@pass_ctx
def models_list(c: Context, search: str) -> None:
    items = c.client.list_models(search)
    c.emit(
        items,
        "\n".join(
            f"{m['name']}\tversions={m.get('version_count')}\tready={m.get('ready_count')}\t"
            + ",".join(f"{a['name']}->v{a['version']}" for a in m.get("aliases", []))
            for m in items
        ),
    )


@models.command("show")
@click.argument("name")
@click.argument("version", required=False)
@pass_ctx
def models_show(c: Context, name: str, version: str | None) -> None:
    """NAME [VERSION|ALIAS], or a model URI (portal:/name/3, portal:/name@alias)."""
    if name.startswith("portal:"):
        c.emit(c.client.resolve(name))
    elif version is None:
        model = c.client.get_model(name)
        model["versions"] = c.client.list_versions(name)
        c.emit(
            model,
            f"{model['name']}  aliases: "
            + (", ".join(f"{a['name']}->v{a['version']}" for a in model["aliases"]) or "-")
            + "\n"
            + "\n".join(
                f"v{v['number']}\t{v['status']}\t{v['approval']}\t{v.get('estimator_class', '')}"
                for v in model["versions"]
            ),
        )
    elif version.isdigit():
        c.emit(c.client.get_model_version(name, int(version)))
    else:
        c.emit(c.client.get_model_version_by_alias(name, version))


@models.command("register")
@click.argument("name")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--input-example", help="JSON rows, e.g. '[[1500, 3, 2]]'")
@click.option("--description", default="")
@click.option("--wait/--no-wait", default=True, help="wait for validation (default)")
@pass_ctx
def models_register(
    c: Context, name: str, path: str, input_example: str | None, description: str, wait: bool
) -> None:
    example = _json_arg(input_example, "--input-example") if input_example else None
    version = c.client.register_model(path, name, example, description=description)
    if wait:
        version = c.client.wait(version)
    c.emit(version, f"{name} v{version['number']}: {version['status']}")


@models.command("alias")
@click.argument("name")
@click.argument("alias")
@click.argument("version", type=int)
@pass_ctx
def models_alias(c: Context, name: str, alias: str, version: int) -> None:
    result = c.client.set_registered_model_alias(name, alias, version)
    c.emit(result, f"{name}@{alias} -> v{result['version']}")


@models.command("approve")
@click.argument("name")
@click.argument("version", type=int)
@click.option("--comment", default="")
@click.option("--reject", is_flag=True, help="reject instead (needs --comment)")
@pass_ctx
def models_approve(c: Context, name: str, version: int, comment: str, reject: bool) -> None:
    if reject:
        result = c.client.reject(name, version, comment)
    else:
        result = c.client.approve(name, version, comment)
    c.emit(result, f"{name} v{version}: {result['approval']}")


@cli.command()
@click.argument("name")
@click.argument("model")
@click.argument("version", type=int, required=False)
@click.option("--replicas", type=int, default=1)
@click.option("--runtime", default="", help="docker or process (default: the portal's)")
@click.option("--wait/--no-wait", default=True)
@pass_ctx
def deploy(
    c: Context, name: str, model: str, version: int | None, replicas: int, runtime: str, wait: bool
) -> None:
    """Deploy MODEL VERSION (or a model URI) as NAME."""
    if model.startswith("portal:"):
        resolved = c.client.resolve(model)
        model, version = resolved["model"], resolved["number"]
    elif version is None:
        raise click.UsageError("give VERSION, or MODEL as a URI (portal:/name@alias)")
    result = c.client.deploy(name, model, version, replicas, runtime=runtime)
    if wait:
        result = c.client.wait_deployment(name)
    c.emit(result, _deployment_text(result))


def _deployment_text(d: dict) -> str:
    healthy = sum(1 for r in d.get("replica_set", []) if r.get("healthy"))
    line = f"{d['name']}\t{d['model']} v{d['version']}\t{d['state']}"
    line += f"\t{healthy}/{d['replicas']} healthy"
    return line + (f"\t{d['failure_reason']}" if d.get("failure_reason") else "")


@cli.command()
@click.argument("name", required=False)
@pass_ctx
def status(c: Context, name: str | None) -> None:
    """One deployment, or all of them."""
    if name:
        result = c.client.get_deployment(name)
        c.emit(result, _deployment_text(result))
    else:
        items = c.client.list_deployments()
        c.emit(items, "\n".join(_deployment_text(d) for d in items))


@cli.command()
@click.argument("name")
@pass_ctx
def logs(c: Context, name: str) -> None:
    """A deployment's events and its latest build log."""
    events, builds = c.client.events(name), c.client.builds(name)
    data = {"events": events, "build": builds[0] if builds else None}
    lines = [f"{e['created_at']}\t{e['state']}\t{e['message']}" for e in reversed(events)]
    if builds:
        lines += [f"--- build {builds[0]['id']} (v{builds[0]['version']}): {builds[0]['status']}"]
        lines += [builds[0].get("log") or "", builds[0].get("error") or ""]
    c.emit(data, "\n".join(line for line in lines if line))


@cli.command()
@click.argument("name")
@click.argument("version", type=int)
@click.option("--wait/--no-wait", default=True)
@pass_ctx
def update(c: Context, name: str, version: int, wait: bool) -> None:
    result = c.client.update(name, version, wait=wait)
    c.emit(result, _deployment_text(result))


@cli.command()
@click.argument("name")
@click.option("--wait/--no-wait", default=True)
@pass_ctx
def rollback(c: Context, name: str, wait: bool) -> None:
    result = c.client.rollback(name, wait=wait)
    c.emit(result, _deployment_text(result))


@cli.command()
@click.argument("name")
@click.option("--json", "body", required=True, help="rows ([[...]]) or a whole request body")
@click.option("--dialect", type=click.Choice(["portal", "v1", "mlflow", "v2"]), default="portal")
@click.option("--api-key-stdin", is_flag=True, help="read the API key from stdin")
@pass_ctx
def predict(c: Context, name: str, body: str, dialect: str, api_key_stdin: bool) -> None:
    """Call deployment NAME (API key: PORTAL_API_KEY or --api-key-stdin)."""
    key = sys.stdin.readline().strip() if api_key_stdin else None
    result = c.client.predict(name, _json_arg(body, "--json"), dialect=dialect, api_key=key)
    c.emit(result, json.dumps(result))


@cli.command()
@click.argument("name")
@click.argument("version", type=int)
@click.option("-o", "--out", "out", required=True, type=click.Path(dir_okay=False))
@click.option("--onnx", is_flag=True, help="the ONNX bundle (onnxruntime, no scikit-learn)")
@click.option("--wheels", is_flag=True, help="include the pinned wheels (offline hosts)")
@pass_ctx
def bundle(c: Context, name: str, version: int, out: str, onnx: bool, wheels: bool) -> None:
    """Download the edge bundle (.tar.gz) of a ready version."""
    path = c.client.bundle(name, version, out, onnx=onnx, wheels=wheels)
    c.emit({"path": str(path)}, str(path))


@cli.command()
@click.argument("name")
@click.argument("version", type=int)
@click.option("-o", "--out", "out", required=True, type=click.Path(dir_okay=False))
@pass_ctx
def download(c: Context, name: str, version: int, out: str) -> None:
    """Download a version's artifact."""
    path = c.client.download(name, version, out)
    c.emit({"path": str(path)}, str(path))


def _json_arg(text: str, option: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.UsageError(f"{option} is not JSON: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="portal", standalone_mode=False)
    except click.exceptions.Exit as exc:  # --help
        return exc.exit_code
    except click.Abort:
        return EXIT_USAGE
    except click.ClickException as exc:  # usage errors, bad options
        exc.show()
        return EXIT_USAGE
    except PortalError as exc:
        click.echo(f"error: {exc}", err=True)
        return exit_code(exc)
    except ValueError as exc:  # a malformed model URI
        click.echo(f"error: {exc}", err=True)
        return EXIT_USAGE
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["cli", "main", "parse_uri"]
