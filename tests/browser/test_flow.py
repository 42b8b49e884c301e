"""The whole story in a browser, on the real worker and the real prediction proxy:
upload a fixture model through the page's file input, watch validation finish, deploy it on
the `process` runtime, watch it start, and send the version's input example with "try it".
"""

from __future__ import annotations

import json
import uuid

import pytest

from deployments_app.models import Deployment, PredictionLog
from models_app.models import ModelVersion
from tests.browser.conftest import login
from tests.conftest import FIXTURE_DIR

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

FIXTURE = "house_price_linreg.pkl"


def test_upload_validate_deploy_and_try_it(
    page, make_user, worker_storage, manifest, shot, settings
):
    settings.PORTAL_ALLOWED_RUNTIMES = ["docker", "process"]  # offered although Docker answers
    entry = manifest[FIXTURE]
    name = f"house-{uuid.uuid4().hex[:6]}"
    deployer = make_user("deployer")
    login(page, deployer)

    # Upload through the page: the file input, the example rows, the XHR upload.
    page.click("nav >> text=Upload")
    page.fill("#id_model_name", name)
    page.set_input_files("#id_file", str(FIXTURE_DIR / FIXTURE))
    page.fill("#id_input_example", json.dumps(entry["input_example"]))
    shot(page, "flow-upload")
    page.click("#upload-button")
    page.wait_for_url(f"**/models/{name}/versions/1/")

    # The version page polls until the real worker has validated the file, then reloads.
    page.wait_for_selector("#version-status.ready, #version-status.invalid", timeout=600_000)
    version = ModelVersion.objects.get(model__name=name, number=1)
    assert version.status == "ready", version.rejection_reason
    shot(page, "flow-version-ready")

    # Deploy on the process runtime from the version page.
    deploy = page.locator(f"form[action$='/models/{name}/versions/1/deploy']")
    deploy.locator("input[name=name]").fill(name)
    deploy.locator("select[name=runtime]").select_option("process")
    deploy.get_by_role("button", name="Deploy").click()
    page.wait_for_url(f"**/deployments/{name}/")
    page.on("dialog", lambda dialog: dialog.accept())
    try:
        # The page follows the build and reloads when the state settles.
        page.wait_for_selector("#state.running, #state.failed", timeout=600_000)
        deployment = Deployment.objects.get(name=name)
        assert deployment.state == "running", deployment.failure_reason

        # Try it: the version's example goes through the real proxy with the CSRF header.
        body = json.loads(page.locator("#try-body").input_value())
        assert body == {"instances": entry["input_example"]}
        page.click("#try-send")
        page.wait_for_selector("#try-answer:not([hidden])")
        assert page.locator("#try-status").inner_text().startswith("HTTP 200")
        answer = json.loads(page.locator("#try-answer").inner_text())
        assert answer["predictions"] == pytest.approx(entry["expected_predict"], rel=1e-6)
        log = PredictionLog.objects.get(deployment_name=name)
        assert (log.caller, log.status_code, log.rows) == (deployer.username, 200, 2)
        shot(page, "flow-try-it")

        # The call shows up in the latest calls and the figures after a reload.
        page.reload()
        assert page.locator("#latest-calls tbody tr").count() == 1
        shot(page, "flow-deployment")
    finally:
        if Deployment.objects.filter(name=name).exists():
            page.goto(f"/deployments/{name}/")
            page.get_by_role("button", name="Delete").click()
            page.wait_for_url("**/deployments/")
    assert page.js_errors == []
