"""One rule for text that crosses an edge (MQTT payloads, REST bodies, WebSocket actions).

Text we keep must be storable in PostgreSQL (no NUL), encodable as UTF-8 (no lone surrogates, which
JSON's ``\\ud800`` escapes can smuggle in) and safe to show on a screen or in a log line (no control
characters that move the cursor, ring bells or rewrite a terminal). Tab and newline are kept where a
field allows several lines (officers' notes); everything else in Unicode category ``Cc`` (C0, DEL,
C1) and ``Cs`` (surrogates), plus the bidirectional overrides that can make a line read backwards,
is refused at the edge with a clear reason or, for device free text, replaced.

The same functions back the pydantic types of the API (:mod:`ioc.api.models`) and the MQTT parser.
"""

from __future__ import annotations

import math
import re
from typing import Any

#: Characters never kept: C0 controls but tab/newline/CR, DEL and C1, lone surrogates, bidi overrides.
_BAD_MULTILINE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\u202a-\u202e\u2066-\u2069]")
#: The same for single-line fields (names, ids, reasons): no line breaks or tabs either.
_BAD_LINE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u202a-\u202e\u2066-\u2069]")

REPLACEMENT = "\ufffd"


class TextError(ValueError):
    """A text field holds characters the rule refuses."""


def _pattern(multiline: bool) -> re.Pattern[str]:
    return _BAD_MULTILINE if multiline else _BAD_LINE


def describe(ch: str) -> str:
    """How a refused character is named in an error: ``U+0000`` and its kind."""
    code = ord(ch)
    kind = ("a lone UTF-16 surrogate" if 0xD800 <= code <= 0xDFFF else
            "a bidirectional override" if code >= 0x202A else
            "NUL" if code == 0 else "a control character")
    return f"U+{code:04X} ({kind})"


def check_text(value: str, *, multiline: bool = False, field: str = "text") -> str:
    """Return ``value`` unchanged, or raise :class:`TextError` naming the first refused character."""
    match = _pattern(multiline).search(value)
    if match is not None:
        raise TextError(f"{field} contains {describe(match.group())} at position {match.start()}")
    return value


def clean_text(value: str, *, multiline: bool = False, limit: int | None = None) -> str:
    """Replace refused characters with U+FFFD (device free text: kept, made safe) and cut at ``limit``."""
    out = _pattern(multiline).sub(REPLACEMENT, value)
    return out if limit is None else out[:limit]


def find_bad_text(doc: Any, *, depth: int = 0) -> str | None:
    """The first refused character anywhere in a JSON document's strings and keys, described; else None."""
    if isinstance(doc, str):  # before the depth check: clean_json leaves a string at the cut depth
        match = _BAD_MULTILINE.search(doc)
        return describe(match.group()) if match else None
    if depth > 64:
        return "nesting deeper than 64 levels"
    if isinstance(doc, dict):
        for key, value in doc.items():
            found = find_bad_text(key, depth=depth + 1) if isinstance(key, str) else None
            found = found or find_bad_text(value, depth=depth + 1)
            if found:
                return found
    elif isinstance(doc, list):
        for value in doc:
            found = find_bad_text(value, depth=depth + 1)
            if found:
                return found
    return None


def clean_json(doc: Any, *, depth: int = 0) -> Any:
    """A JSON-like document with the rule applied to every key and string, and values every JSON encoder and
    PostgreSQL's jsonb accept: integers past 64 bits become strings, NaN/Infinity null, other types ``str()``."""
    if isinstance(doc, str):
        return clean_text(doc, multiline=True)
    if depth > 64:
        return "(nested too deep)"
    if isinstance(doc, dict):
        return {clean_text(str(k), multiline=True): clean_json(v, depth=depth + 1) for k, v in doc.items()}
    if isinstance(doc, list | tuple):
        return [clean_json(v, depth=depth + 1) for v in doc]
    return clean_scalar(doc)


def clean_scalar(doc: Any) -> Any:
    """A value that is not a container, as ``clean_json`` keeps it (strings on one line)."""
    if doc is None or isinstance(doc, bool):
        return doc
    if isinstance(doc, int):
        return doc if -(2**63) <= doc < 2**64 else str(doc)
    if isinstance(doc, float):
        return doc if math.isfinite(doc) else None
    return clean_text(str(doc))
