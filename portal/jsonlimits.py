"""Bounded JSON parsing: the one way request data (bodies, form fields) becomes Python.

Python's json recurses once per nesting level: a body of 100,000 `[` raises RecursionError
(a 500 wherever only ValueError was expected), and a 5,000-digit integer raises ValueError
outside JSONDecodeError. `loads` refuses both kinds before they get that far, with one error
type every caller maps to a 400:

- size: the caller's limit on the bytes, checked before anything is read into objects;
- depth: a pre-scan of the bytes at C speed, linear even on hostile text (escapes and then
  strings removed, the brackets kept; each pass of `bytes.replace` removes the innermost
  pairs, so `n` passes empty a document at most `n` deep): a prediction body of depth 3
  costs 3 passes;
- anything the decoder still refuses (malformed text, bad UTF-8, huge integers).
"""

from __future__ import annotations

import json
import re
from typing import Any

from django.conf import settings

# After escapes are gone a string holds no quote: one quote to the next, never backtracking.
_STRING = re.compile(rb'"[^"]*"')
_OPEN_CLOSE = bytes.maketrans(b"[]{}", b"()()")
_NOT_MARK = bytes(b for b in range(256) if b not in b'"[]{}')


class JSONLimitError(ValueError):
    """The document is malformed, too large or nested too deeply (always the sender's fault)."""


def depth_exceeds(data: bytes, max_depth: int) -> bool:
    """True when the JSON text nests arrays/objects deeper than `max_depth`."""
    # Backslash pairs first, left to right as a decoder reads them; then escaped quotes.
    unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    # Quotes and brackets only; strings holding no bracket are then just `""`.
    marks = unescaped.translate(_OPEN_CLOSE, _NOT_MARK).replace(b'""', b"")
    brackets = _STRING.sub(b"", marks) if b'"' in marks else marks
    too_deep = b"(" * (max_depth + 1)
    for _ in range(max_depth):
        if not brackets:
            return False
        if too_deep in brackets:
            return True
        shorter = brackets.replace(b"()", b"")
        if len(shorter) == len(brackets):
            return False  # unbalanced, no deep run: malformed, as the decoder will say
        brackets = shorter
    return bool(brackets)


def loads(data: bytes | str, *, max_bytes: int | None = None, max_depth: int | None = None) -> Any:
    """json.loads within limits (defaults: PORTAL_JSON_MAX_BYTES, PORTAL_JSON_MAX_DEPTH)."""
    max_bytes = settings.PORTAL_JSON_MAX_BYTES if max_bytes is None else max_bytes
    max_depth = settings.PORTAL_JSON_MAX_DEPTH if max_depth is None else max_depth
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if len(raw) > max_bytes:
        raise JSONLimitError(f"the JSON is larger than {max_bytes} bytes")
    # Nesting needs an opening bracket per level: a small call skips the scan.
    opens = raw.count(b"[") + raw.count(b"{")
    if opens > max_depth and depth_exceeds(raw, max_depth):
        raise JSONLimitError(f"the JSON is nested deeper than {max_depth} levels")
    try:
        return json.loads(raw)
    except RecursionError as exc:  # a backstop: the pre-scan should have refused it
        raise JSONLimitError("the JSON is nested too deeply") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise JSONLimitError(f"malformed JSON: {exc}") from exc
