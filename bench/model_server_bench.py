"""Benchmark the model server (deployments_app/model_server/server.py).

Trains a LinearRegression on 3 features, saves it with joblib in a temporary
directory, starts the model server on 127.0.0.1 (one process, uvloop +
httptools), and measures single-row requests:

* latency p50/p99 at concurrency 1,
* throughput (req/s) at concurrency 16,

each for ``--duration`` seconds (default 5). A constant-response raw ASGI app
under the same uvicorn settings is measured alongside to show what the server
itself adds. Uses ``wrk`` when installed, else an httpx/asyncio client that
also stops after ``--max-requests``.

    .venv/bin/python bench/model_server_bench.py [--duration 5] [--client wrk|httpx]

Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
SERVER = REPO / "deployments_app" / "model_server" / "server.py"
ROW = [1500.0, 3.0, 2.0]
PREDICT_BODY = json.dumps({"instances": [ROW]})
INFER_BODY = json.dumps(
    {"inputs": [{"name": "input-0", "shape": [1, 3], "datatype": "FP64", "data": ROW}]}
)

CONST_APP = """
BODY = b'{"predictions":[558408.1],"model":"const","version":1}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["method"] == "POST":
        message = await receive()
        while message.get("more_body"):
            message = await receive()
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
"""

REFERENCE = [
    ("Flask app.run() + pickle (BENCHMARKS.md)", "0.83 ms", "-", "932"),
    ("FastAPI async, uvicorn 1 worker (BENCHMARKS.md)", "0.50 ms", "-", "2,060"),
    ("constant Starlette, uvloop+httptools (BENCHMARKS.md)", "0.12 ms", "-", "23,777"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("server did not start")


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def train_model(directory: Path) -> Path:
    import joblib
    import numpy as np
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(0)
    x = rng.uniform([500, 1, 1], [4000, 6, 4], size=(500, 3))
    y = x @ np.array([300.0, 10000.0, 15000.0]) + rng.normal(0, 1000, 500)
    path = directory / "model.joblib"
    joblib.dump(LinearRegression().fit(x, y), path)
    return path


def in_process_us(model_path: Path) -> tuple[float, float]:
    """Microseconds per single-row call: model.predict alone, and the server's
    whole request path without HTTP (JSON parse, input build, predict, JSON dump)."""
    import importlib.util

    import joblib
    import numpy as np

    spec = importlib.util.spec_from_file_location("bench_model_server", SERVER)
    server = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(server)
    model = joblib.load(model_path)
    state = server.ModelState(model, "bench", 1)
    app = server.App(state)
    x = np.asarray([ROW])
    body = PREDICT_BODY.encode()
    headers = [(b"content-length", str(len(body)).encode())]
    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": headers}

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        return None

    async def app_loop(n):
        for _ in range(n):
            await app(scope, receive, send)

    def timed(fn, n=3000):
        fn(200)
        best = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn(n)
            best.append((time.perf_counter() - t0) / n * 1e6)
        return min(best)

    def predict_loop(n):
        for _ in range(n):
            model.predict(x)

    return timed(predict_loop), timed(lambda n: asyncio.run(app_loop(n)))


# --------------------------------------------------------------------------
# clients
# --------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    return float(match.group(1)) * _UNITS[match.group(2)] if match else float("nan")


def run_wrk(url: str, body: str | None, conc: int, duration: int, workdir: Path) -> dict:
    args = ["wrk", f"-t{min(conc, 2)}", f"-c{conc}", f"-d{duration}s", "--latency"]
    if body is not None:
        script = workdir / f"post_{abs(hash(body))}.lua"
        script.write_text(
            'wrk.method = "POST"\n'
            f"wrk.body = {json.dumps(body)}\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
        args += ["-s", str(script)]
    out = subprocess.run(
        [*args, url], capture_output=True, text=True, timeout=duration + 30, check=True
    ).stdout
    result = {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "errors": 0,
    }
    for pct in ("50", "99"):
        match = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        result[f"p{pct}"] = _ms(match.group(1)) if match else float("nan")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock_err = re.search(r"Socket errors: (.*)", out)
    result["errors"] = (int(non2xx.group(1)) if non2xx else 0) + (
        sum(int(n) for n in re.findall(r"\d+", sock_err.group(1))) if sock_err else 0
    )
    return result


async def _httpx_run(url: str, body: str | None, conc: int, duration: int, max_requests: int):
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + duration
    headers = {"content-type": "application/json"}
    content = body.encode() if body is not None else None
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def worker():
            nonlocal errors
            while time.perf_counter() < stop_at and len(latencies) < max_requests:
                t0 = time.perf_counter()
                if content is None:
                    r = await client.get(url)
                else:
                    r = await client.post(url, content=content, headers=headers)
                latencies.append((time.perf_counter() - t0) * 1000)
                errors += r.status_code != 200

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        elapsed = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100)
    return {
        "rps": len(latencies) / elapsed,
        "requests": len(latencies),
        "p50": q[49],
        "p99": q[98],
        "errors": errors,
    }


def run_httpx(url, body, conc, duration, max_requests):
    return asyncio.run(_httpx_run(url, body, conc, duration, max_requests))


# --------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--max-requests", type=int, default=200_000, help="httpx client cap")
    parser.add_argument("--client", choices=["wrk", "httpx"], default=None)
    args = parser.parse_args()
    client = args.client or ("wrk" if shutil.which("wrk") else "httpx")
    python = sys.executable
    procs: list[subprocess.Popen] = []
    rows = []
    with tempfile.TemporaryDirectory(prefix="model-server-bench-") as tmp:
        workdir = Path(tmp)
        model = train_model(workdir)
        predict_us, app_us = in_process_us(model)
        (workdir / "const_app.py").write_text(CONST_APP)
        env = {k: v for k, v in os.environ.items() if k != "ACCESS_LOG"}
        try:
            model_port = free_port()
            procs.append(
                subprocess.Popen(
                    [
                        python,
                        str(SERVER),
                        "--model",
                        str(model),
                        "--name",
                        "bench",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(model_port),
                    ],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )  # fmt: skip
            )
            const_port = free_port()
            procs.append(
                subprocess.Popen(
                    [
                        python,
                        "-m",
                        "uvicorn",
                        "const_app:app",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(const_port),
                        "--loop",
                        "uvloop",
                        "--http",
                        "httptools",
                        "--no-access-log",
                        "--log-level",
                        "warning",
                        "--no-server-header",
                    ],
                    cwd=workdir,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )  # fmt: skip
            )
            wait_port(model_port, procs[0])
            wait_port(const_port, procs[1])
            base = f"http://127.0.0.1:{model_port}"
            check = httpx.post(f"{base}/predict", content=PREDICT_BODY).json()
            print(f"model server answers: {check}", file=sys.stderr)
            targets = [
                ("constant raw ASGI app, POST", f"http://127.0.0.1:{const_port}/", PREDICT_BODY),
                ("model server GET /health", f"{base}/health", None),
                ("model server POST /predict", f"{base}/predict", PREDICT_BODY),
                ("model server POST /v2/models/bench/infer", f"{base}/v2/models/bench/infer",
                 INFER_BODY),
            ]  # fmt: skip
            for label, url, body in targets:
                if client == "wrk":
                    c1 = run_wrk(url, body, 1, args.duration, workdir)
                    c16 = run_wrk(url, body, 16, args.duration, workdir)
                else:
                    c1 = run_httpx(url, body, 1, args.duration, args.max_requests)
                    c16 = run_httpx(url, body, 16, args.duration, args.max_requests)
                rows.append((label, c1, c16))
                print(f"  measured {label}", file=sys.stderr)
            rss_model, rss_const = rss_mb(procs[0].pid), rss_mb(procs[1].pid)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    print()
    print(
        f"client: {client}; {args.duration} s per run; 1 server process; cpus: {os.cpu_count()}; "
        "single-row JSON"
    )
    print(f"in-process: LinearRegression.predict {predict_us:.1f} us; "
          f"server request path without HTTP {app_us:.1f} us")  # fmt: skip
    print(f"RSS: model server {rss_model:.0f} MB, constant app {rss_const:.0f} MB")
    print()
    header = (
        f"| {'endpoint':<52} | {'c1 p50':>8} | {'c1 p99':>8} | {'c16 req/s':>10} | {'errors':>6} |"
    )
    print(header)
    print("|" + "-" * 54 + "|" + "-" * 9 + ":|" + "-" * 9 + ":|" + "-" * 11 + ":|" + "-" * 7 + ":|")
    for label, c1, c16 in rows:
        print(
            f"| {label:<52} | {c1['p50']:>5.2f} ms | {c1['p99']:>5.2f} ms | "
            f"{c16['rps']:>10,.0f} | {c1['errors'] + c16['errors']:>6} |"
        )
    for label, p50, p99, rps in REFERENCE:
        print(f"| {label:<52} | {p50:>8} | {p99:>8} | {rps:>10} | {'':>6} |")
    const, predict = rows[0], rows[2]
    if client == "httpx":
        print("\nnote: the Python client is the bottleneck here; install wrk for server figures")
    print()
    print(
        f"/predict vs constant app: +{predict[1]['p50'] - const[1]['p50']:.3f} ms at c1 p50; "
        f"{predict[2]['rps'] / const[2]['rps']:.0%} of its c16 throughput"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
