"""The capture policy: which parts of a sampled call are stored, and how (data and pure checks).

A policy names fields by column (the version's schema), or by a JSON pointer into a row
(`/0`, `/2`: the features of a positional model, e.g. a V2 tensor's columns) or into the
answer (`/outputs/predictions`, `/outputs/probabilities`). Each gets one action:

  keep      stored as sent (also every field the policy does not name)
  drop      not stored at all (the column disappears from the record)
  mask      replaced by MASK
  hash      HMAC-SHA256 under the portal's capture key: equal values give equal hashes, so
            records stay joinable, but the value cannot be read back
  truncate  text cut to `length` characters (numbers are kept)

`record()` runs on the prediction path before the log row is queued: what it leaves out never
reaches the database. Only the parsed rows and the model's answer are ever recorded, never
headers (`Authorization`, cookies, API keys) nor the raw body.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from portal.errors import ApplicationError

ACTIONS = ("keep", "drop", "mask", "hash", "truncate")
MASK = "***"
DEFAULT_LENGTH = 32
OUTPUT_FIELDS = ("/outputs/predictions", "/outputs/probabilities")
# The capture key derives from the portal's secret (no second secret to manage): rotating
# DJANGO_SECRET_KEY changes every hash from then on.
KEY_LABEL = b"model-portal capture hash v1\x00"


def feature_names(schema: dict[str, Any]) -> list[str]:
    """The names captured rows are recorded (and drift is reported) under: the schema's
    columns, else JSON pointers by position (`/0`, `/1`, ...)."""
    columns = schema.get("columns")
    if columns:
        return [str(c) for c in columns]
    n = schema.get("n_features")
    return [f"/{i}" for i in range(n)] if isinstance(n, int) else []


def validate_fields(fields: Any, schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The policy's field rules, checked against the version's schema and normalised; an
    ApplicationError names the first field or action that is not known."""
    if fields in (None, ""):
        return {}
    if not isinstance(fields, dict):
        raise ApplicationError("'fields' must be an object: {column: action or {action, length}}")
    names = feature_names(schema)
    known = set(names) | set(OUTPUT_FIELDS)
    clean: dict[str, dict[str, Any]] = {}
    for name, rule in fields.items():
        if name not in known and not _positional(name, len(names)):
            raise ApplicationError(
                f"unknown column '{name}' in the capture policy"
                + (f" (the columns are: {', '.join(names[:20])})" if names else ""),
                extra={"field": name},
            )
        if isinstance(rule, str):
            rule = {"action": rule}
        if not isinstance(rule, dict) or rule.get("action") not in ACTIONS:
            raise ApplicationError(
                f"field '{name}': the action must be one of {', '.join(ACTIONS)}",
                extra={"field": name},
            )
        entry: dict[str, Any] = {"action": rule["action"]}
        if rule["action"] == "truncate":
            length = rule.get("length", DEFAULT_LENGTH)
            if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= 10000:
                raise ApplicationError(
                    f"field '{name}': 'length' must be a whole number from 0 to 10000",
                    extra={"field": name},
                )
            entry["length"] = length
        clean[name] = entry
    return clean


def _positional(name: str, n_features: int) -> bool:
    """`/3` names the fourth value of a row, for any model (named columns or not)."""
    return name.startswith("/") and name[1:].isdigit() and int(name[1:]) < n_features


# --------------------------------------------------------------------------- hashing


_keyed: dict[str, Any] = {}  # secret -> an HMAC already keyed: each value copies it


def capture_key() -> bytes:
    return hashlib.sha256(KEY_LABEL + settings.SECRET_KEY.encode()).digest()


def hash_value(value: Any) -> str:
    """HMAC-SHA256 (hex) of a value's text: a string as it is, anything else as JSON."""
    secret = settings.SECRET_KEY
    keyed = _keyed.get(secret)
    if keyed is None:
        keyed = _keyed[secret] = hmac.new(capture_key(), digestmod=hashlib.sha256)
    mac = keyed.copy()
    mac.update((value if isinstance(value, str) else json.dumps(value)).encode())
    return mac.hexdigest()


def _apply(action: str, length: int, value: Any) -> Any:
    if value is None or action == "keep":
        return value
    if action == "mask":
        return MASK
    if action == "hash":
        return hash_value(value)
    if action == "truncate":
        return value[:length] if isinstance(value, str) else value
    raise ValueError(action)


# --------------------------------------------------------------------------- the compiled policy


@dataclass(frozen=True)
class Compiled:
    """A policy resolved against one version's columns: positions to keep and what to do."""

    version: int
    inputs: bool
    outputs: bool
    columns: tuple[str, ...]  # the recorded columns, after drops
    keep: tuple[int, ...] | None  # positions kept (None: all)
    ops: tuple[tuple[int, str, int], ...]  # (position in the recorded row, action, length)
    output_ops: tuple[tuple[str, str, int], ...]  # (answer key, action, length)

    def record(self, rows: list[list[Any]] | None, answer: dict[str, Any] | None) -> dict:
        """The captured record of one call: what the policy lets through, and its version."""
        out: dict[str, Any] = {"policy": self.version}
        if self.inputs and rows is not None:
            if self.keep is not None:
                rows = [[row[i] for i in self.keep if i < len(row)] for row in rows]
            if self.ops:
                rows = [list(row) for row in rows] if self.keep is None else rows
                for row in rows:
                    for i, action, length in self.ops:
                        if i < len(row):
                            row[i] = _apply(action, length, row[i])
            out["columns"] = list(self.columns)
            out["inputs"] = rows
        if self.outputs and answer is not None:
            kept = {}
            for key in ("predictions", "probabilities"):
                if key in answer:
                    kept[key] = answer[key]
            for key, action, length in self.output_ops:
                if key not in kept:
                    continue
                if action == "drop":
                    del kept[key]
                elif isinstance(kept[key], list):
                    kept[key] = [_apply(action, length, v) for v in kept[key]]
            out["outputs"] = kept
        return out


def compile_policy(
    *, version: int, inputs: bool, outputs: bool, fields: dict[str, Any], schema: dict[str, Any]
) -> Compiled:
    names = feature_names(schema)
    by_position: dict[int, dict[str, Any]] = {}
    output_ops = []
    for name, rule in fields.items():
        if name in OUTPUT_FIELDS:
            output_ops.append(
                (name.rsplit("/", 1)[1], rule["action"], rule.get("length", DEFAULT_LENGTH))
            )
        elif name in names:
            by_position[names.index(name)] = rule
        elif _positional(name, len(names)):
            by_position[int(name[1:])] = rule
        # a column the version no longer has (a rollout's other schema): nothing to do
    dropped = {i for i, rule in by_position.items() if rule["action"] == "drop"}
    kept = [i for i in range(len(names)) if i not in dropped]
    recorded = {old: new for new, old in enumerate(kept)}
    ops = tuple(
        (recorded[i], rule["action"], rule.get("length", DEFAULT_LENGTH))
        for i, rule in sorted(by_position.items())
        if rule["action"] not in ("drop", "keep")
    )
    return Compiled(
        version=version,
        inputs=inputs,
        outputs=outputs,
        columns=tuple(names[i] for i in kept),
        keep=tuple(kept) if dropped else None,
        ops=ops,
        output_ops=tuple(output_ops),
    )


DEFAULT = {"version": 0, "inputs": True, "outputs": True, "fields": {}}


_compiled: dict[tuple[int, int, int], Compiled] = {}


def capture_record(target: Any, backend: Any, rows: Any, answer: dict[str, Any] | None) -> dict:
    """The record of one sampled call to `target` (a proxy Target) answered by `backend`,
    under the target's policy, compiled once per deployment, policy and version."""
    policy = target.capture or DEFAULT
    schema = backend.schema if backend is not None else {}
    number = backend.version_number if backend is not None else 0
    key = (target.id, policy["version"], number)
    compiled = _compiled.get(key)
    if compiled is None:
        if len(_compiled) > 1000:  # policies change rarely: a bound, not an eviction scheme
            _compiled.clear()
        compiled = _compiled[key] = compile_policy(
            version=policy["version"],
            inputs=policy["inputs"],
            outputs=policy["outputs"],
            fields=policy["fields"],
            schema=schema,
        )
    return compiled.record(rows, answer)
