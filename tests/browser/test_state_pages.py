"""Pages that follow state (issue 12), in a real browser: the deployment page follows an
update, a stop and a start without a reload; keys are created once; long names wrap and
tables scroll on a phone; build logs open at their end; examples read as JSON.

No worker runs: the tests play its part by writing the rows it would write, and the
commands' queued tasks are recorded instead of sent (the broker is shared with other suites).
"""

from __future__ import annotations

import json
from datetime import date, timedelta

import pytest

from deployments_app import services
from deployments_app.models import ApiKey, Build, Deployment
from models_app.models import ModelVersion
from portal.models import AuditEvent
from tests.browser.conftest import login
from tests.portal.test_dashboard import log_calls, make_deployment

pytestmark = pytest.mark.django_db(transaction=True)
PHONE = {"width": 390, "height": 844}


@pytest.fixture(autouse=True)
def _private_cache(settings, tmp_path):
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": str(tmp_path),
        }
    }


@pytest.fixture(autouse=True)
def queued(monkeypatch):
    tasks: list[str] = []
    monkeypatch.setattr(services, "_enqueue", lambda name, *a, **kw: tasks.append(name))
    return tasks


@pytest.fixture
def dialogs(page):
    """Accept every confirm() and remember what it asked."""
    asked: list[str] = []

    def _accept(dialog):
        asked.append(dialog.message)
        dialog.accept()

    page.on("dialog", _accept)
    return asked


def _no_horizontal_overflow(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


def _buttons(page) -> set[str]:
    return set(
        page.eval_on_selector_all(
            "#live-actions [data-action]", "els => els.map(e => e.dataset.action)"
        )
    )


def test_deployment_page_follows_an_update_and_a_rollback_without_reloading(
    page, make_user, shot, dialogs, queued
):
    deployment = make_deployment("house", replicas=1, healthy=1)
    v1 = deployment.version
    v2 = ModelVersion.objects.create(
        model=deployment.model, number=2, status="ready", artifact_sha256="2" * 64, artifact_size=1
    )
    login(page, make_user("deployer"))
    page.goto("/deployments/house/")
    assert _buttons(page) >= {"stop", "restart", "scale", "update", "delete"}
    assert "start" not in _buttons(page)  # running: no Start
    assert page.locator("nav a.current").inner_text() == "Deployments"

    page.select_option("#live-actions select[name=version]", "2")
    page.click("[data-action=update]")
    page.wait_for_selector(".msg.success >> text=Update requested.")
    assert dialogs == ["Update house from v1 to v2?"]
    assert queued == ["update"]
    assert AuditEvent.objects.filter(action="deployment.update_requested").count() == 1
    page.evaluate("window.__sameDocument = true")
    shot(page, "deployment-update-requested")

    # The worker switches traffic and calls come in: the page shows it by itself.
    Deployment.objects.filter(pk=deployment.pk).update(version=v2, previous_version=v1)
    services._event(deployment, "traffic switched from v1 to v2")
    log_calls("house", [12.0, 14.0, 40.0], ago=timedelta(seconds=5))
    page.wait_for_selector("#serves >> text=house-model v2")
    page.wait_for_selector("[data-action=rollback] >> text=Roll back to v1")
    page.wait_for_selector("#events >> text=traffic switched from v1 to v2")
    page.wait_for_selector("#latest-calls tbody tr")
    assert page.locator("#call-stats .stat .n").first.inner_text() != "0"
    assert page.locator("#latest-calls tbody tr").count() == 3
    assert "UTC" in page.locator("#events .step").first.inner_text()
    assert page.evaluate("window.__sameDocument") is True
    shot(page, "deployment-updated-live")

    page.click("[data-action=rollback]")
    page.wait_for_selector(".msg.success >> text=Rollback requested.")
    assert dialogs[-1] == "Roll house back from v2 to v1?"
    assert page.js_errors == []


def test_deployment_page_follows_stop_and_start(page, make_user, shot, dialogs, queued):
    deployment = make_deployment("iris", replicas=2, healthy=2)
    login(page, make_user("deployer"))
    page.goto("/deployments/iris/")
    page.click("[data-action=stop]")
    page.wait_for_selector("#state.stopping")
    assert dialogs and dialogs[0].startswith("Stop iris?")
    assert _buttons(page) == {"delete"}  # nothing to do while it stops
    page.evaluate("window.__sameDocument = true")

    # The worker removes the replicas: Start appears, Stop goes, without a reload.
    deployment.replica_set.all().delete()
    services._set_state(deployment, "stopped", message="all replicas stopped")
    page.wait_for_selector("#state.stopped")
    page.wait_for_selector("[data-action=start]")
    assert "stop" not in _buttons(page)
    assert page.locator("#replicas >> text=No replicas yet.").count() == 1
    assert page.evaluate("window.__sameDocument") is True
    shot(page, "deployment-stopped-live")

    page.click("[data-action=start]")
    page.wait_for_selector("#state.pending")
    assert queued == ["stop", "deploy"]
    services._set_state(deployment, "running", message="running v1 with 2 healthy replica(s)")
    page.wait_for_selector("#state.running")
    page.wait_for_selector("[data-action=stop]")
    assert "start" not in _buttons(page)
    assert page.js_errors == []


def test_build_log_opens_at_its_end_folded_and_without_internal_paths(
    page, make_user, shot, settings
):
    deployment = make_deployment("logs", state="building", replicas=1, healthy=0)
    wheels = str(settings.PORTAL_WHEELHOUSE)
    lines = [f"downloading wheels into {wheels}", "Step 1/8 : FROM portal-base:bookworm"]
    lines += [f"Processing /wheels/pkg{i}-1.0-py3-none-any.whl" for i in range(40)]
    lines += [f"Step {i}/8 : RUN something {i}" for i in range(2, 60)]
    build = Build.objects.create(
        deployment=deployment, version=deployment.version, log="\n".join(lines)
    )
    login(page, make_user("viewer"))
    page.goto("/deployments/logs/")
    log = page.locator("#build-log")
    assert wheels not in log.inner_text() and "<wheelhouse>" in log.inner_text()
    assert page.locator("#build-log details.fold summary").inner_text() == (
        "40 lines of pip/docker detail"
    )
    at_end = "el => el.scrollTop + el.clientHeight >= el.scrollHeight - 2"
    assert log.evaluate(at_end)
    shot(page, "deployment-build-log")

    # More lines arrive while it builds: the log follows and stays at its end.
    Build.objects.filter(pk=build.pk).update(log=build.log + "\nSuccessfully built abc123")
    page.wait_for_selector("#build-log >> text=Successfully built abc123")
    assert page.locator("#build-log").evaluate(at_end)
    page.click("#build-log details.fold summary")
    assert page.locator("#build-log details.fold[open]").count() == 1
    assert page.js_errors == []


def test_creating_a_key_shows_it_once_with_a_copy_button(page, make_user, shot, dialogs):
    make_deployment("house")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    login(page, make_user("deployer"))
    page.goto("/keys/")
    page.fill("#id_name", "nightly batch")
    page.select_option("#id_model", "house-model")
    day = date.today() + timedelta(days=14)
    assert page.get_attribute("#id_expires_on", "type") == "date"
    page.fill("#id_expires_on", day.isoformat())
    page.click("button:has-text('Create key')")
    page.wait_for_selector("#new-key")
    assert page.url.endswith("/keys/")  # redirected after the POST
    secret = page.locator("#new-key").inner_text().strip()
    assert secret.startswith("mp_")
    page.click("#copy-key")
    page.wait_for_selector("#copy-key >> text=Copied")
    assert page.evaluate("navigator.clipboard.readText()") == secret
    shot(page, "keys-created")

    page.reload()  # a reload neither shows the secret again nor creates a second key
    assert page.locator("#new-key").count() == 0
    assert ApiKey.objects.count() == 1
    key = ApiKey.objects.get()
    assert key.model.name == "house-model" and key.expires_at is not None

    page.click("button:has-text('Revoke')")
    page.wait_for_selector(".badge.rejected >> text=revoked")
    assert dialogs[-1].startswith("Revoke the key nightly batch")
    assert page.js_errors == []


def test_long_names_wrap_and_tables_scroll_on_a_phone(page, make_user, shot):
    deployment = make_deployment("wide", replicas=1, healthy=1)
    version = deployment.version
    long_name = "a-very-long-file-name-" * 9 + ".joblib"  # 205 characters, no spaces
    ModelVersion.objects.filter(pk=version.pk).update(
        original_filename=long_name,
        input_example={
            "rows": [[5.1, 3.5, 1.4]],
            "columns": ["sepal length", "sepal width", "petal"],
        },
        example_output={"predictions": [0]},
    )
    user = make_user("admin")
    for i in range(3):
        from deployments_app.predict import keys
        from portal.audit import Actor

        keys.api_key_create(
            user=user, actor=Actor.system(), name=f"key-{i}-" + "x" * 40, deployment_names=["wide"]
        )
    login(page, user)
    url = f"/models/{version.model.name}/versions/{version.number}/"
    for viewport, suffix in (({"width": 1280, "height": 900}, "desktop"), (PHONE, "phone")):
        page.set_viewport_size(viewport)
        page.goto(url)
        assert _no_horizontal_overflow(page), suffix
        box = page.locator(".card:has(h2:text('Approval'))").bounding_box()
        assert box["x"] + box["width"] <= viewport["width"] + 1, suffix
        shot(page, f"version-long-name-{suffix}")
    # The example reads as JSON objects keyed by column.
    example = json.loads(page.locator("#example-input").inner_text())
    assert example == [{"sepal length": 5.1, "sepal width": 3.5, "petal": 1.4}]
    assert "Models" in page.locator(".breadcrumbs").inner_text()

    for path, table in (
        ("/keys/", "#keys"),
        ("/deployments/", "#deployments"),
        ("/models/", "#models"),
    ):
        page.goto(path)
        assert _no_horizontal_overflow(page), path
        wrap = page.locator(f".table-wrap:has({table})")
        assert wrap.evaluate("el => getComputedStyle(el).overflowX") == "auto"
        if table == "#keys":  # wider than a phone: it scrolls inside its box
            assert wrap.evaluate("el => el.scrollWidth > el.clientWidth")
        shot(page, f"table-phone-{path.strip('/')}")
    page.goto("/deployments/wide/")
    assert _no_horizontal_overflow(page)
    shot(page, "deployment-phone")
    assert page.js_errors == []


def test_tables_sort_by_their_headers_and_page(page, make_user, shot):
    for i in range(27):
        make_deployment(f"d{i:02d}", replicas=1, healthy=1)
    login(page, make_user("viewer"))
    page.goto("/deployments/")
    names = lambda: page.locator("#deployments tbody tr td:first-child").all_inner_texts()  # noqa: E731
    assert names()[0] == "d00" and len(names()) == 25
    page.click("#deployments th >> text=Name")
    page.wait_for_url("**sort=-name**")
    assert names()[0] == "d26"
    assert page.get_attribute("#deployments th[aria-sort=descending]", "aria-sort")
    page.click("a[rel=next]")
    assert names() == ["d01", "d00"]
    assert "sort=-name" in page.url and "page=2" in page.url
    shot(page, "deployments-sorted-page2")
    assert page.js_errors == []
