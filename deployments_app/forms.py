from django import forms

from models_app.models import NAME_VALIDATOR


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


class ScaleForm(forms.Form):
    replicas = forms.IntegerField(min_value=1, max_value=8)


class UpdateForm(forms.Form):
    version = forms.IntegerField(min_value=1)
