"""Safe rollouts on real containers: weighted and sticky splits, a candidate that is still
starting, automatic rollback of a slow candidate, automatic promotion of a good one, and
shadow traffic (a dead shadow included).

The real flow: versions uploaded and validated by a real worker, the deployment and the
candidates' replicas started by it on Docker, calls through the portal's pipeline (Django's
lane: its log rows committed, the shadow's worker thread beside it), the guardrails judged
by the beat task's service on the real prediction log.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from http import HTTPStatus

import joblib
import numpy as np
import pytest
from django.test import Client
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LinearRegression

from deployments_app import rollouts
from deployments_app.models import Deployment, PredictionLog, Replica, Rollout, ShadowPair
from deployments_app.predict import keys, proxy, routing, shadow
from deployments_app.rollouts import CandidateSpec
from portal.audit import Actor
from portal.models import AuditEvent
from tests.conftest import FIXTURE_DIR, upload_and_wait_ready, wait_for
from tests.deployments_app.test_lifecycle import _docker_or_skip, _wait_state, cleanup_docker

pytestmark = [pytest.mark.docker, pytest.mark.slow]
ROW = [1500, 3, 2]


def _house_data(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = np.column_stack(
        [rng.uniform(500, 4000, 2000), rng.integers(1, 6, 2000), rng.integers(1, 4, 2000)]
    )
    y = 300 * x[:, 0] + 10_000 * x[:, 1] + 5_000 * x[:, 2] + rng.normal(0, 1000, 2000)
    return x, y


def _linear(tmp_path, name: str, scale: float = 1.0):
    x, y = _house_data()
    path = tmp_path / f"{name}.joblib"
    model = LinearRegression().fit(x, y * scale)
    joblib.dump(model, path)
    return path, float(model.predict(np.array([ROW], dtype=float))[0])


def _slow_forest(tmp_path):
    """Right on average and slow: 600 trees answer one row in tens of milliseconds."""
    x, y = _house_data()
    path = tmp_path / "slow-forest.joblib"
    forest = RandomForestRegressor(n_estimators=600, max_depth=6, random_state=0, n_jobs=1)
    joblib.dump(forest.fit(x, y), path)
    return path


__all__ = ["cleanup_docker"]  # a fixture (imported for the tests here): removes their images


@pytest.fixture
def deployed(transactional_db, worker_storage, api_client, tmp_path, cleanup_docker):
    """A running deployment of v1 (the house fixture) and a key for it; more versions are
    uploaded by `add_version(path)`."""
    client = Client()
    _docker_or_skip()
    name = f"roll-{uuid.uuid4().hex[:6]}"
    cleanup_docker.append(name)
    deployer = api_client("deployer")
    upload_and_wait_ready(deployer, name, FIXTURE_DIR / "house_price_linreg.pkl", [ROW])
    response = deployer.post(
        "/api/v1/deployments", {"name": name, "model": name, "version": 1}, format="json"
    )
    assert response.status_code == HTTPStatus.ACCEPTED, response.content
    deployment = _wait_state(name, ("running",), timeout=600)
    _, key = keys.api_key_create(
        user=deployer.user, actor=Actor.system(), name="roll", deployment_names=[name]
    )

    def add_version(path):
        return upload_and_wait_ready(deployer, name, path, [ROW])

    def post(**headers):
        return client.post(
            f"/api/v1/deployments/{name}/predict",
            data=json.dumps({"features": ROW}),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {key}",
            **headers,
        )

    def call(n: int = 1, **headers):
        """n calls: the versions that answered, in order (every answer must be a 200)."""
        served = []
        for _ in range(n):
            response = post(**headers)
            assert response.status_code == HTTPStatus.OK, response.content
            assert response["X-Model-Version"] == str(response.json()["version"])
            served.append(response.json()["version"])
        return served

    call.post = post
    yield deployment, add_version, call, Actor(id=deployer.user.pk, name=deployer.user.username)
    for replica in Replica.objects.filter(deployment__name=name):
        from deployments_app.runtimes import get_runtime

        get_runtime(deployment.runtime).remove_replica(replica.name)


def _healthy(deployment: Deployment, number: int) -> Replica:
    def found():
        proxy._targets.clear()
        return Replica.objects.filter(
            deployment=deployment, version_number=number, healthy=True
        ).first()

    return wait_for(found, timeout=600, interval=1, what=f"a healthy replica of v{number}")


def _set(deployment, actor, *candidates, **options) -> Rollout:
    deployment.refresh_from_db()
    rollout = rollouts.rollout_set(
        deployment=deployment,
        candidates=[CandidateSpec(v, w) for v, w in candidates],
        actor=actor,
        **options,
    )
    proxy._targets.clear()  # the proxy's one-second view of the deployment
    return rollout


def test_weighted_and_sticky_splits_and_a_starting_candidate(deployed, tmp_path):
    deployment, add_version, call, actor = deployed
    add_version(_linear(tmp_path, "v2", scale=1.01)[0])

    # A candidate still starting gets no traffic, and no call fails meanwhile.
    _set(deployment, actor, (2, 30))
    # (Health is read after the calls: the replica may turn healthy while they run, and
    # then v2 may rightly serve some of them.)
    while True:
        proxy._targets.clear()
        served_now = set(call(20))
        if Replica.objects.filter(deployment=deployment, version_number=2, healthy=True):
            break
        assert served_now == {1}
    _healthy(deployment, 2)

    # Random split: each version's share within 3 points of its weight over 3,000 calls.
    served = Counter(call(3000))
    assert abs(served[2] / 3000 - 0.30) < 0.03, served
    assert set(served) == {1, 2}

    # Weight 0: exactly no traffic.
    _set(deployment, actor, (2, 0))
    assert set(call(500)) == {1}

    # Sticky by header: a caller always lands on the same version, and raising the weight
    # keeps those already on the candidate there (same rollout id: same layout).
    rollout = _set(deployment, actor, (2, 30), sticky_header="X-User")
    users = [f"user-{i}" for i in range(300)]
    first = {}
    for user in users:
        versions = set(call(3, HTTP_X_USER=user))
        assert len(versions) == 1, (user, versions)
        first[user] = versions.pop()
    on_candidate = {u for u, v in first.items() if v == 2}
    assert 0.2 < len(on_candidate) / len(users) < 0.4
    assert _set(deployment, actor, (2, 60), sticky_header="X-User").pk == rollout.pk
    after = {user: call(1, HTTP_X_USER=user)[0] for user in users}
    assert all(after[u] == 2 for u in on_candidate)
    assert 0.5 < sum(v == 2 for v in after.values()) / len(users) < 0.7
    # The layout is the hash's: the proxy's routing agrees with every answer.
    target = proxy.get_target(deployment.name, fresh=True)
    assert all((routing.point(rollout.pk, u) < 6000) == (after[u] == 2) for u in users), (
        "sticky layout"
    )

    # Pinning: the version header wins over the split; a version not served is a 404.
    assert set(call(20, HTTP_X_PORTAL_VERSION="1")) == {1}
    assert set(call(20, HTTP_X_PORTAL_VERSION="2")) == {2}
    refused = call.post(HTTP_X_PORTAL_VERSION="7")
    assert refused.status_code == HTTPStatus.NOT_FOUND
    assert "does not serve version 7" in refused.json()["error"]
    assert routing.shares(target) == {1: 40, 2: 60}
    logged = Counter(PredictionLog.objects.filter(status_code=200).values_list(
        "version_number", flat=True))  # fmt: skip
    assert logged[2] > 0 and logged[1] > 0  # the log row records who served
    assert AuditEvent.objects.filter(action="rollout.started").count() == 1
    assert AuditEvent.objects.filter(action="rollout.changed").count() == 3


def _judge_until(deployment, call, outcome: str, *, calls: int, timeout: float):
    """Keep calling and judging (as beat would) until the rollout's judgement is `outcome`."""
    seen = []

    def judged():
        call(calls)
        rollout = rollouts.active_rollout(Deployment.objects.get(pk=deployment.pk))
        if rollout is None:
            return "finished"
        seen.append(rollouts.rollout_judge(rollout))
        proxy._targets.clear()
        return seen[-1] == outcome and seen[-1]

    wait_for(judged, timeout=timeout, interval=0.5, what=f"judgement '{outcome}' ({seen[-5:]})")
    return seen


def test_a_slow_candidate_is_rolled_back_and_a_good_one_promoted(deployed, tmp_path):
    deployment, add_version, call, actor = deployed
    add_version(_slow_forest(tmp_path))  # v2
    add_version(_linear(tmp_path, "v3", scale=1.0)[0])  # v3
    rails = {"min_samples": 30, "p95_ms": 40, "p95_factor": 3}

    rollout = _set(deployment, actor, (2, 50), plan="canary", bake_seconds=600, guardrails=rails)
    _healthy(deployment, 2)
    seen = _judge_until(deployment, call, "breach", calls=40, timeout=300)
    assert "insufficient data" in seen or seen[0] == "breach"
    rollout.refresh_from_db()
    assert rollout.status == Rollout.Status.ROLLED_BACK
    assert "p95" in rollout.verdict and rollout.candidates.get().weight == 0
    event = AuditEvent.objects.get(action="rollout.rolled_back")
    candidate = event.details["metrics"]["v2"]
    assert candidate["p95_ms"] > 40 and candidate["samples"] >= 30
    assert event.details["metrics"]["stable"]["version"] == 1
    proxy._targets.clear()
    assert set(call(50)) == {1}  # at once, before the candidate's replicas are gone
    wait_for(
        lambda: not Replica.objects.filter(deployment=deployment, version_number=2).exists(),
        timeout=120,
        what="the rolled-back candidate's replicas removed",
    )

    # A good candidate: two steps, each baked and judged, then promoted automatically.
    rollout = _set(
        deployment, actor, (3, 20), plan="linear", steps=[20, 60], bake_seconds=3,
        auto_promote=True, guardrails={"min_samples": 20},
    )  # fmt: skip
    _healthy(deployment, 3)
    seen = _judge_until(deployment, call, "promoted", calls=40, timeout=300)
    rollout.refresh_from_db()
    assert "passed" in seen, (seen, rollout.verdict, rollout.decision)
    deployment.refresh_from_db()
    assert deployment.version.number == 3 and deployment.previous_version.number == 1
    rollout.refresh_from_db()
    assert rollout.status == Rollout.Status.PROMOTED
    assert AuditEvent.objects.filter(action="rollout.step_passed").count() == 1
    assert AuditEvent.objects.filter(action="rollout.promoted").exists()
    proxy._targets.clear()
    assert set(call(30)) == {3}
    wait_for(
        lambda: (
            set(
                Replica.objects.filter(deployment=deployment).values_list(
                    "version_number", flat=True
                )
            )
            == {3}
        ),  # fmt: skip
        timeout=300,
        what="v1's replicas drained and removed after the promotion",
    )


def test_shadow_pairs_report_and_a_dead_shadow_never_reaches_callers(deployed, tmp_path):
    deployment, add_version, call, actor = deployed
    v2, v2_answer = _linear(tmp_path, "v2", scale=1.05)
    add_version(v2)
    rollouts.shadow_set(deployment=deployment, version=2, percent=100, actor=actor)
    _healthy(deployment, 2)
    assert set(call(100)) == {1}  # the shadow never answers a caller
    assert shadow.drain()
    pairs = ShadowPair.objects.filter(deployment_name=deployment.name)
    assert pairs.count() == 100 and set(pairs.values_list("shadow_status", flat=True)) == {200}
    from django.utils import timezone

    report = rollouts.shadow_report(
        deployment=deployment, since=timezone.now() - timezone.timedelta(hours=1)
    )
    assert report["samples"] == 100 and report["kind"] == "regressor"
    primary = 558408.111544802  # the fixture's answer for ROW (its manifest)
    assert report["mae"] == pytest.approx(abs(v2_answer - primary), rel=1e-6)
    assert report["shadow_p50_ms"] and report["primary_p50_ms"]
    assert PredictionLog.objects.filter(version_number=2).count() == 0  # no log rows

    # The shadow dies: callers see nothing of it; its pairs record the failure.
    from deployments_app.runtimes import get_runtime

    runtime = get_runtime(deployment.runtime)
    for replica in Replica.objects.filter(deployment=deployment, version_number=2):
        runtime.remove_replica(replica.name)
    proxy._targets.clear()
    assert set(call(100)) == {1}
    assert shadow.drain()
    failed = ShadowPair.objects.filter(deployment_name=deployment.name).exclude(shadow_status=200)
    assert failed.count() >= 90
    assert AuditEvent.objects.filter(action="deployment.shadow_set").exists()
