from django import forms

from deployments_app.models import Rollout
from models_app.models import NAME_VALIDATOR

MAX_VERSION = 2**31 - 1  # past the column's range the database would raise, not answer 400


class DeployForm(forms.Form):
    name = forms.CharField(
        max_length=63,
        validators=[NAME_VALIDATOR],
        help_text="Used in the prediction URL: /api/v1/deployments/<name>/predict",
    )
    runtime = forms.ChoiceField(
        choices=[("", "automatic"), ("docker", "docker"), ("process", "process")], required=False
    )

    def __init__(self, *args, **kwargs):
        from deployments_app.runtimes import allowed_runtimes

        super().__init__(*args, **kwargs)
        # Only what PORTAL_ALLOWED_RUNTIMES offers (the service refuses the rest anyway).
        self.fields["runtime"].choices = [("", "automatic")] + [
            (name, name) for name in allowed_runtimes()
        ]

    replicas = forms.IntegerField(min_value=1, max_value=8, initial=1)
    memory_mb = forms.IntegerField(min_value=64, max_value=16384, initial=512, label="Memory (MB)")
    cpus = forms.FloatField(min_value=0.1, max_value=8, initial=1.0, label="CPUs")
    batch_max_size = forms.IntegerField(
        min_value=0, max_value=1000, initial=0, required=False,
        label="Batch rows", help_text="adaptive batching: 0 = off (pays for costly models)",
    )  # fmt: skip
    batch_max_wait_ms = forms.FloatField(
        min_value=0, max_value=1000, initial=0.0, required=False, label="Batch wait (ms)"
    )


class ScaleForm(forms.Form):
    replicas = forms.IntegerField(min_value=1, max_value=8)


class UpdateForm(forms.Form):
    version = forms.IntegerField(min_value=1)


class RolloutForm(forms.Form):
    """Shape only: the service checks versions, weights and steps against the rollout rules."""

    version = forms.IntegerField(min_value=1, max_value=MAX_VERSION, label="Candidate version")
    weight = forms.IntegerField(min_value=0, max_value=100, initial=10, label="Weight (%)")
    plan = forms.ChoiceField(choices=Rollout.Plan.choices, initial=Rollout.Plan.MANUAL)
    steps = forms.CharField(required=False, max_length=200, help_text="rising weights: 10,50")
    bake_seconds = forms.IntegerField(min_value=1, max_value=7 * 86400, initial=300)
    auto_promote = forms.BooleanField(required=False)
    sticky_header = forms.CharField(required=False, max_length=64)

    def clean_steps(self) -> list[int]:
        text = self.cleaned_data["steps"].strip()
        try:
            return [int(part) for part in text.replace(" ", "").split(",") if part]
        except ValueError as exc:
            raise forms.ValidationError("steps are whole percentages separated by commas") from exc


class PromoteForm(forms.Form):
    version = forms.IntegerField(min_value=1, max_value=MAX_VERSION, required=False)


class AbortForm(forms.Form):
    reason = forms.CharField(required=False, max_length=200)


class ShadowForm(forms.Form):
    version = forms.IntegerField(min_value=1, max_value=MAX_VERSION)
    percent = forms.IntegerField(min_value=1, max_value=100, label="Percent of calls")
