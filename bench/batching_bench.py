"""Benchmark adaptive batching in the model server (deployments_app/model_server/server.py).

Starts the model server directly (no proxy; 127.0.0.1, one process, uvloop + httptools) for
two models, each with batching off and on (``--max-size`` rows, ``--max-wait-ms``):

* a RandomForestClassifier of 100 trees on 4 features, trained here with the portal's own
  scikit-learn,
* the house model (/work/shared/fixtures/models/house_price_linreg.pkl, a LinearRegression
  on 3 features) in its cached server environment (scikit-learn 1.5.2) when there is one,
  else a LinearRegression trained here,

and measures single-row POST /predict with wrk: p50/p99 at concurrency 1, req/s at 16,
``--duration`` seconds per run, ``--rounds`` interleaved rounds (off and on alternate, so a
noisy neighbour hits both), medians printed as a Markdown table. With batching on, the
server's /health counters give the mean requests per predict call at c16.

    .venv/bin/python bench/batching_bench.py [--duration 5] [--rounds 3]

Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
SERVER = REPO / "deployments_app" / "model_server" / "server.py"
HOUSE = Path("/work/shared/fixtures/models/house_price_linreg.pkl")
ENV_CACHE = Path(os.environ.get("PORTAL_ENV_CACHE", "/opt/model-portal/envs"))
FOREST_ROW = [5.1, 3.5, 1.4, 0.2]
HOUSE_ROW = [1500.0, 3.0, 2.0]

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    return float(match.group(1)) * _UNITS[match.group(2)] if match else float("nan")


def run_wrk(url: str, body: str, conc: int, duration: int, workdir: Path) -> dict:
    script = workdir / f"post_{abs(hash(body))}.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(body)}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    args = ["wrk", f"-t{min(conc, 2)}", f"-c{conc}", f"-d{duration}s", "--latency", "-s"]
    out = subprocess.run(
        [*args, str(script), url], capture_output=True, text=True, timeout=duration + 30, check=True
    ).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for pct in ("50", "99"):
        match = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        result[f"p{pct}"] = _ms(match.group(1)) if match else float("nan")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock_err = re.search(r"Socket errors: (.*)", out)
    result["errors"] = (int(non2xx.group(1)) if non2xx else 0) + (
        sum(int(n) for n in re.findall(r"\d+", sock_err.group(1))) if sock_err else 0
    )
    return result


def train_forest(directory: Path) -> Path:
    import joblib
    import numpy as np
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 4)) + FOREST_ROW
    y = (x[:, 2] + x[:, 3] + rng.normal(0, 0.5, 2000) > 1.6).astype(int)
    path = directory / "forest.joblib"
    joblib.dump(RandomForestClassifier(n_estimators=100, random_state=0).fit(x, y), path)
    return path


def train_linear(directory: Path) -> Path:
    import joblib
    import numpy as np
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(0)
    x = rng.uniform([500, 1, 1], [4000, 6, 4], size=(500, 3))
    y = x @ np.array([300.0, 10000.0, 15000.0]) + rng.normal(0, 1000, 500)
    path = directory / "house.joblib"
    joblib.dump(LinearRegression().fit(x, y), path)
    return path


def house_python() -> str | None:
    """The cached server environment with the house model's own pins, if any."""
    for reqs in sorted((ENV_CACHE / "servers").glob("rt-*/requirements.txt")):
        pins = reqs.read_text()
        if "scikit-learn==1.5.2" in pins and "uvicorn==" in pins:
            return str(reqs.parent / "bin" / "python")
    return None


def predict_ms(model_path: Path, row: list[float]) -> tuple[float, float]:
    """In-process predict of 1 row and of 64 rows, best of 3 x 20 calls, ms per call."""
    import joblib
    import numpy as np

    model = joblib.load(model_path)
    one, many = np.asarray([row]), np.asarray([row] * 64)

    def best(x) -> float:
        model.predict(x)
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(20):
                model.predict(x)
            runs.append((time.perf_counter() - t0) / 20 * 1000)
        return min(runs)

    return best(one), best(many)


class Server:
    def __init__(self, python: str, model: Path, fmt: str, batch: tuple[int, float] | None, log):
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        if batch is not None:
            env["MODEL_BATCH_MAX_SIZE"] = str(batch[0])
            env["MODEL_BATCH_MAX_WAIT_MS"] = str(batch[1])
        argv = [python, str(SERVER), "--model", str(model), "--format", fmt, "--name", "bench"]
        argv += ["--host", "127.0.0.1", "--port", "0"]
        self.log = log
        self._fh = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=self._fh)
        deadline = time.monotonic() + 120
        while True:
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith("{") and '"listening"' in line:
                    self.url = f"http://127.0.0.1:{json.loads(line)['port']}"
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start: {log.read_text()}")
            time.sleep(0.05)

    def batching(self) -> dict:
        return httpx.get(f"{self.url}/health").json().get("batching") or {}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._fh.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-size", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed")
    batch = (args.max_size, args.max_wait_ms)
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="batching-bench-") as tmp:
        workdir = Path(tmp)
        forest = train_forest(workdir)
        old_python = house_python()
        if old_python and HOUSE.exists():
            house, house_fmt, house_py, house_label = HOUSE, "pickle", old_python, "house (1.5.2)"
        else:
            house, house_fmt, house_py = train_linear(workdir), "joblib", sys.executable
            house_label = "house (LinearRegression)"
        models = [
            ("RandomForest(100)", forest, "joblib", sys.executable, FOREST_ROW),
            (house_label, house, house_fmt, house_py, HOUSE_ROW),
        ]
        inproc = {label: predict_ms(path, row) for label, path, _, py, row in models[:1]}
        results: dict[tuple[str, str], dict[str, list[float]]] = {}
        try:
            targets = []
            for label, path, fmt, python, row in models:
                body = json.dumps({"instances": [row]})
                for mode, setting in (("off", None), ("on", batch)):
                    log = workdir / f"{len(servers)}.log"
                    servers.append(Server(python, path, fmt, setting, log))
                    check = httpx.post(f"{servers[-1].url}/predict", content=body).json()
                    print(f"{label} batching {mode}: {check}", file=sys.stderr)
                    targets.append((label, mode, servers[-1], body))
            for rnd in range(args.rounds):
                for label, mode, server, body in targets:
                    url = f"{server.url}/predict"
                    c1 = run_wrk(url, body, 1, args.duration, workdir)
                    before = server.batching()
                    c16 = run_wrk(url, body, 16, args.duration, workdir)
                    after = server.batching()
                    per_call = float("nan")
                    if after:
                        calls = after["batches"] - before["batches"]
                        per_call = (after["requests"] - before["requests"]) / max(calls, 1)
                    out = results.setdefault((label, mode), {})
                    for key, value in (
                        ("p50", c1["p50"]),
                        ("p99", c1["p99"]),
                        ("rps", c16["rps"]),
                        ("c16p50", c16["p50"]),
                        ("per_call", per_call),
                        ("errors", c1["errors"] + c16["errors"]),
                    ):
                        out.setdefault(key, []).append(value)
                    print(f"  round {rnd + 1}: {label} {mode} done", file=sys.stderr)
        finally:
            for server in servers:
                server.stop()

    med = statistics.median
    print()
    print(
        f"wrk, {args.duration} s per run, medians of {args.rounds} interleaved rounds, "
        f"cpus: {os.cpu_count()}, single-row JSON, model server direct (no proxy); "
        f"batching on = max {args.max_size} rows, {args.max_wait_ms:g} ms wait"
    )
    for label, (one, many) in inproc.items():
        print(f"in-process {label}: predict 1 row {one:.2f} ms, 64 rows {many:.2f} ms")
    print()
    print(
        "| model | batching | c1 p50 | c1 p99 | c16 req/s (min-max) | c16 p50 "
        "| requests per predict at c16 | errors |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for label, *_ in models:
        for mode in ("off", "on"):
            r = results[(label, mode)]
            per_call = med(r["per_call"])
            print(
                f"| {label} | {mode} | {med(r['p50']):.2f} ms | {med(r['p99']):.2f} ms | "
                f"{med(r['rps']):,.0f} ({min(r['rps']):,.0f}-{max(r['rps']):,.0f}) | "
                f"{med(r['c16p50']):.2f} ms | "
                f"{'-' if per_call != per_call else f'{per_call:.1f}'} | {sum(r['errors'])} |"
            )
    print()
    for label, *_ in models:
        off, on = results[(label, "off")], results[(label, "on")]
        print(
            f"{label}: c1 p50 {med(on['p50']) - med(off['p50']):+.2f} ms with batching; "
            f"c16 throughput x{med(on['rps']) / med(off['rps']):.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
