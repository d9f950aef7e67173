"""A stateful fuzzer of the operator and admin actions, against a real server on a database of odd states.

Every write operation (POST, PUT, PATCH, DELETE) of the app's own OpenAPI schema is a candidate, so a route
added later is fuzzed without touching this file. A request is drawn by schemathesis from the operation's
schema; its path ids come from the rows the run knows (the seeded odd incidents and alerts, what earlier
answers created), ids that do not exist and boundary numbers; its body's text fields get long, unicode and
hostile text up to their ``maxLength`` some of the time. Sent alone or several at once (the same action
twice on one object). What counts as a failure, with the request that found it:

* a 5xx, a dropped connection, or no answer within ``HANG_S``;
* a 2xx on an object's write whose object then cannot be read (its GET answers 5xx);
* a 2xx on an incident that leaves it inconsistent: the answer's state is not the stored one, no audit row was
  added (one per 2xx), or it changed state while members stayed behind (resolved with a live alert, closed
  with an alert not closed, acknowledged with an open one).

Seeded states (:func:`seed_odd_states`) are legal for the schema but not what today's engine makes.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import schemathesis
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

#: An answer slower than this is a hang.
HANG_S = 5.0
WRITE_METHODS = ("post", "put", "patch", "delete")
#: Sessions, not actions (and each login costs an Argon2 hash): left to tests/integration/test_auth_*.
NOT_ACTIONS = re.compile(r"^/api/auth/(login|logout)$")
MISSING_ID = 987_654_321
#: Integers a path id gets besides the known ones: missing, zero, negative, 32- and 64-bit edges, past 64 bits.
EDGE_INTS = (MISSING_ID, 0, -1, 2**31 - 1, 2**31, 2**63 - 1, 2**63, -(2**63) - 1)
EDGE_TEXT = ("zz-missing", "é" * 64, "🚨" * 300, " ", "..", "Đường Lạch Tray — ngập")
#: Text put into a body's string fields, cut to their maxLength: multi-byte, combining, right-to-left, SQL-like;
#: and what the API's text rule refuses (NUL, a bidirectional override, an escape): a 422, never a 5xx.
ODD_TEXT = ("🚨", "e\u0301", "مرحبا ", "Đường Lạch Tray ", "'; DROP TABLE incidents; --", "\\ud800", "%s%n{0}",
            "a", "👩🏽‍🚒")
REFUSED_TEXT = ("\x00", "a\u202eb", "\x1b[2J")
LIVE = ("open", "acknowledged")
ROLES = ("viewer", "officer", "supervisor", "admin")


@dataclass
class Outcome:
    """One failure: what was sent and what came back."""

    kind: str
    request: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.kind}] {self.request}: {self.detail}"


# --- the database's odd states -------------------------------------------------------------------------------

_INCIDENT = ("INSERT INTO incidents (group_key, category, severity, state, title, district, started_at, updated_at, "
             "resolved_at, closed_at, acked_by, acked_at, detail) VALUES ($1, $2, $3, $4, $5, $6, "
             "coalesce($7, now() - interval '1 hour'), coalesce($8, now()), $9, $10, $11, $12, $13::jsonb) "
             "RETURNING id")
_ALERT = ("INSERT INTO alerts (dedupe_key, rule, category, severity, state, title, explanation, device_id, kind, "
          "district, incident_id, started_at, last_seen_at, resolved_at, closed_at, evidence) VALUES ($1, $2, 'power', "
          "'major', $3, 'odd alert', 'seeded', $4, 'bts', NULL, $5, now() - interval '1 hour', now(), $6, $7, "
          "$8::jsonb) RETURNING id")


async def seed_odd_states(dsn: str, tag: str, copies: int = 2) -> dict[str, list[int]]:
    """Incidents and alerts an older version, a hand repair or a partial clean-up may leave, ``copies`` of each
    shape; returns the incident ids by shape (``all``: every one)."""
    conn = await asyncpg.connect(dsn)
    out: dict[str, list[int]] = defaultdict(list)
    past = "-infinity"
    try:
        async with conn.transaction():
            for n in range(copies):
                async def incident(shape: str, state: str = "open", *, severity: str = "major",
                                   category: str = "power", district: str | None = None, started: str | None = None,
                                   updated: str | None = None, detail: str = "{}", n: int = n) -> int:
                    resolved = "now()" if state in ("resolved", "closed") else None
                    inc = await conn.fetchval(
                        _INCIDENT, f"odd:{tag}:{shape}:{n}", category, severity, state, f"{shape} {n}", district,
                        _ts(started), _ts(updated), _ts(resolved), _ts("now()" if state == "closed" else None),
                        "legacy" if state != "open" else None, None, detail)
                    out[shape].append(inc)
                    out["all"].append(inc)
                    return int(inc)

                async def alert(inc: int | None, state: str = "open", *, device: str | None = "odd-ghost",
                                evidence: str = "{}") -> int:
                    done = "now()" if state in ("resolved", "closed") else None
                    return int(await conn.fetchval(
                        _ALERT, f"odd:{tag}:{uuid.uuid4().hex[:8]}", "mains_power_lost", state, device, inc,
                        _ts(done), _ts("now()" if state == "closed" else None), evidence))

                await incident("open, no alerts")
                await incident("acknowledged, no alerts", "acknowledged")
                await incident("resolved, no alerts", "resolved")
                await alert(await incident("open, its alert resolved"), "resolved")
                await alert(await incident("open, its alert closed"), "closed")
                await alert(await incident("open, device unknown"), device=f"odd-never-registered-{tag}-{n}")
                await alert(await incident("open, no device"), device=None)
                await alert(await incident("resolved, its alert open", "resolved"))
                await alert(await incident("closed, its alert open", "closed"))
                await alert(await incident("acknowledged, its alert open", "acknowledged"), "open")
                both = await incident("open, alerts live and resolved")
                await alert(both, "acknowledged")
                await alert(both, "resolved")
                await alert(await incident("category and district unknown", category="zz-odd", district="zz-odd"))
                await alert(await incident("times at infinity", started=past, updated="infinity"))
                # a severity outside the engine's (the incidents table has no CHECK on it), escalation state and
                # evidence that are not objects: each a row the engine cannot read as it is
                await alert(await incident("severity unknown", severity="bogus"))
                await alert(await incident("escalation not an object", detail='{"escalation": "x"}'))
                await alert(await incident("evidence not an object"), evidence='"x"')
                await alert(None)  # stand-alone, live
            # the engine's configuration as hand edits may leave it: a silence matching on a field alerts do not
            # have, or whose matchers are not an object or empty (it would mute the city); a policy for a severity
            # the engine does not know, or whose channels are not a list
            for n, matchers in enumerate(('{"bogus": "x"}', '"x"', '{}', '{"device_id": 5}')):
                await conn.execute("INSERT INTO silences (matchers, starts_at, ends_at, reason, author) VALUES "
                                   "($1::jsonb, now() - interval '1 hour', now() + interval '30 days', $2, 'legacy')",
                                   matchers, f"odd {tag} {n}")
            for n, (severity, channels) in enumerate((("bogus", '["webhook"]'), ("info", '"email"'))):
                await conn.execute("INSERT INTO escalation_policies (id, name, min_severity, steps, repeat, channels) "
                                   "VALUES ($1, 'legacy', $2, '[{\"after_min\": 0, \"level\": 1}]', 0, $3::jsonb)",
                                   f"odd-{tag}-{n}", severity, channels)
    finally:
        await conn.close()
    return dict(out)


def _ts(expr: str | None) -> Any:
    from datetime import UTC, datetime

    if expr is None:
        return None
    if expr == "now()":
        return datetime.now(UTC)
    if expr == "infinity":
        return datetime.max.replace(tzinfo=UTC)
    if expr == "-infinity":
        return datetime.min.replace(tzinfo=UTC)
    raise ValueError(expr)


# --- the operations ------------------------------------------------------------------------------------------

@dataclass
class Operation:
    """One write operation of the schema and what the fuzzer knows about it."""

    method: str
    path: str
    op: Any  # schemathesis' APIOperation
    body_limits: dict[str, int]  # a string field's maxLength
    read_path: str | None  # the GET that reads the object the path names
    strategy: Any = None

    @property
    def label(self) -> str:
        return f"{self.method.upper()} {self.path}"

    @property
    def collection(self) -> str:
        """The path up to its first parameter: the pool of ids its parameter takes."""
        return self.path.split("/{", 1)[0]


def write_operations(spec: dict[str, Any]) -> list[Operation]:
    """Every POST, PUT, PATCH and DELETE operation of ``spec`` (the app's OpenAPI), with the GET reading the
    object its first path parameter names, when there is one."""
    schema = schemathesis.openapi.from_dict(spec)
    gets = {p for p, item in spec["paths"].items() if "get" in item}
    ops = []
    for result in schema.get_all_operations():
        if not isinstance(result, Ok):
            continue
        op = result.ok()
        if op.method.lower() not in WRITE_METHODS or NOT_ACTIONS.match(op.path):
            continue
        read = None
        if "{" in op.path:
            head, rest = op.path.split("{", 1)
            candidate = head + "{" + rest.split("}", 1)[0] + "}"
            read = candidate if candidate in gets else None
        ops.append(Operation(op.method.lower(), op.path, op, _body_limits(spec, op.method.lower(), op.path), read))
    return ops


def _body_limits(spec: dict[str, Any], method: str, path: str) -> dict[str, int]:
    body = spec["paths"][path][method].get("requestBody", {}).get("content", {}).get("application/json", {})
    schema = _resolve(spec, body.get("schema", {}))
    limits = {}
    for name, prop in schema.get("properties", {}).items():
        for option in [prop, *prop.get("anyOf", [])]:
            if option.get("type") == "string" and "maxLength" in option:
                limits[name] = int(option["maxLength"])
    return limits


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if not ref:
        return schema
    node: Any = spec
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return dict(node)


# --- the run -------------------------------------------------------------------------------------------------

@dataclass
class Fuzz:
    """A run's shared state: the server, its database, the operations, the ids known, the failures found."""

    url: str
    dsn: str
    tokens: dict[str, str]  # role -> bearer secret
    ops: list[Operation]
    pools: dict[str, list[Any]]  # collection path -> ids it holds
    protected: dict[str, set[str]] = field(default_factory=dict)  # path parameter -> values never sent
    max_per_op: int = 8  # requests of an operation not on the seeded rows, at most
    failures: list[Outcome] = field(default_factory=list)
    sent: int = 0
    statuses: dict[int, int] = field(default_factory=lambda: defaultdict(int))

    def __post_init__(self) -> None:
        # the most powerful role twice as often: a lesser one's 403 tests less behind it
        self.roles = [*sorted(self.tokens), max(self.tokens, key=lambda r: ROLES.index(r))]
        self.loop = asyncio.new_event_loop()
        self.conn = self.loop.run_until_complete(asyncpg.connect(self.dsn))
        self.per_op: dict[str, int] = defaultdict(int)
        self._failed: set[tuple[str, str]] = set()
        self.seeded_pools = {k for k, v in self.pools.items() if v}
        self.clients = {role: httpx.Client(base_url=self.url, timeout=HANG_S,
                                           headers={"Authorization": f"Bearer {secret}"})
                        for role, secret in self.tokens.items()}

    def seeded(self, op: Operation) -> bool:
        return "{" in op.path and op.collection in self.seeded_pools

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        self.loop.run_until_complete(self.conn.close())
        self.loop.close()

    def fail(self, kind: str, request: str, detail: str, label: str = "") -> None:
        """Record a failure: the first of each kind per operation (``label``), with its request."""
        key = (kind, label or " ".join(request.split(" ", 2)[:2]))
        if key not in self._failed:
            self._failed.add(key)
            self.failures.append(Outcome(kind, request, detail[:300]))

    # requests

    def draw(self, data: st.DataObject, op: Operation) -> tuple[str, str, dict[str, Any]]:
        """A request of ``op``: (role, path, httpx keyword arguments)."""
        if op.strategy is None:  # built once: building it costs more than drawing from it
            op.strategy = op.op.as_strategy(generation_mode=GenerationMode.POSITIVE)
        case = data.draw(op.strategy, label=op.label)
        params = dict(case.path_parameters or {})
        first = re.findall(r"{(\w+)}", op.path)[:1]
        for name, value in [(n, params[n]) for n in first if n in params]:  # the object's id; later ones as drawn
            known = [v for v in self.pools.get(op.collection, []) if str(v) not in self.protected.get(name, ())]
            edges = EDGE_INTS if isinstance(value, int) else EDGE_TEXT
            # The same draws whatever the pool holds (it grows as the run goes): hypothesis replays its choices
            # and refuses a generation that depends on outside state. Mostly a known id, if any.
            pick = data.draw(st.integers(0, 9), label=f"{name} from")
            nth = data.draw(st.integers(0, 1023), label=f"{name} known")
            edge = data.draw(st.sampled_from(edges), label=f"{name} edge")
            if known and pick < 8:
                params[name] = known[nth % len(known)]
            elif pick < 9:
                params[name] = edge  # else: schemathesis' own
            if str(params[name]) in self.protected.get(name, ()):
                params[name] = MISSING_ID if isinstance(value, int) else "zz-missing"
        body = case.body
        if isinstance(body, dict):
            body = dict(body)
            for name, limit in op.body_limits.items():
                # schemathesis' own text (much of it refused by the text rule: a 422) a fifth of the time, else
                # odd text the API takes, up to the field's limit, or (a tenth) what the text rule refuses
                how = data.draw(st.integers(0, 9), label=f"{name} how")
                piece = data.draw(st.sampled_from(ODD_TEXT), label=f"{name} text")
                length = data.draw(st.sampled_from([limit, 1, max(1, limit // 2)]), label=f"{name} length")
                if how == 9:
                    body[name] = data.draw(st.sampled_from(REFUSED_TEXT), label=f"{name} refused")
                elif how >= 2 and (name in body or how >= 6):
                    body[name] = (piece * (limit // max(1, len(piece)) + 1))[:length]
        path = op.path
        for name, value in params.items():
            path = path.replace("{" + name + "}", str(value))
        kwargs: dict[str, Any] = {"params": case.query or None}
        if body is not None and not isinstance(body, schemathesis.core.NotSet):
            kwargs["json"] = body
        role = data.draw(st.sampled_from(self.roles), label="role")
        return role, path, kwargs

    def send(self, role: str, method: str, path: str, kwargs: dict[str, Any],
             label: str = "") -> httpx.Response | None:
        shown = f"{method.upper()} {path} as {role} {kwargs.get('json') or kwargs.get('params') or ''}"[:400]
        self.sent += 1
        try:
            resp = self.clients[role].request(method, path, **kwargs)
        except httpx.TimeoutException:
            self.fail("hang", shown, f"no answer within {HANG_S:g} s", label)
            return None
        except httpx.HTTPError as err:
            self.fail("dropped", shown, f"{type(err).__name__}: {err}", label)
            return None
        self.statuses[resp.status_code] += 1
        if resp.status_code >= 500:
            self.fail(f"{resp.status_code}", shown, resp.text, label)
        return resp

    # checks

    def incident_state(self, incident_id: int) -> dict[str, Any] | None:
        if not -(2**63) <= incident_id < 2**63:
            return None
        row = self.loop.run_until_complete(self.conn.fetchrow(
            "SELECT i.state, (SELECT count(*) FROM alert_events e WHERE e.incident_id = i.id) AS audit, "
            "(SELECT array_agg(a.state) FROM alerts a WHERE a.incident_id = i.id) AS members "
            "FROM incidents i WHERE i.id = $1", incident_id))
        return None if row is None else {"state": row["state"], "audit": row["audit"],
                                         "members": list(row["members"] or [])}

    def act(self, op: Operation, role: str, path: str, kwargs: dict[str, Any], times: int = 1) -> None:
        """Send the request (``times`` at once) and check what it left behind."""
        if not self.seeded(op) and self.per_op[op.label] >= self.max_per_op:
            return  # bounded: a user's creation hashes a password (Argon2, about 0.4 s here)
        self.per_op[op.label] += times
        incident_id = _incident_of(op, path)
        before = self.incident_state(incident_id) if incident_id is not None else None
        if times == 1:
            answers = [self.send(role, op.method, path, kwargs, op.label)]
        else:
            with ThreadPoolExecutor(times) as pool:
                answers = list(pool.map(lambda _: self.send(role, op.method, path, kwargs, op.label), range(times)))
        ok = [r for r in answers if r is not None and r.is_success]
        shown = f"{op.method.upper()} {path} as {role} x{times} {kwargs.get('json') or ''}"[:400]
        for resp in ok:
            self._learn(op, path, resp)
        if ok and op.read_path is not None:
            read = self.send(role, "get", _read_path(op, path), {}, f"GET {op.read_path}")
            if read is not None and read.status_code >= 500:
                self.fail("unreadable after write", shown, f"GET answered {read.status_code}: {read.text}", op.label)
        if ok and before is not None and incident_id is not None:
            self._check_incident(op.label, shown, incident_id, before, ok)

    def _check_incident(self, label: str, shown: str, incident_id: int, before: dict[str, Any],
                        ok: list[httpx.Response]) -> None:
        after = self.incident_state(incident_id)
        if after is None:
            self.fail("lost", shown, "a 2xx, and the incident is gone from the database", label)
            return
        if after["audit"] < before["audit"] + len(ok):
            self.fail("audit missing", shown, f"{len(ok)} answered 2xx, {after['audit'] - before['audit']} audit "
                                              "rows added", label)
        answered = ok[-1].json().get("state") if "json" in ok[-1].headers.get("content-type", "") else None
        if len(ok) == 1 and answered is not None and answered != after["state"]:
            self.fail("answer not stored", shown, f"answered {answered}, stored {after['state']}", label)
        if after["state"] == before["state"]:
            return
        behind = {"resolved": [s for s in after["members"] if s in LIVE],
                  "closed": [s for s in after["members"] if s != "closed"],
                  "acknowledged": [s for s in after["members"] if s == "open"]}.get(after["state"], [])
        if behind:
            self.fail("members left behind", shown, f"incident {before['state']} -> {after['state']}, members "
                                                     f"{after['members']}", label)

    def _learn(self, op: Operation, path: str, resp: httpx.Response) -> None:
        """Ids an answer created (POST ``/x`` -> ``id``) or named (PUT ``/x/{id}``) join the pool of ``/x``."""
        pool = self.pools.setdefault(op.collection, [])
        if op.method == "post" and "{" not in op.path:
            try:
                doc = resp.json()
            except ValueError:
                return
            if isinstance(doc, dict) and doc.get("id") is not None and doc["id"] not in pool:
                pool.append(doc["id"])
        elif op.method == "put" and "{" in op.path:
            value = path[len(op.collection) + 1:].split("/", 1)[0]
            if value not in pool:
                pool.append(value)

    def alive(self) -> None:
        """The process still answers and is ready."""
        resp = self.send("admin", "get", "/readyz", {})
        if resp is not None and resp.status_code != 200:
            self.fail("not ready", "GET /readyz", resp.text)


def _incident_of(op: Operation, path: str) -> int | None:
    if "{incident_id}" not in op.path:
        return None
    m = re.match(re.escape(op.path.split("{incident_id}", 1)[0]) + r"(-?\d+)", path)
    return int(m.group(1)) if m else None


def _read_path(op: Operation, path: str) -> str:
    depth = (op.read_path or "").count("/")
    return "/".join(path.split("/")[:depth + 1])


def machine(fuzz: Fuzz) -> type[RuleBasedStateMachine]:
    """The state machine over ``fuzz``: any operation, alone or several at once (the same request)."""

    def pick(data: st.DataObject) -> Operation:
        # an operation on the seeded rows (a pool known from the start) eight times as often as another
        weighted = [op for op in fuzz.ops for _ in range(8 if fuzz.seeded(op) else 1)]
        return data.draw(st.sampled_from(weighted), label="operation")

    class ActionFuzz(RuleBasedStateMachine):
        @rule(data=st.data())
        def one(self, data: st.DataObject) -> None:
            op = pick(data)
            fuzz.act(op, *fuzz.draw(data, op))

        @rule(data=st.data(), times=st.integers(2, 4))
        def at_once(self, data: st.DataObject, times: int) -> None:
            op = pick(data)
            fuzz.act(op, *fuzz.draw(data, op), times=times)

        def teardown(self) -> None:
            fuzz.alive()

    return ActionFuzz
