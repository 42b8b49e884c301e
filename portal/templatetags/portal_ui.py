"""Page furniture shared by every app's templates: times with their zone, the current nav
item, sortable column headers."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django import template
from django.urls import reverse
from django.utils import timezone
from django.utils.dateformat import format as date_format
from django.utils.html import format_html

register = template.Library()


@register.filter
def when(value: datetime | None, fmt: str = "Y-m-d H:i:s") -> str:
    """`<time>` in the portal's time zone, its abbreviation beside it (16:20:03 UTC)."""
    if not value:
        return "–"
    local = timezone.localtime(value) if timezone.is_aware(value) else value
    return format_html(
        '<time datetime="{}">{} <span class="tz">{}</span></time>',
        value.isoformat(),
        date_format(local, fmt),
        date_format(local, "T"),
    )


@register.simple_tag
def tz_name() -> str:
    return date_format(timezone.localtime(), "T")


@register.simple_tag(takes_context=True)
def nav_link(context, url_name: str, label: str, unless: str = "") -> str:
    """A top-bar link, marked `aria-current="page"` when the page is in its section
    (`unless` names a link of its own inside that section: Upload under Models)."""
    url = reverse(url_name)
    request = context.get("request")
    path = request.path if request else ""
    current = path == url if url == "/" else path.startswith(url)
    if current and unless and path.startswith(reverse(unless)):
        current = False
    if current:
        return format_html('<a href="{}" class="current" aria-current="page">{}</a>', url, label)
    return format_html('<a href="{}">{}</a>', url, label)


@register.simple_tag(takes_context=True)
def sort_th(context, table, key: str, label: str) -> str:
    """A column header that sorts the table by `key` (again: the other way)."""
    return format_html(
        '<th aria-sort="{}"><a href="{}">{}{}</a></th>',
        table.aria_sort(key),
        table.sort_url(context["request"], key),
        label,
        table.arrow(key),
    )


@register.simple_tag(takes_context=True)
def page_url(context, table, number: int) -> str:
    return table.page_url(context["request"], number)


@register.filter
def as_json(value: Any) -> str:
    """Pretty JSON, as a caller would send or receive it (not a Python repr)."""
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


@register.filter
def example_columns(version: Any) -> list[str]:
    """The input example's column names, else the schema's."""
    example = getattr(version, "input_example", None) or {}
    schema = getattr(version, "schema", None) or {}
    columns = (example.get("columns") if isinstance(example, dict) else None) or (
        schema.get("columns") if isinstance(schema, dict) else None
    )
    return list(columns or [])


@register.filter
def example_records(version: Any) -> Any:
    """A version's example rows as {column: value} objects when its columns are known."""
    example = getattr(version, "input_example", None) or {}
    rows = example.get("rows") or [] if isinstance(example, dict) else example
    columns = example_columns(version)
    if not columns or not all(
        isinstance(r, (list, tuple)) and len(r) == len(columns) for r in rows
    ):
        return rows
    return [dict(zip(columns, row, strict=True)) for row in rows]
