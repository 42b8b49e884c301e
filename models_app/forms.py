from __future__ import annotations

from django import forms

from models_app.models import NAME_VALIDATOR
from portal import jsonlimits


class UploadForm(forms.Form):
    model_name = forms.CharField(
        max_length=63,
        validators=[NAME_VALIDATOR],
        help_text="A new name creates the model; an existing one adds a version.",
    )
    file = forms.FileField(help_text="A pickle, joblib or skops file written by scikit-learn.")
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    input_example = forms.CharField(
        widget=forms.Textarea(
            attrs={"rows": 3, "placeholder": "[[1500, 3, 2]] or CSV with a header"}
        ),
        required=False,
        help_text="Optional: a few input rows as JSON, or a small CSV.",
    )
    tags = forms.CharField(required=False, max_length=1000, help_text="Comma-separated.")
    metrics = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text='Optional JSON object, e.g. {"r2": 0.91}.',
    )
    sklearn_version = forms.CharField(
        required=False,
        max_length=20,
        help_text="Only needed when the file does not record the scikit-learn version.",
    )

    def clean_tags(self) -> list[str]:
        raw = self.cleaned_data.get("tags") or ""
        return [t.strip() for t in raw.split(",") if t.strip()][:20]

    def clean_metrics(self) -> dict:
        raw = (self.cleaned_data.get("metrics") or "").strip()
        if not raw:
            return {}
        try:
            value = jsonlimits.loads(raw)
        except jsonlimits.JSONLimitError as exc:
            raise forms.ValidationError(f"not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise forms.ValidationError("metrics must be a JSON object")
        return value

    def clean_sklearn_version(self) -> str:
        value = (self.cleaned_data.get("sklearn_version") or "").strip()
        if value and not all(part.isdigit() for part in value.split(".")):
            raise forms.ValidationError("use a version number such as 1.5.2")
        return value


class ApprovalForm(forms.Form):
    decision = forms.ChoiceField(choices=[("approve", "Approve"), ("reject", "Reject")])
    comment = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2}),
        required=False,
        help_text="Required to reject: say why.",
    )

    def clean(self) -> dict:
        data = super().clean()
        if data.get("decision") == "reject" and not (data.get("comment") or "").strip():
            self.add_error("comment", "Rejecting a version needs a comment saying why.")
        return data


class AliasForm(forms.Form):
    alias = forms.CharField(max_length=63, validators=[NAME_VALIDATOR])
