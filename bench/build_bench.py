"""Benchmark image builds of the Docker runtime (deployments_app/runtimes/docker_runtime.py).

For every scikit-learn version of the fixture models (1.9.1; 1.5.2 and 1.3.2 when their
wheels can be had), it measures:

* cold build: the first fixture of that pin set with `nocache=True`, so nothing is reused
  but the base image;
* warm build: every fixture of that pin set as a new version (new tag, dependency layer
  cached): what a second model on the same scikit-learn costs;
* image size, and (unless `--no-serve`) that a replica of the warm image answers
  /predict with the manifest's expected output.

Targets: warm build < 15 s, image < 450 MB. Every container and image it creates carries
`portal.bench.run=<id>` and is removed at the end; the base image is left alone.

    .venv/bin/python bench/build_bench.py [--base-image portal-base:bookworm]
        [--wheelhouse var/wheels] [--only 1.9.1] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deployments_app.runtimes.base import BuildError, BuildSpec, ReplicaLimits  # noqa: E402
from deployments_app.runtimes.docker_runtime import DockerRuntime, client  # noqa: E402

FIXTURES = Path("/work/shared/fixtures/models")
SERVER_DIR = REPO / "deployments_app" / "model_server"
WARM_TARGET_S = 15.0
SIZE_TARGET_MB = 450.0

# Pin sets that install together (cp311 wheels exist for each); skops only where a
# fixture needs it, pandas only where one was fitted on named columns.
PIN_SETS: dict[str, dict[str, str]] = {
    "1.9.1": {
        "scikit-learn": "1.9.1",
        "numpy": "2.4.6",
        "scipy": "1.17.1",
        "joblib": "1.6.0",
        "threadpoolctl": "3.8.0",
        "pandas": "3.1.1",
        "skops": "0.16.0",
    },
    "1.5.2": {
        "scikit-learn": "1.5.2",
        "numpy": "1.26.4",
        "scipy": "1.13.1",
        "joblib": "1.4.2",
        "threadpoolctl": "3.5.0",
    },
    "1.3.2": {
        "scikit-learn": "1.3.2",
        "numpy": "1.26.4",
        "scipy": "1.11.4",
        "joblib": "1.3.2",
        "threadpoolctl": "3.5.0",
        "pandas": "2.2.3",
    },
}


def _manifest() -> list[dict]:
    return json.loads((FIXTURES / "manifest.json").read_text())


def _spec(entry: dict, pins: dict, tmp: Path, *, version: int, labels: dict) -> BuildSpec:
    artifact = tmp / entry["file"]
    if not artifact.exists():
        shutil.copyfile(FIXTURES / entry["file"], artifact)
    return BuildSpec(
        deployment=f"bench-{labels['portal.bench.run']}-{entry['name']}",
        model=f"bench-{entry['name']}",
        version=version,
        artifact_path=artifact,
        artifact_sha256=hashlib.sha256(artifact.read_bytes()).hexdigest(),
        fmt=entry["format"],
        requirements=pins,
        columns=entry["columns"],
        base_image=ARGS.base_image,
        wheelhouse=Path(ARGS.wheelhouse),
        server_dir=SERVER_DIR,
        extra_labels=labels,
    )


def _serves(runtime: DockerRuntime, spec: BuildSpec, build, entry: dict) -> str:
    status = runtime.start_replica(
        deployment=spec.deployment,
        index=0,
        build=build,
        spec=spec,
        limits=ReplicaLimits(),
        publish_host="127.0.0.1",
    )
    try:
        if not runtime.wait_healthy(status, 120):
            return f"not healthy: {runtime.list_replicas(spec.deployment)[0].detail}"
        endpoint = runtime.list_replicas(spec.deployment)[0].endpoint
        request = urllib.request.Request(  # noqa: S310 - http to our own replica on loopback
            f"{endpoint}/predict",
            data=json.dumps({"instances": entry["input_example"]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310 - as above
            got = json.loads(resp.read())["predictions"]
        expected = entry["expected_predict"]
        same = len(got) == len(expected) and all(
            abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))
            for a, b in zip(got, expected, strict=True)
        )
        return "ok" if same else f"wrong: {got} != {expected}"
    finally:
        runtime.remove_replica(status.name)


def _cleanup(run_label: str) -> None:
    c = client(timeout=120)
    try:
        for container in c.containers.list(all=True, filters={"label": run_label}):
            container.remove(force=True)
        for filters in ({"label": run_label}, {"label": [run_label, "portal.stage=deps"]}):
            for image in c.images.list(filters=filters):
                if ARGS.base_image in image.tags:
                    continue
                with contextlib.suppress(Exception):  # gone with a removed child already
                    c.images.remove(image.id, force=True)
    finally:
        c.close()


def bench() -> list[dict]:
    run = uuid.uuid4().hex[:12]
    labels = {"portal.bench": "1", "portal.bench.run": run}
    manifest = _manifest()
    rows: list[dict] = []
    cold_rt = DockerRuntime(nocache=True)
    warm_rt = DockerRuntime()
    quiet = lambda _line: None  # noqa: E731 - a sink for build output
    with tempfile.TemporaryDirectory(prefix="build-bench-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            for sklearn, pins in PIN_SETS.items():
                if ARGS.only and sklearn not in ARGS.only:
                    continue
                entries = [e for e in manifest if e["sklearn_version"] == sklearn]
                if not entries:
                    continue
                first = _spec(entries[0], pins, tmp, version=1, labels=labels)
                try:
                    cold = cold_rt.build(first, log=quiet)
                except BuildError as exc:
                    rows.append({"sklearn": sklearn, "model": "-", "error": str(exc)})
                    print(f"{sklearn}: cold build failed: {exc}\n{exc.log_tail}", file=sys.stderr)
                    continue
                rows.append(
                    {
                        "sklearn": sklearn,
                        "model": entries[0]["name"],
                        "kind": "cold",
                        "seconds": cold.duration_s,
                        "size_mb": round(cold.size_bytes / 1e6, 1),
                    }
                )
                for entry in entries:
                    spec = _spec(entry, pins, tmp, version=2, labels=labels)
                    warm = warm_rt.build(spec, log=quiet)
                    row = {
                        "sklearn": sklearn,
                        "model": entry["name"],
                        "kind": "warm",
                        "seconds": warm.duration_s,
                        "size_mb": round(warm.size_bytes / 1e6, 1),
                    }
                    if not ARGS.no_serve:
                        row["serves"] = _serves(warm_rt, spec, warm, entry)
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr)
        finally:
            _cleanup(f"portal.bench.run={run}")
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-image", default="portal-base:bookworm")
    parser.add_argument(
        "--wheelhouse", default=os.environ.get("PORTAL_WHEELHOUSE", str(REPO / "var" / "wheels"))
    )
    parser.add_argument("--only", action="append", help="scikit-learn version(s) to bench")
    parser.add_argument("--no-serve", action="store_true", help="skip the prediction check")
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


ARGS = parse_args([])


def main() -> int:
    global ARGS  # noqa: PLW0603 - one run per process; helpers read the parsed options
    ARGS = parse_args()
    rows = bench()
    if ARGS.json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"{'sklearn':8} {'model':14} {'build':5} {'seconds':>8} {'size MB':>8}  serves")
        for r in rows:
            if "error" in r:
                print(f"{r['sklearn']:8} {'-':14} error: {r['error']}")
                continue
            print(
                f"{r['sklearn']:8} {r['model']:14} {r['kind']:5} {r['seconds']:8.1f} "
                f"{r['size_mb']:8.1f}  {r.get('serves', '')}"
            )
    warm_ok = all(r["seconds"] < WARM_TARGET_S for r in rows if r.get("kind") == "warm")
    size_ok = all(r["size_mb"] < SIZE_TARGET_MB for r in rows if "size_mb" in r)
    serves_ok = all(r.get("serves", "ok") == "ok" for r in rows)
    print(
        f"targets: warm < {WARM_TARGET_S:.0f} s: {'met' if warm_ok else 'MISSED'}; "
        f"image < {SIZE_TARGET_MB:.0f} MB: {'met' if size_ok else 'MISSED'}; "
        f"predictions: {'ok' if serves_ok else 'WRONG'}"
    )
    return 0 if warm_ok and size_ok and serves_ok and rows else 1


if __name__ == "__main__":
    sys.exit(main())
