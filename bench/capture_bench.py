"""What does payload capture cost the caller? The proxy with capture off and at 100 %.

One run, one machine, the house-price LinearRegression as `proxy_bench.py` sets it up (its
`Bench`: a database of its own, the portal as runportal serves it, one replica on Docker).
Rounds alternate capture off / on at 100 % of calls with a redacting policy (area hashed with
HMAC-SHA256, bathrooms masked, outputs kept): wrk at concurrency 1 (p50, p99) and 16
(req/s); medians of the rounds. The record goes into the prediction log row the group commit
writes anyway, so capture adds no statement; also counted: the captured records written
while it was on, against the 2xx answers (they must be equal).

    .venv/bin/python bench/capture_bench.py [--duration 8] [--rounds 3] [--workers 2]

Needs what proxy_bench.py needs (PostgreSQL, Redis, Docker or the process runtime, wrk);
removes everything it made.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import proxy_bench as pb  # noqa: E402 - a sibling script

POLICY = {"/0": {"action": "hash"}, "/2": {"action": "mask"}}


def main() -> int:
    args = pb.comparison_args(__doc__)
    bench = pb.Bench(args)
    try:
        bench.prepare_portal()
        outcome, replica, endpoint = bench.serve_model()
        name, raw_key = bench.create_rows(outcome, replica, endpoint)
        from deployments_app.models import CapturePolicy, Deployment, PredictionLog

        deployment = Deployment.objects.get(name=name)
        CapturePolicy.objects.create(deployment=deployment, fields=POLICY)
        portal, _proc = bench.start_portal()
        url = f"{portal}/api/v1/deployments/{name}/predict"
        script = pb.write_lua(
            bench.tmp / "proxy.lua", {"features": pb.ROW}, {"Authorization": f"Bearer {raw_key}"}
        )

        def capture(on: bool) -> None:
            Deployment.objects.filter(pk=deployment.pk).update(capture_percent=100 if on else 0)
            time.sleep(1.5)  # the proxy's view of a deployment is cached for a second

        def captured() -> int:
            return PredictionLog.objects.filter(deployment_name=name, payload__isnull=False).count()

        runs: dict[str, dict[str, list]] = {m: {"c1": [], "c16": []} for m in ("off", "on")}
        records = answered = 0
        capture(False)
        pb.run_wrk(url, script, 16, 3)  # warm-up
        for round_no in range(1, args.rounds + 1):
            for mode in ("off", "on"):
                capture(mode == "on")
                before = captured()
                for conc in (1, 16):
                    r = pb.run_wrk(url, script, conc, args.duration)
                    runs[mode][f"c{conc}"].append(r)
                    if mode == "on":
                        answered += r["ok"]  # 2xx answers wrk received
                if mode == "on":
                    records += captured() - before
                c1, c16 = runs[mode]["c1"][-1], runs[mode]["c16"][-1]
                pb.log(
                    f"round {round_no} capture {mode:3}: c1 p50 {c1['p50']:.3f} ms "
                    f"p99 {c1['p99']:.3f} ms; c16 {c16['rps']:,.0f} req/s"
                )
        capture(False)
        sample = (
            PredictionLog.objects.filter(deployment_name=name, payload__isnull=False)
            .values_list("payload", flat=True)
            .first()
        )

        def med(mode: str, point: str, key: str) -> float:
            return statistics.median(r[key] for r in runs[mode][point])

        print()
        print(
            f"# Capture benchmark: house_price_linreg.pkl through the proxy, capture off vs "
            f"100 % with redaction (/0 hashed, /2 masked); wrk, {args.duration} s per point, "
            f"median of {args.rounds} rounds; {os.cpu_count()} CPUs"
        )
        print()
        print("| capture | c1 p50 | c1 p99 | c16 req/s | c16 p50 |")
        print("|---|---:|---:|---:|---:|")
        for mode in ("off", "on"):
            print(
                f"| {mode} | {med(mode, 'c1', 'p50'):.2f} ms | {med(mode, 'c1', 'p99'):.2f} ms | "
                f"{med(mode, 'c16', 'rps'):,.0f} | {med(mode, 'c16', 'p50'):.2f} ms |"
            )
        print()
        print(
            f"c1 p50 on - off: {med('on', 'c1', 'p50') - med('off', 'c1', 'p50'):+.3f} ms; "
            f"c16 req/s on / off: {med('on', 'c16', 'rps') / med('off', 'c16', 'rps'):.3f}; "
            f"records captured while on: {records:,} for {answered:,} 2xx answers wrk received "
            f"(calls cut off when a run stops are logged but not received); a record: {sample}"
        )
        return 0
    except KeyboardInterrupt:
        pb.log("interrupted; cleaning up")
        return 130
    finally:
        bench.cleanup()


if __name__ == "__main__":
    sys.exit(main())
