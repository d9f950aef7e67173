"""Hostile values at every parameter and body field of every operation, chosen from the field's schema type.

schemathesis draws values that fit (or break) a schema at random; the classes that broke our API were at the
edges of what Python holds, which it seldom draws: a time near year 1 or 9999 (overflowed once shifted, stored
as PostgreSQL's infinity and read back without a zone), NaN and Infinity in a JSON body (the stdlib parser takes
them; echoing them back in a 422 raised), integers past 64 bits, deep nesting. This phase sends each such value
alone, into one field of an otherwise valid request, and reports every 5xx or dropped connection.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import requests

#: Values by the field's schema type (``format`` first). Strings are sent as JSON strings in bodies.
EDGE_TIMES = ["0001-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59.999999Z",
              "9999-12-31T23:59:59-01:00", "1969-12-31T23:59:59Z", "2026-01-01T00:00:00", "2026-02-30T00:00:00Z"]
RAW_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e308", "-1e308", "1e400", str(2**63), str(-(2**63) - 1),
               "9" * 40, "5e-324", "-0.0"]
STRINGS = ["", "\x00", "a\u202eb", "\ud800", "\x1b[2J", "x" * 8000, "../../etc/passwd", "' OR 1=1 --", "%00"]
#: Whole bodies, whatever the operation expects.
RAW_BODIES = [b"[" * 50_000 + b"]" * 50_000, b'{"a":' * 20_000 + b"1" + b"}" * 20_000, b"NaN", b"null",
              b'\xef\xbb\xbf{"a": 1}', b'{"a": "\xff\xfe"}', b'{"a": ' + b"9" * 5000 + b"}",
              b"{" + b",".join(b'"k%d":1' % i for i in range(50_000)) + b"}"]


def _resolve(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = spec
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def _kinds(schema: dict[str, Any], spec: dict[str, Any]) -> set[str]:
    """'date-time', 'integer', 'number', 'string', 'boolean', 'array', 'object' of a (nullable, anyOf) schema."""
    schema = _resolve(schema, spec)
    found: set[str] = set()
    for alt in schema.get("anyOf", []) + schema.get("oneOf", []) + schema.get("allOf", []):
        found |= _kinds(alt, spec)
    if schema.get("format") == "date-time":
        found.add("date-time")
    elif "type" in schema:
        found.add(str(schema["type"]))
    return found


def _values(kinds: set[str]) -> list[str]:
    """Raw JSON texts to put in a field of these kinds (all of them for a field of unknown type)."""
    out: list[str] = []
    if "date-time" in kinds or not kinds:
        out += [json.dumps(t) for t in EDGE_TIMES]
    if kinds & {"integer", "number"} or not kinds:
        out += RAW_NUMBERS
    if "string" in kinds or not kinds:
        out += [json.dumps(s) for s in STRINGS]
    out += ["[" * 200 + "]" * 200, '{"": {"": []}}', "true"]
    return out


def _query_value(raw: str) -> str:
    """A raw JSON text as a query or path value (strings unquoted)."""
    try:
        value = json.loads(raw)
    except ValueError:
        return raw  # NaN, Infinity: the text itself
    return value if isinstance(value, str) else raw


#: Plain values of fields whose valid values the schema does not spell out (a valid base request reaches the code
#: behind validation; a base refused anyway would hide what a hostile value does there).
PLAIN_FIELDS: dict[str, Any] = {"matchers": {"device_id": "api-fuzz"}, "steps": [{"after_min": 0, "level": 1}],
                                "channels": ["webhook"], "role": "viewer", "password": "api fuzz hostile 2026 pw",
                                "officer_id": "api-fuzz", "min_severity": "info", "reason": "api fuzz",
                                "name": "api fuzz", "note": "api fuzz"}


def _plain(name: str, schema: dict[str, Any], spec: dict[str, Any]) -> Any:
    """A plain valid value for a field: known fields, the schema's enum or default, else by type."""
    if name in PLAIN_FIELDS:
        return PLAIN_FIELDS[name]
    schema = _resolve(schema, spec)
    for alt in [schema, *schema.get("anyOf", [])]:
        alt = _resolve(alt, spec)
        if alt.get("enum"):
            return alt["enum"][0]
    if schema.get("default") is not None:
        return schema["default"]
    kinds = _kinds(schema, spec)
    for kind, value in (("date-time", "2030-01-01T00:00:00Z"), ("integer", 1), ("number", 1.0), ("boolean", True),
                        ("string", "x"), ("array", []), ("object", {})):
        if kind in kinds:
            return value
    return None


Request = tuple[str, str, dict[str, str], bytes | None]


def hostile_requests(op: Any, spec: dict[str, Any], known_id: str) -> Iterator[Request]:
    """(method, path, query, body) for each hostile value in each field of one operation, the others plain."""
    method, raw_op = op.method.upper(), op.definition.raw
    params = raw_op.get("parameters", [])
    path_params = {p["name"]: known_id if p["name"] == "device_id" else _plain(p["name"], p.get("schema", {}), spec)
                   for p in params if p["in"] == "path"}
    query = {p["name"]: str(_plain(p["name"], p.get("schema", {}), spec)).lower()
             for p in params if p["in"] == "query" and p.get("required")}
    content = raw_op.get("requestBody", {}).get("content", {}).get("application/json")
    body_schema = _resolve(content.get("schema", {}), spec) if content else {}
    props = body_schema.get("properties", {})
    base = {k: _plain(k, v, spec) for k, v in props.items() if k in body_schema.get("required", [])}
    body = json.dumps(base).encode() if content else None

    def path(values: dict[str, Any]) -> str:
        out = op.path
        for k, v in values.items():
            out = out.replace("{" + k + "}", requests.utils.quote(str(v), safe=""))
        return out

    for param in params:
        name, where = param["name"], param["in"]
        for raw in _values(_kinds(param.get("schema", {}), spec)):
            value = _query_value(raw)
            if "\ud800" in value:  # a URL cannot carry a lone surrogate at all
                continue
            if where == "path":
                yield method, path({**path_params, name: value}), query, body
            elif where == "query":
                yield method, path(path_params), {**query, name: value}, body
    if content is None:
        return
    for name, prop in props.items():
        for raw in _values(_kinds(prop, spec)):
            doc = json.dumps({k: v for k, v in base.items() if k != name})
            text = doc[:-1] + (", " if len(doc) > 2 else "") + f'"{name}": {raw}}}'
            yield method, path(path_params), query, text.encode()
    for raw_body in RAW_BODIES:
        yield method, path(path_params), query, raw_body


def run_hostile(operations: list[Any], spec: dict[str, Any], url: str, session: requests.Session,
                known_id: str, skip: Any) -> tuple[int, list[str]]:
    """Send every hostile request of every operation; (requests sent, failures as 'status METHOD path ...')."""
    sent, failures = 0, []
    for op in operations:
        if skip(op):
            continue
        try:
            requests_of_op = list(hostile_requests(op, spec, known_id))
        except Exception as err:  # an operation schemathesis cannot draw an example of: said, not fatal
            failures.append(f"(no example) {op.method.upper()} {op.path}: {type(err).__name__}: {err}"[:300])
            continue
        for method, path, query, body in requests_of_op:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            for attempt in (1, 2):  # once more on a dropped connection: a kept-alive one closed is no answer
                try:
                    resp = session.request(method, url + path, params=query, data=body, headers=headers, timeout=30)
                    break
                except requests.RequestException as err:
                    if attempt == 2:
                        failures.append(f"dropped {method} {path[:120]} {str(query)[:120]} "
                                        f"{(body or b'')[:120]!r}: {type(err).__name__}")
            else:
                continue
            sent += 1
            if resp.status_code >= 500:
                failures.append(f"{resp.status_code} {method} {path[:120]} {str(query)[:120]} {(body or b'')[:120]!r}")
    return sent, failures


def still_judges(mqtt_url: str, url: str, session: requests.Session, wait_s: float = 30.0) -> list[str]:
    """After the hostile requests: a device's alarm must still raise its alert and the server be ready. A value
    can be taken with 201 and break a stage later (a silence at year 1 ended the alert engine's task)."""
    import time
    import uuid
    from urllib.parse import urlsplit

    import paho.mqtt.client as mqtt

    device = f"fz-after-{uuid.uuid4().hex[:6]}"
    parts = urlsplit(mqtt_url)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device)
    client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
    client.loop_start()
    doc = {"ts": int(time.time() * 1000), "type": "door_open", "severity": "critical"}
    client.publish(f"ioc/v1/bts/{device}/event", json.dumps(doc), qos=1).wait_for_publish(5)
    client.loop_stop()
    client.disconnect()
    problems = []
    deadline = time.monotonic() + wait_s
    while not session.get(f"{url}/api/alerts", params={"device_id": device}, timeout=10).json():
        if time.monotonic() > deadline:
            problems.append(f"after the hostile requests, an alarm raised no alert within {wait_s:.0f} s")
            break
        time.sleep(0.5)
    time.sleep(6)  # a stage that keeps failing is reported by readiness after 5 s
    ready = session.get(f"{url}/readyz", timeout=10)
    if ready.status_code != 200:
        problems.append(f"after the hostile requests, /readyz answers {ready.status_code}: {ready.text[:300]}")
    return problems
