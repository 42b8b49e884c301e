"""The capture settings form of a deployment's page (shape only; the service validates)."""

from __future__ import annotations

from typing import Any

from django import forms

from deployments_app.monitoring.capture import ACTIONS


def parse_rules(text: str) -> dict[str, Any]:
    """`column=action` per line (`note=truncate:8` for a length); blank lines are skipped."""
    rules: dict[str, Any] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        name, sep, action = line.rpartition("=")
        if not sep or not name.strip():
            raise forms.ValidationError(f"line {number}: write column=action")
        action, _, length = action.strip().partition(":")
        if action not in ACTIONS:
            raise forms.ValidationError(
                f"line {number}: the action must be one of {', '.join(ACTIONS)}"
            )
        rule: dict[str, Any] = {"action": action}
        if length:
            if not length.isdigit():
                raise forms.ValidationError(f"line {number}: the length must be a whole number")
            rule["length"] = int(length)
        rules[name.strip()] = rule
    return rules


def format_rules(fields: dict[str, Any]) -> str:
    return "\n".join(
        f"{name}={rule['action']}" + (f":{rule['length']}" if "length" in rule else "")
        for name, rule in fields.items()
    )


class CapturePolicyForm(forms.Form):
    percent = forms.IntegerField(min_value=0, max_value=100, label="Sample %")
    inputs = forms.BooleanField(required=False)
    outputs = forms.BooleanField(required=False)
    retention_days = forms.IntegerField(min_value=1, max_value=3650, label="Keep (days)")
    rules = forms.CharField(required=False, widget=forms.Textarea, max_length=20000)

    def clean_rules(self) -> dict[str, Any]:
        return parse_rules(self.cleaned_data.get("rules") or "")
