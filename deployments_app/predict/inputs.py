"""Turn any accepted request body into checked rows, before a replica sees it.

Accepted bodies (one parser, so every endpoint agrees):
  {"features": [..]}                       one row, answered as {"prediction": ...}
  {"instances": [[..], ..]} / [{"col": v}] rows or records (KServe V1 / TF Serving)
  [{"col": v}, ..]                         a bare list of records
  {"dataframe_split": {"columns", "data"}} MLflow
  {"dataframe_records": [{..}]}            MLflow
  {"inputs": [[..]] | {"col": [..]}}       MLflow tensor / column input
plus optional "params": {"proba": true, "explain": true}.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

MAX_ROWS = 1000
MAX_EXPLAIN_ROWS = 20  # rows per call with "explain" (the model server's explain.MAX_ROWS)


class InputError(Exception):
    """The body cannot be predicted on; carries the HTTP status and a JSON-ready body."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 422,
        row: int | None = None,
        field: str | int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"error": message}
        if row is not None:
            self.body["row"] = row
        if field is not None:
            self.body["field"] = field


@dataclass
class ParsedInput:
    rows: list[list[Any]]
    single: bool  # the {"features": [...]} form: answer with one "prediction"
    proba: bool
    payload: Any = None  # what the log captures of the request (a JSON-ready document)
    explain: bool = False  # "params": {"explain": true}: per-feature contributions too


def _records_to_rows(records: list[Any], columns: list[str] | None) -> list[list[Any]]:
    if not columns:
        raise InputError(
            "this model takes positional features, not named columns; send rows as lists",
            status=422,
        )
    rows = []
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise InputError("every record must be an object", row=i)
        missing = [c for c in columns if c not in record]
        if missing:
            raise InputError(f"missing column(s): {', '.join(missing)}", row=i, field=missing[0])
        unknown = [k for k in record if k not in columns]
        if unknown:
            raise InputError(
                f"unknown column(s): {', '.join(map(str, unknown))}", row=i, field=unknown[0]
            )
        rows.append([record[c] for c in columns])
    return rows


def _as_rows(data: Any, columns: list[str] | None) -> list[list[Any]]:
    if isinstance(data, dict):  # {"col": [values]} column-oriented
        if not columns:
            raise InputError("column-oriented input needs a model fitted on named columns")
        lengths = {len(v) if isinstance(v, list) else -1 for v in data.values()}
        if len(lengths) != 1 or -1 in lengths:
            raise InputError("every column must be a list of the same length")
        n = lengths.pop()
        return _records_to_rows([{k: data[k][i] for k in data} for i in range(n)], columns)
    if not isinstance(data, list):
        raise InputError("expected a list of rows", status=400)
    if data and all(isinstance(r, dict) for r in data):
        return _records_to_rows(data, columns)
    if data and all(not isinstance(r, list | dict) for r in data):
        raise InputError(
            "expected a list of rows (lists), got a flat list: wrap it as [[...]] "
            'or send {"features": [...]}'
        )
    for i, row in enumerate(data):
        if not isinstance(row, list):
            raise InputError("every row must be a list", row=i)
    return data


def parse_body(body: Any, schema: dict[str, Any]) -> ParsedInput:
    columns = schema.get("columns")
    params: dict[str, Any] = {}
    single = False
    if isinstance(body, list):
        rows = _as_rows(body, columns)
    elif isinstance(body, dict):
        params = body.get("params") or {}
        if not isinstance(params, dict):
            raise InputError("'params' must be an object", status=400)
        if "features" in body:
            features = body["features"]
            if isinstance(features, dict):
                rows = _records_to_rows([features], columns)
            elif isinstance(features, list) and not any(
                isinstance(v, list | dict) for v in features
            ):
                rows = [features]
            else:
                raise InputError("'features' must be one row: a flat list or an object")
            single = True
        elif "instances" in body:
            rows = _as_rows(body["instances"], columns)
        elif "dataframe_split" in body:
            split = body["dataframe_split"]
            if not isinstance(split, dict) or not isinstance(split.get("data"), list):
                raise InputError("'dataframe_split' needs 'columns' and 'data'")
            split_columns = split.get("columns")
            if split_columns is not None and columns:
                data = split["data"]
                rows = _records_to_rows(
                    [
                        dict(zip(split_columns, r, strict=False))
                        for r in data
                        if isinstance(r, list)
                    ],
                    columns,
                )
                if len(rows) != len(data):
                    raise InputError("every row of 'data' must be a list")
            else:
                rows = _as_rows(split["data"], columns)
        elif "dataframe_records" in body:
            rows = _as_rows(body["dataframe_records"], columns)
        elif "inputs" in body:
            rows = _as_rows(body["inputs"], columns)
        else:
            raise InputError(
                "no input found: send 'features', 'instances', 'inputs', "
                "'dataframe_split' or 'dataframe_records'",
                status=400,
            )
    else:
        raise InputError("the body must be a JSON object or a list of records", status=400)
    check_rows(rows, schema)
    return ParsedInput(
        rows=rows,
        single=single,
        proba=bool(params.get("proba") or params.get("probabilities")),
        explain=wants_explain(params, len(rows)),
    )


MAX_REFERENCE_ROWS = 100
MAX_REFERENCE_BYTES = 32 * 1024  # MODEL_REFERENCE travels in the replica's environment


def reference_rows(example: Any, schema: dict[str, Any]) -> list[list[Any]] | None:
    """A version's input example (`ModelVersion.input_example`) as the raw rows explanations
    compare with (at most MAX_REFERENCE_ROWS and MAX_REFERENCE_BYTES of JSON); None when
    there is none or it does not fit the schema."""
    if isinstance(example, dict):  # as validation stores it: {"rows": [...], "columns": ...}
        example = example.get("rows")
    if not example or not isinstance(example, list):
        return None
    try:
        rows = parse_body({"instances": example[:MAX_REFERENCE_ROWS]}, schema).rows
    except InputError:
        return None
    while rows and len(json.dumps(rows, separators=(",", ":"))) > MAX_REFERENCE_BYTES:
        rows = rows[: len(rows) // 2]
    return rows or None


def wants_explain(params: dict[str, Any], n_rows: int) -> bool:
    """Whether a call's parameters ask for explanations (refusing what cannot be explained)."""
    explain = params.get("explain", False)
    if not isinstance(explain, bool):
        raise InputError("'explain' must be true or false", status=400)
    if explain and n_rows > MAX_EXPLAIN_ROWS:
        raise InputError(
            f"explain takes at most {MAX_EXPLAIN_ROWS} rows per call; got {n_rows}", status=413
        )
    return explain


def check_rows(rows: list[list[Any]], schema: dict[str, Any]) -> None:
    if not rows:
        raise InputError("the input has no rows")
    if len(rows) > MAX_ROWS:
        raise InputError(f"at most {MAX_ROWS} rows per call; got {len(rows)}", status=413)
    n_features = schema.get("n_features")
    columns = schema.get("columns")
    types = schema.get("column_types") or {}
    text_input = schema.get("text_input")
    for i, row in enumerate(rows):
        if n_features is not None and len(row) != n_features:
            raise InputError(f"expected {n_features} features, got {len(row)}", row=i)
        for j, value in enumerate(row):
            name = columns[j] if columns and j < len(columns) else j
            kind = types.get(name) if columns else None
            if kind is None and not text_input:
                kind = "number"
            if kind == "number":
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise InputError(
                        f"expected a number, got {type(value).__name__}", row=i, field=name
                    )
                if not math.isfinite(value):
                    raise InputError(
                        "non-finite numbers (NaN, Infinity) are not accepted", row=i, field=name
                    )
            elif kind == "string" and not isinstance(value, str):
                raise InputError(f"expected text, got {type(value).__name__}", row=i, field=name)
            elif value is not None and not isinstance(value, str | int | float | bool):
                raise InputError("values must be numbers or strings", row=i, field=name)
