"""Governance pages in a real browser (issue 12): the deploy form disabled with its reason,
rejecting with a comment, invalid vs rejected badges, archive and delete with confirmation,
and the admin's users page."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from models_app.models import ModelVersion, RegisteredModel
from models_app.storage import artifact_path, artifact_store
from portal import selectors
from portal.models import AuditEvent
from tests.browser.conftest import login

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _setup(settings, tmp_path, monkeypatch):
    settings.PORTAL_REQUIRE_APPROVAL = True
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": str(tmp_path),
        }
    }
    monkeypatch.setattr(  # a worker answers: no banner in the screenshots
        selectors,
        "_ping_workers",
        lambda: {"workers": ["w1@test"], "broker_ok": True, "broker_error": ""},
    )


def _version(name: str, number: int = 1, **fields) -> ModelVersion:
    model, _ = RegisteredModel.objects.get_or_create(name=name)
    stored = artifact_store([f"{name}-{number}".encode()])
    return ModelVersion.objects.create(
        model=model,
        number=number,
        status=fields.pop("status", "ready"),
        artifact_sha256=stored.sha256,
        artifact_size=stored.size,
        format="joblib",
        estimator_class="sklearn.linear_model.LinearRegression",
        **fields,
    )


def test_approver_rejects_with_a_comment_and_the_deploy_form_says_why(
    page, browser, live_server, make_user, shot
):
    uploader = make_user("deployer")
    _version("house", uploaded_by=uploader)
    _version("junk", status="invalid", rejection_reason="not a pickle, joblib or skops file")

    # The deployer sees the deploy form disabled: nobody approved the version yet.
    login(page, uploader)
    page.goto(reverse("version-detail", args=["house", 1]))
    refusal = page.locator("#deploy-refusal")
    assert "not approved yet" in refusal.inner_text()
    assert page.locator("form[action$='/deploy'] button.primary").is_disabled()
    shot(page, "governance-deploy-disabled-pending")

    # An approver tries to reject without a comment: refused, then rejects with one.
    approver = make_user("approver")
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
    review = context.new_page()
    login(review, approver)
    review.goto(reverse("version-detail", args=["house", 1]))
    review.get_by_role("button", name="Reject").click()
    review.wait_for_selector(".msg.error")
    assert "needs a comment" in review.locator(".messages").inner_text()
    review.fill("textarea[name=comment]", "trained on last year's prices")
    review.get_by_role("button", name="Reject").click()
    review.wait_for_selector("#version-approval.rejected")
    assert review.locator("#version-approval").inner_text() == "rejected by approver"
    assert "trained on last year's prices" in review.content()
    shot(review, "governance-rejected-by-approver")
    context.close()

    page.reload()
    assert "rejected by an approver" in page.locator("#deploy-refusal").inner_text()
    assert page.locator("form[action$='/deploy'] button.primary").is_disabled()
    shot(page, "governance-deploy-disabled-rejected")

    # Failed validation reads "invalid", never "rejected".
    page.goto(reverse("version-detail", args=["junk", 1]))
    assert page.locator("#version-status").inner_text() == "invalid"
    assert "Invalid (failed validation)" in page.content()
    shot(page, "governance-invalid-version")


def test_deployer_archives_and_admin_deletes_with_confirmation(page, make_user, shot):
    keep = _version("iris", 1)
    gone = _version("iris", 2)
    deployer = make_user("deployer")
    login(page, deployer)
    page.goto(reverse("version-detail", args=["iris", 2]))
    assert page.locator("text=Delete version").count() == 0  # admins only
    dialogs: list[str] = []

    def accept(dialog):
        dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    page.get_by_role("button", name="Archive").click()
    page.wait_for_selector(".badge.archived")
    assert dialogs and "Archive iris v2?" in dialogs[0]
    assert ModelVersion.objects.get(pk=gone.pk).archived_at is not None

    page.goto(reverse("model-detail", args=["iris"]))
    assert page.locator("table.table tbody tr").count() == 1  # v2 is hidden
    page.check("input[name=archived]")
    page.wait_for_url("**archived=1")
    assert page.locator("table.table tbody tr").count() == 2
    shot(page, "governance-model-with-archived-version")

    admin = make_user("admin")
    page.context.clear_cookies()
    login(page, admin)
    page.goto(reverse("version-detail", args=["iris", 2]))
    shot(page, "governance-version-admin-actions")
    page.get_by_role("button", name="Delete version").click()
    page.wait_for_url(f"**{reverse('model-detail', args=['iris'])}")
    assert "Delete iris v2 for good?" in dialogs[-1]
    assert not ModelVersion.objects.filter(pk=gone.pk).exists()
    assert artifact_path(keep.artifact_sha256).exists()
    assert not artifact_path(gone.artifact_sha256).exists()
    assert AuditEvent.objects.filter(action="model_version.archived").exists()
    assert AuditEvent.objects.filter(action="model_version.deleted").exists()


def test_admin_manages_users_and_roles(page, make_user, shot):
    admin = make_user("admin", username="ada")
    make_user("viewer", username="victor")
    login(page, admin)
    page.get_by_role("link", name="Users").click()
    page.wait_for_url("**/users/")

    form = page.locator("#user-create")
    form.locator("input[name=username]").fill("nina")
    form.locator("input[name=password]").fill("a-long-enough-passphrase-1")
    form.locator("input[name=roles][value=deployer]").check()
    with page.expect_navigation():
        form.get_by_role("button", name="Create user").click()
    page.wait_for_selector("tr[data-user=nina]")
    assert "User 'nina' is created." in page.locator(".messages").inner_text()

    victor = page.locator("tr[data-user=victor]")
    victor.locator("input[name=roles][value=approver]").check()
    assert victor.locator("input[name=roles][value=approver]").is_checked()
    with page.expect_navigation():
        victor.get_by_role("button", name="Save roles").click()
    assert "victor's roles: viewer, approver." in page.locator(".messages").inner_text()
    victor = page.locator("tr[data-user=victor]")
    assert victor.locator("input[name=roles][value=approver]").is_checked()

    page.on("dialog", lambda dialog: dialog.accept())
    victor.get_by_role("button", name="Deactivate").click()
    page.wait_for_selector("tr[data-user=victor] .badge.stopped")
    assert page.locator("tr[data-user=ada] button", has_text="Deactivate").count() == 0
    shot(page, "governance-users-page")

    victor = get_user_model().objects.get(username="victor")
    assert not victor.is_active
    assert sorted(victor.groups.values_list("name", flat=True)) == ["approver", "viewer"]
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"user.created", "user.roles_changed", "user.deactivated"} <= actions
