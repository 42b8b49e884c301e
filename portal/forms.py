"""Form pieces several pages share."""

from __future__ import annotations

from datetime import datetime, time, timedelta

from django import forms
from django.utils import timezone


class ExpiryForm(forms.Form):
    """An optional last day for a secret (an API key, an access token): it stops working at
    the end of that day in the portal's time zone."""

    expires_on = forms.DateField(
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="Optional: it stops working at the end of this day.",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["expires_on"].widget.attrs["min"] = timezone.localdate().isoformat()

    def expires_at(self) -> datetime | None:
        """The end of the chosen day in the portal's time zone (the start of the next)."""
        day = self.cleaned_data.get("expires_on")
        if day is None:
            return None
        return timezone.make_aware(datetime.combine(day + timedelta(days=1), time.min))
