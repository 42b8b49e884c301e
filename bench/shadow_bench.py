"""Does shadow traffic cost the caller anything? The proxy with the shadow off and on.

One run, one machine, the house-price LinearRegression as `proxy_bench.py` sets it up (its
`Bench`: a database of its own, the portal as runportal serves it, one replica on Docker),
plus a second replica of the same image registered as version 2 and made the deployment's
shadow. Rounds alternate shadow off / on at 100 % (every call copied): wrk at concurrency 1
(p50, p99) and 16 (req/s); medians of the rounds. Also counted: the shadow pairs written
while it was on, against the 2xx answers (copies the bounded queue dropped are the
difference).

    .venv/bin/python bench/shadow_bench.py [--duration 8] [--rounds 3] [--workers 2]

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


def main() -> int:
    args = pb.comparison_args(__doc__)
    bench = pb.Bench(args)
    try:
        bench.prepare_portal()
        outcome, replica, endpoint = bench.serve_model()
        name, raw_key = bench.create_rows(outcome, replica, endpoint)
        from deployments_app.models import Deployment, Replica, ShadowPair
        from models_app.models import ModelVersion

        # The shadow: the same image again, as version 2 of the same model.
        status = bench.runtime.start_replica(**{**bench._start_args, "index": 1})
        bench.replicas.append(status.name)
        if not bench.runtime.wait_healthy(status, timeout=120):
            raise RuntimeError("the shadow replica did not become healthy")
        deployment = Deployment.objects.get(name=name)
        v1 = deployment.version
        v2 = ModelVersion.objects.create(
            model=v1.model, number=2, status=v1.status, artifact_sha256="f" * 64,  # a row only
            artifact_size=v1.artifact_size, original_filename=v1.original_filename,
            format=v1.format, sklearn_version=v1.sklearn_version,
            python_requirements=v1.python_requirements, schema=v1.schema,
        )  # fmt: skip
        Replica.objects.create(
            deployment=deployment, name=status.name, index=1, version_number=2,
            endpoint=status.endpoint, healthy=True, state="running",
        )  # fmt: skip
        portal, _proc = bench.start_portal()
        url = f"{portal}/api/v1/deployments/{name}/predict"
        script = pb.write_lua(
            bench.tmp / "proxy.lua", {"features": pb.ROW}, {"Authorization": f"Bearer {raw_key}"}
        )

        def shadow(on: bool) -> None:
            Deployment.objects.filter(pk=deployment.pk).update(
                shadow_version=v2 if on else None, shadow_percent=100 if on else 0
            )
            time.sleep(1.5)  # the proxy's view of a deployment is cached for a second

        runs: dict[str, dict[str, list]] = {m: {"c1": [], "c16": []} for m in ("off", "on")}
        pairs = answered = 0
        shadow(False)
        pb.run_wrk(url, script, 16, 3)  # warm-up
        for round_no in range(1, args.rounds + 1):
            for mode in ("off", "on"):
                shadow(mode == "on")
                before = ShadowPair.objects.count()
                for conc in (1, 16):
                    r = pb.run_wrk(url, script, conc, args.duration)
                    runs[mode][f"c{conc}"].append(r)
                    if mode == "on":
                        answered += r["sent"] - r["other"] - r["socket_errors"]
                if mode == "on":
                    time.sleep(2)  # the shadow's queue drains after the answers
                    pairs += ShadowPair.objects.count() - before
                c1, c16 = runs[mode]["c1"][-1], runs[mode]["c16"][-1]
                pb.log(
                    f"round {round_no} shadow {mode:3}: c1 p50 {c1['p50']:.3f} ms "
                    f"p99 {c1['p99']:.3f} ms; c16 {c16['rps']:,.0f} req/s"
                )
        shadow(False)

        def med(mode: str, point: str, key: str) -> float:
            return statistics.median(r[key] for r in runs[mode][point])

        print()
        print(
            f"# Shadow benchmark: house_price_linreg.pkl through the proxy, shadow off vs on "
            f"(100 % of calls copied); wrk, {args.duration} s per point, median of "
            f"{args.rounds} rounds; {os.cpu_count()} CPUs"
        )
        print()
        print("| shadow | c1 p50 | c1 p99 | c16 req/s | c16 p50 |")
        print("|---|---:|---:|---:|---:|")
        for mode in ("off", "on"):
            print(
                f"| {mode} | {med(mode, 'c1', 'p50'):.2f} ms | {med(mode, 'c1', 'p99'):.2f} ms | "
                f"{med(mode, 'c16', 'rps'):,.0f} | {med(mode, 'c16', 'p50'):.2f} ms |"
            )
        print()
        print(
            f"c1 p50 on - off: {med('on', 'c1', 'p50') - med('off', 'c1', 'p50'):+.3f} ms; "
            f"shadow pairs written while on: {pairs:,} for {answered:,} answers "
            f"({answered - pairs:,} copies dropped by the bounded queue or still in flight)"
        )
        return 0
    except KeyboardInterrupt:
        pb.log("interrupted; cleaning up")
        return 130
    finally:
        bench.cleanup()


if __name__ == "__main__":
    sys.exit(main())
