"""An event's ``detail``: kept whole where ingest stores it, carried bounded everywhere else.

A device may send a detail that fills the payload limit (256 KiB: 9,000 keys, 36,000 JSON nodes). Cleaning it
node by node (:func:`ingest.text.clean_json`) cost the event loop ~25 ms a message, holding it as a tree of
Python objects until its batch committed (about 3 MB each) cost as much again in garbage collection, and it
went whole into every alert's evidence, WebSocket frame and incident row (233 KB each). A detail of a
payload over :data:`VIEW_BYTES` therefore takes two forms:

* ``stored``: the whole detail as JSON text, the text rule applied to the text in one regex pass (no tree
  is built): what ``device_events.detail`` keeps (nothing accepted is lost);
* ``view``: its first keys and values up to :data:`VIEW_BYTES` (strings cut at :data:`VIEW_STRING`
  characters, nesting at :data:`VIEW_DEPTH`), with a ``_truncated`` entry saying how much the whole holds:
  what the record carries on (live frames, alert evidence, incidents).

A detail that fits in the view anyway is carried whole, as smaller payloads' details always are.

Parsing such a payload into a tree at all cost the event loop most of its ~28 ms an event (orjson building 45,000
objects, the dump back to text, freeing them). So :func:`read_large_event` reads an event payload over
:data:`VIEW_BYTES` without building its detail: msgspec checks the whole document and hands the detail over as its
raw text (``stored``, cleaned by the same one regex pass), and the view is parsed from the text's first members.
A payload it cannot read so (not valid JSON or UTF-8, numbers the tree would change: integers past 64 bits, long
digit runs, 3-digit exponents) goes the tree's way, which quarantines it or cleans it node by node as before.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
import orjson

from ingest.text import clean_json, clean_scalar, clean_text

#: Payloads up to this many bytes have their detail cleaned and carried whole; a view holds about this much.
VIEW_BYTES = 16 * 1024
#: Longest string (key or value) a view keeps, in characters.
VIEW_STRING = 1024
#: Deepest nesting a view keeps (the rest reads "(nested too deep)").
VIEW_DEPTH = 16
#: What a view counts for a node besides its text (a number, brackets, a separator).
_NODE_COST = 8
#: The key of the marker a cut view carries.
TRUNCATED = "_truncated"

#: In JSON text (orjson's or a device's, checked valid): an escaped backslash (kept, so what follows it is not read
#: as an escape), or a character the text rule refuses (:mod:`ingest.text`), escaped or not: a C0 control but
#: tab/newline/CR (\u00XX, \b, \f), DEL and C1 controls, bidirectional overrides. No lone surrogate gets this far:
#: neither orjson nor msgspec reads one, nor does orjson write one.
_REFUSED = (r'\\u00(?:0[0-8bcefBCEF]|1[0-9a-fA-F]|7[fF]|[89][0-9a-fA-F])|\\u20(?:2[a-eA-E]|6[6-9])|\\[bf]'
             r'|[\x7f-\x9f\u202a-\u202e\u2066-\u2069]')
_REFUSED_IN_JSON = re.compile(r'\\\\|' + _REFUSED)
_REFUSED_HINT = re.compile(_REFUSED)
#: Numbers of a device's text that the tree path would change (integers past 64 bits become strings) or that
#: PostgreSQL or orjson could refuse when read back (long digit runs, 3-digit exponents): such a payload is read whole.
#: Seen through :data:`_NUMBERS` (digits as 0, e/E as e, signs as +, the rest as blanks; a regex's pass is 100 times
#: slower), also in strings: a false alarm only costs the tree's way.
_RISKY_NUMBERS = (b"0" * 19, b"e000", b"e+000")
_NUMBERS = bytes(ord("0") if c in b"0123456789" else ord("e") if c in b"eE" else ord("+") if c in b"+-" else ord(" ")
                 for c in range(256))
#: Commas tried, from the end of a large detail's first VIEW_BYTES, as the end of its view's members.
_CUT_TRIES = 6


class _EventFields(msgspec.Struct):
    """An event's fields as raw JSON text (empty: absent); the rest of the document is checked, not built."""

    ts: msgspec.Raw = msgspec.Raw()
    type: msgspec.Raw = msgspec.Raw()
    severity: msgspec.Raw = msgspec.Raw()
    detail: msgspec.Raw = msgspec.Raw()


_EVENT_FIELDS = msgspec.json.Decoder(_EventFields)


def _replace(match: re.Match[str]) -> str:
    found = match.group()
    return found if found == "\\\\" else "\ufffd"


def clean_json_text(text: str) -> str:
    """JSON text (as orjson writes it) with every character the text rule refuses replaced by U+FFFD, as
    :func:`ingest.text.clean_json` does to the document's keys and strings."""
    if text.isascii() and "\\" not in text and "\x7f" not in text:  # the usual case, without a regex's pass
        return text
    return _REFUSED_IN_JSON.sub(_replace, text) if _REFUSED_HINT.search(text) else text


def read_large_event(payload: bytes) -> tuple[dict[str, Any], tuple[dict[str, Any], str | None]] | None:
    """(the event's ``ts``, ``type``, ``severity`` as a document, its detail's (view, stored)) of a large event
    payload, its detail never built as a tree; None: read it whole (see the module's docstring). A detail that is
    not an object is None in the document (refused as the tree path refuses it)."""
    try:
        if not payload.isascii():
            payload.decode()  # msgspec checks the UTF-8 of the values it reads only
        fields = _EVENT_FIELDS.decode(payload)
        doc = {name: orjson.loads(bytes(value)) for name in ("ts", "type", "severity")
               if len(value := getattr(fields, name))}
        raw = bytes(fields.detail)
        if not raw:
            return doc, ({}, None)
        if raw[:1] != b"{":
            doc["detail"] = None
            return doc, ({}, None)
        numbers = raw.translate(_NUMBERS)
        if any(risky in numbers for risky in _RISKY_NUMBERS):
            return None
        text = raw.decode()
        if len(text) <= VIEW_BYTES:
            doc["detail"] = {}
            return doc, bound_detail(orjson.loads(text), len(payload))
    except (msgspec.MsgspecError, orjson.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return None
    doc["detail"] = {}
    return doc, _view_of_text(text)


def _view_of_text(text: str) -> tuple[dict[str, Any], str]:
    """(view, stored) of a detail's valid JSON object text longer than VIEW_BYTES: the view is parsed from its first
    members (a cut at a comma parses only where it ends a member: elsewhere a string or a bracket is left open)."""
    head, end, part = text[:VIEW_BYTES], VIEW_BYTES, None
    for _ in range(_CUT_TRIES):
        end = head.rfind(",", 0, end)
        if end < 0:
            break
        try:
            part = orjson.loads(head[:end] + "}")
            break
        except orjson.JSONDecodeError:
            continue
    walk = _View()
    view = walk.dict(part, 0) if isinstance(part, dict) else {}  # none found: the marker alone
    stored = clean_json_text(text)
    view[TRUNCATED] = {"detail_bytes": len(stored.encode()), "kept_bytes": VIEW_BYTES - walk.budget,
                       "whole_in": "device_events"}
    return view, stored


def bound_detail(detail: dict[str, Any], payload_bytes: int) -> tuple[dict[str, Any], str | None]:
    """(view, stored) of an event's raw (parsed, not yet cleaned) ``detail``; ``stored`` is None when the view
    holds it all (the record's detail is then what is stored)."""
    if payload_bytes <= VIEW_BYTES:
        return clean_json(detail), None
    walk = _View()
    view = walk.dict(detail, 0)
    if not walk.cut:
        return view, None
    try:
        stored = clean_json_text(orjson.dumps(detail).decode())
    except (TypeError, orjson.JSONEncodeError):  # the lenient parser's integers past 64 bits, lone surrogates
        stored = orjson.dumps(clean_json(detail)).decode()
    view[TRUNCATED] = {"detail_bytes": len(stored.encode()), "kept_bytes": VIEW_BYTES - walk.budget,
                       "whole_in": "device_events"}
    return view, stored


class _View:
    """A walk that cleans and keeps nodes until its budget is spent (``cut`` then says something was left)."""

    def __init__(self) -> None:
        self.budget = VIEW_BYTES
        self.cut = False

    def _text(self, value: str) -> str:
        if len(value) > VIEW_STRING:
            self.cut = True
        out = clean_text(value[:VIEW_STRING], multiline=True)
        self.budget -= _NODE_COST + len(out)
        return out

    def dict(self, doc: dict[Any, Any], depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in doc.items():
            if self.budget <= 0:
                self.cut = True
                break
            out[self._text(str(key))] = self.value(value, depth + 1)
        return out

    def value(self, doc: Any, depth: int) -> Any:
        if isinstance(doc, str):
            return self._text(doc)
        self.budget -= _NODE_COST
        if isinstance(doc, dict | list | tuple) and depth > VIEW_DEPTH:
            self.cut = True
            return "(nested too deep)"
        if isinstance(doc, dict):
            return self.dict(doc, depth)
        if isinstance(doc, list | tuple):
            out = []
            for item in doc:
                if self.budget <= 0:
                    self.cut = True
                    break
                out.append(self.value(item, depth + 1))
            return out
        return clean_scalar(doc)
