"""MLflow's scoring protocol, as `mlflow models serve` speaks it, at
POST /api/v1/deployments/<name>/invocations: a script written against an MLflow scoring
server changes only its base URL.

Bodies: JSON with exactly one of `dataframe_split`, `dataframe_records`, `instances`,
`inputs` (plus optional `params`), or CSV with a header row (`text/csv`). Answers:
`{"predictions": [...]}`; errors `{"error_code": ..., "message": ...}` as MLflow's
`MlflowException` renders them.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from deployments_app.predict.inputs import InputError, parse_body
from deployments_app.predict.protocols import Protocol, explanations, json_answer, read_json

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
# MLflow's error codes (databricks_pb2.ErrorCode) for the portal's refusals.
ERROR_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "RESOURCE_DOES_NOT_EXIST",
    405: "BAD_REQUEST",
    413: "BAD_REQUEST",
    415: "BAD_REQUEST",
    422: "BAD_REQUEST",
    429: "REQUEST_LIMIT_EXCEEDED",
    503: "TEMPORARILY_UNAVAILABLE",
}


def _cell(text: str, kind: str | None) -> Any:
    """A CSV cell as the schema wants it: text for text columns, else a number if it is one."""
    if kind == "string":
        return text
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            continue
    return text


def _csv_rows(body: bytes, schema: dict[str, Any]) -> dict[str, Any]:
    try:
        reader = csv.reader(io.StringIO(body.decode("utf-8-sig")))
        table = [row for row in reader if row]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"the CSV cannot be read: {exc}", status=400) from exc
    if len(table) < 2:
        raise InputError("the CSV needs a header row and at least one row of data", status=400)
    header, data = table[0], table[1:]
    types = schema.get("column_types") or {}
    if not schema.get("columns"):
        kind = "string" if schema.get("text_input") else None
        return {"instances": [[_cell(v, kind) for v in row] for row in data]}
    records = [
        {name: _cell(v, types.get(name)) for name, v in zip(header, row, strict=False)}
        for row in data
    ]
    return {"dataframe_records": records}


class MLflowProtocol(Protocol):
    name = "mlflow"

    def parse(self, body, headers, schema):
        content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type == "text/csv":
            document = _csv_rows(body, schema)
        else:
            document = read_json(body, headers, accept=("text/csv",))
            found = [f for f in FORMATS if isinstance(document, dict) and f in document]
            keys = sorted(document) if isinstance(document, dict) else type(document).__name__
            if len(found) != 1 or (
                isinstance(document, dict) and set(document) - {*FORMATS, "params"}
            ):
                raise InputError(
                    "the input must be a JSON object with exactly one of the input fields "
                    f"{', '.join(FORMATS)} (and optionally 'params'); got {keys}",
                    status=400,
                )
        parsed = parse_body(document, schema)
        parsed.payload = document
        return parsed

    def render(self, call, upstream, parsed):
        predictions = upstream.get("predictions", [])
        return json_answer(200, {"predictions": predictions, **explanations(upstream)})

    def error(self, request_id, status, body, headers):
        message = body.get("error", "")
        if "row" in body:
            message += f" (row {body['row']}" + (
                f", field {body['field']!r})" if "field" in body else ")"
            )
        code = ERROR_CODES.get(status, "INTERNAL_ERROR")
        # MLflow answers every BAD_REQUEST with 400, input its model cannot take included.
        status = 400 if status == 422 else status
        return json_answer(status, {"error_code": code, "message": message}, headers)
