"""Sorted, paginated tables for list pages: `?sort=<key>` or `?sort=-<key>`, `?page=<n>`.

Only keys a page names can sort (each maps to ORM fields), so a query string never reaches
`order_by` unchecked; the primary key breaks ties so pages never overlap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.core.paginator import Page, Paginator
from django.db.models import QuerySet
from django.http import HttpRequest

PER_PAGE = 25


@dataclass
class Table:
    page: Page
    sort: str  # e.g. "name" or "-created"
    columns: dict[str, tuple[str, ...]]

    @property
    def rows(self) -> list[Any]:
        return list(self.page.object_list)

    def _key(self) -> tuple[str, bool]:
        return self.sort.lstrip("-"), self.sort.startswith("-")

    def sort_url(self, request: HttpRequest, key: str) -> str:
        current, desc = self._key()
        query = request.GET.copy()
        query["sort"] = f"-{key}" if current == key and not desc else key
        query.pop("page", None)
        return "?" + query.urlencode()

    def page_url(self, request: HttpRequest, number: int) -> str:
        query = request.GET.copy()
        query["page"] = str(number)
        return "?" + query.urlencode()

    def aria_sort(self, key: str) -> str:
        current, desc = self._key()
        if current != key:
            return "none"
        return "descending" if desc else "ascending"

    def arrow(self, key: str) -> str:
        current, desc = self._key()
        return "" if current != key else (" ▼" if desc else " ▲")


def table(
    request: HttpRequest,
    queryset: QuerySet,
    *,
    columns: dict[str, tuple[str, ...]],
    default: str,
    per_page: int = PER_PAGE,
) -> Table:
    sort = request.GET.get("sort", default)
    if sort.lstrip("-") not in columns:
        sort = default
    fields = columns[sort.lstrip("-")]
    desc = sort.startswith("-")
    order = [f"-{f}" if desc else f for f in fields] + ["-pk" if desc else "pk"]
    paginator = Paginator(queryset.order_by(*order), per_page)
    return Table(page=paginator.get_page(request.GET.get("page")), sort=sort, columns=columns)
