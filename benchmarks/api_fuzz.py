"""schemathesis against the API's own OpenAPI schema: every operation, a real server, a fresh database.

    python -m benchmarks.api_fuzz [--examples N] [--negative N] [--include REGEX] [--no-hostile]

Creates a fresh migrated database next to ``IOC_TEST_DATABASE_URL`` (as the tests do), an admin API token
through ``ioc.auth`` (unauthenticated when that is missing), runs ``ioc serve --ingest`` on a free port
against it, seeds a few devices over MQTT (so lists and device pages have rows to validate), then sends
``--examples`` schema-conforming requests per operation (and ``--negative`` schema-violating ones), known
device ids put into path parameters half the time. Each response is checked by schemathesis: server
errors, status codes and content types the schema does not declare, headers and bodies that break the
response schema. Prints operations, examples, 5xx count and schema violations, with one request per
failure (as curl). Then, unless ``--no-hostile``, every parameter and body field of every operation gets each
hostile value of its type alone (benchmarks/api_hostile.py), and afterwards a device's alarm must still raise
its alert and /readyz say ready. Exits 1 on any 5xx, response that breaks its schema,
or dropped connection.

Operations that would cut the fuzzer's own access (revoking tokens, logging out, disabling users) get their
requests but never with the fuzzer's own ids; see ``SELF_PROTECT``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.core.result import Ok
from schemathesis.specs.openapi import checks as oa_checks

from benchmarks.api_hostile import run_hostile, still_judges
from tests.conftest import BASE_DSN, MQTT_URL, create_database, drop_database, ingest_env
from tests.support.services import ServeProcess, wait_until

#: Checks on every response: 5xx, status codes, content types, headers and bodies against the schema.
CHECKS = [schemathesis.checks.not_a_server_error, oa_checks.status_code_conformance,
          oa_checks.content_type_conformance, oa_checks.response_headers_conformance,
          oa_checks.response_schema_conformance]
#: What counts as breaking the schema (an undeclared status code is reported apart: FastAPI declares only
#: 200 and 422 unless a route lists more).
SCHEMA_CODES = {"response_schema_conformance", "content_type_conformance", "response_headers_conformance"}
SELF_PROTECT = re.compile(r"/logout|/tokens/|/users/")


@dataclass
class OpStats:
    """Figures of one operation."""

    examples: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: dict[str, tuple[str, str]] = field(default_factory=dict)  # check -> (message, curl)


async def prepare(base_dsn: str) -> tuple[str, str | None]:
    """A fresh migrated database and an admin token in it (None without ``ioc.auth``)."""
    dsn = await create_database(base_dsn)
    try:
        import asyncpg

        from ioc.auth import store
        from ioc.auth.model import Role
    except ImportError:
        return dsn, None
    conn = await asyncpg.connect(dsn)
    try:
        secret, _ = await store.create_token(conn, "api-fuzz", Role.parse("admin"), 1.0, "benchmarks.api_fuzz")
    finally:
        await conn.close()
    return dsn, secret


def seed(mqtt_url: str, server: ServeProcess, headers: dict[str, str]) -> dict[str, list[str]]:
    """A few devices of every kind over MQTT, through the server's embedded ingest; their ids by kind."""
    from urllib.parse import urlsplit

    import paho.mqtt.client as mqtt

    from tests.support.corpus import small_jpeg

    tag = uuid.uuid4().hex[:6]
    ids = {"traffic": [f"fz-tr-{tag}-{i}" for i in range(2)], "bts": [f"fz-bts-{tag}-{i}" for i in range(2)],
           "camera": [f"fz-cam-{tag}-{i}" for i in range(2)]}
    metrics = {"traffic": {"speed_kmh": 42.0, "flow_veh_h": 900}, "bts": {"availability_pct": 99.5, "mains_power": 1},
               "camera": {"fps": 12.0, "bitrate_kbps": 2048}}
    parts = urlsplit(mqtt_url)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"api-fuzz-{tag}")
    client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
    client.loop_start()
    now_ms = int(time.time() * 1000)
    for kind, devices in ids.items():
        for n, dev in enumerate(devices):
            base = f"ioc/v1/{kind}/{dev}"
            for k in range(3):
                doc = {"ts": now_ms - 60_000 * (3 - k), "seq": k, "metrics": metrics[kind],
                       "lat": 20.85 + 0.01 * n, "lon": 106.68 + 0.01 * n}
                client.publish(f"{base}/telemetry", json.dumps(doc), qos=1).wait_for_publish(5)
            client.publish(f"{base}/status", json.dumps({"state": "degraded", "reason": "fuzz seed"}), qos=1)
            client.publish(f"{base}/event", json.dumps({"ts": now_ms, "type": "door_open", "severity": "minor"}), qos=1)
            if kind == "camera":
                client.publish(f"{base}/snapshot", small_jpeg(), qos=1).wait_for_publish(5)
    client.loop_stop()
    client.disconnect()
    everyone = [d for devices in ids.values() for d in devices]

    def stored() -> bool:
        resp = requests.get(f"{server.url}/api/devices", headers=headers, timeout=5)
        return resp.ok and {d["device_id"] for d in _items(resp.json())} >= set(everyone)

    wait_until(stored, 60, 0.5, what="seeded devices stored")
    return ids


class Heartbeat:
    """The seeded devices keep reporting (telemetry every ``every_s``) while the fuzz runs: a run of several
    minutes otherwise leaves all of them quiet at once, which the alert stage rightly reads as a stalled input
    (/readyz 503), and the final check would blame the hostile requests for it."""

    def __init__(self, mqtt_url: str, ids: dict[str, list[str]], every_s: float = 15.0) -> None:
        import threading
        from urllib.parse import urlsplit

        import paho.mqtt.client as mqtt

        parts = urlsplit(mqtt_url)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"api-fuzz-hb-{uuid.uuid4().hex[:6]}")
        self.client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
        self.client.loop_start()
        self.ids, self.every_s, self.stop_event = ids, every_s, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        metrics = {"traffic": {"speed_kmh": 42.0, "flow_veh_h": 900}, "bts": {"availability_pct": 99.5,
                                                                              "mains_power": 1},
                   "camera": {"fps": 12.0, "bitrate_kbps": 2048}}
        seq = 100
        while not self.stop_event.wait(self.every_s):
            seq += 1
            for kind, devices in self.ids.items():
                for dev in devices:
                    doc = {"ts": int(time.time() * 1000), "seq": seq, "metrics": metrics[kind]}
                    self.client.publish(f"ioc/v1/{kind}/{dev}/telemetry", json.dumps(doc), qos=1)

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(5)
        self.client.loop_stop()
        self.client.disconnect()


def _items(doc: Any) -> list[dict[str, Any]]:
    if isinstance(doc, list):
        return doc
    for key in ("items", "devices", "data"):
        if isinstance(doc, dict) and isinstance(doc.get(key), list):
            return list(doc[key])
    return []


def fuzz_operation(op: Any, url: str, session: requests.Session, examples: int, mode: GenerationMode,
                   known: dict[str, list[str]], stats: OpStats) -> None:
    """``examples`` requests of one operation in one generation mode; figures into ``stats``."""
    if examples <= 0 or (mode is GenerationMode.NEGATIVE and not list(op.iter_parameters())
                         and not op.get_request_payload_content_types()):
        return  # nothing a request could violate
    all_ids = [d for devices in known.values() for d in devices]

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck),
              phases=[Phase.explicit, Phase.generate])
    @given(op.as_strategy(generation_mode=mode), st.randoms(use_true_random=False))
    def one(case: Any, rnd: random.Random) -> None:
        params = case.path_parameters or {}
        for name in params:
            if name == "device_id" and rnd.random() < 0.5:
                params[name] = rnd.choice(all_ids)
        if SELF_PROTECT.search(op.path) and any(str(v) in ("1", "api-fuzz") for v in params.values()):
            return  # our own token / user: cutting the fuzzer's access would end the run
        # Sent by requests itself: schemathesis' own transport counts urllib3's pools, which the urllib3-future
        # that niquests (grafana-client) installs does not have. Once more on a dropped connection: a keep-alive
        # connection the server closed as idle is not an answer.
        for attempt in (1, 2):
            try:
                resp = session.request(**case.as_transport_kwargs(base_url=url), timeout=15)
                break
            except requests.ConnectionError as err:
                if attempt == 2:
                    stats.failures.setdefault("transport", (f"{type(err).__name__}: {err}"[:300],
                                                            case.as_curl_command()))
                    return
            except requests.RequestException as err:
                stats.failures.setdefault("transport", (f"{type(err).__name__}: {err}"[:300], case.as_curl_command()))
                return
        stats.examples += 1
        stats.statuses[resp.status_code] += 1
        try:
            case.validate_response(resp, checks=CHECKS)
        except (Failure, FailureGroup) as err:
            failures = list(err.exceptions) if isinstance(err, FailureGroup) else [err]
            for failure in failures:
                key = f"{type(failure).__name__}:{failure.title}"
                if key not in stats.failures:
                    stats.failures[key] = (str(failure)[:600], case.as_curl_command())

    with contextlib.suppress(Unsatisfiable):  # nothing to violate (no parameters, no body): no negative requests
        one()


def known_id(known: dict[str, list[str]]) -> str:
    """A seeded device id (the hostile phase's device pages then have rows)."""
    return next((d for devices in known.values() for d in devices), "api-fuzz-none")


def code_of(key: str) -> str:
    """The schemathesis check behind a failure key (its class name, in snake case as the check is named)."""
    name = key.split(":", 1)[0]
    return {"ServerError": "not_a_server_error", "UndefinedStatusCode": "status_code_conformance",
            "UndefinedContentType": "content_type_conformance", "MalformedMediaType": "content_type_conformance",
            "JsonSchemaError": "response_schema_conformance", "MissingHeaders": "response_headers_conformance",
            "JSONDecodeError": "response_schema_conformance", "MalformedJson": "response_schema_conformance",
            "transport": "transport"}.get(name, name)


def main(argv: list[str] | None = None) -> int:
    """Run the API fuzz and print the figures; 1 on any 5xx or schema-breaking response."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=50, help="schema-conforming requests per operation")
    ap.add_argument("--negative", type=int, default=20, help="schema-violating requests per operation")
    ap.add_argument("--include", default="", help="only operations whose 'METHOD /path' matches this regex")
    ap.add_argument("--log", type=Path, default=None, help="server log (default: a temporary file)")
    ap.add_argument("--no-hostile", action="store_true",
                    help="skip the hostile-value phase (benchmarks/api_hostile.py)")
    args = ap.parse_args(argv)

    dsn, token = asyncio.run(prepare(BASE_DSN))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    log = args.log or Path(tempfile.mkstemp(prefix="api-fuzz-", suffix=".log")[1])
    # the write rate limits would answer most requests 429 and test nothing behind them
    env = ingest_env(dsn, int(MQTT_URL.rsplit(":", 1)[1]), IOC_LOG_LEVEL="WARNING",
                     IOC_AUTH__ACTION_RATE="1000000/minute", IOC_AUTH__LOGIN_RATE="1000000/minute")
    if token:
        env["IOC_TEST_ADMIN_TOKEN"] = token
    server = ServeProcess(env, log)
    started = time.monotonic()
    per_op: dict[str, OpStats] = defaultdict(OpStats)
    hostile_sent, hostile_failures = 0, ["(not run)"]
    heartbeat: Heartbeat | None = None
    try:
        server.start()
        known = seed(MQTT_URL, server, headers)
        heartbeat = Heartbeat(MQTT_URL, known)
        schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", headers=headers)
        session = requests.Session()
        session.headers.update(headers)
        operations, invalid = [], []
        for result in schema.get_all_operations():
            if isinstance(result, Ok):
                operations.append(result.ok())
            else:
                invalid.append(str(result.err()))
        for err in invalid:
            print(f"operation not testable (schema invalid): {err[:300]}", flush=True)
        for op in operations:
            label = f"{op.method.upper()} {op.path}"
            if args.include and not re.search(args.include, label):
                continue
            stats = per_op[label]
            fuzz_operation(op, server.url, session, args.examples, GenerationMode.POSITIVE, known, stats)
            fuzz_operation(op, server.url, session, args.negative, GenerationMode.NEGATIVE, known, stats)
            bad = sorted({code_of(k) for k in stats.failures})
            print(f"{label}: {stats.examples} requests, statuses {dict(sorted(stats.statuses.items()))}"
                  + (f", failing: {', '.join(bad)}" if bad else ""), flush=True)
            if server.proc is None or server.proc.poll() is not None:
                print("the server died; stopping", flush=True)
                break
        if not args.no_hostile and server.proc is not None and server.proc.poll() is None:
            chosen = [op for op in operations
                      if not args.include or re.search(args.include, f"{op.method.upper()} {op.path}")]
            spec = session.get(f"{server.url}/openapi.json").json()
            hostile_sent, hostile_failures = run_hostile(chosen, spec, server.url, session, known_id(known),
                                                         lambda op: bool(SELF_PROTECT.search(op.path)))
            hostile_failures += still_judges(MQTT_URL, server.url, session)
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        server.stop()
        asyncio.run(drop_database(BASE_DSN, dsn))
    took = time.monotonic() - started

    examples = sum(s.examples for s in per_op.values())
    five_xx = sum(n for s in per_op.values() for code, n in s.statuses.items() if code >= 500)
    broken = {(label, key) for label, s in per_op.items() for key in s.failures if code_of(key) in SCHEMA_CODES}
    undeclared = {label for label, s in per_op.items() for key in s.failures
                  if code_of(key) == "status_code_conformance"}
    print(f"\napi_fuzz: {len(per_op)} operations, {examples:,} requests ({args.examples} positive + "
          f"{args.negative} negative per operation asked), {five_xx} answered 5xx, "
          f"{len(broken)} schema violations (operation x check), {len(undeclared)} operations answered a status "
          f"code their schema does not declare; {'authenticated as admin' if token else 'UNAUTHENTICATED'}; "
          f"{took:.0f} s; server log {log}")
    if not args.no_hostile:
        print(f"api_fuzz hostile values: {hostile_sent:,} requests (edge times, NaN/Infinity, integers past 64 bits, "
              f"deep and odd bodies, one field at a time), {len(hostile_failures)} failures (5xx, dropped, or the "
              "alert engine or readiness broken afterwards)")
        for line in hostile_failures[:40]:
            print(f"  {line}")
    for label, s in sorted(per_op.items()):
        for key, (message, curl) in sorted(s.failures.items()):
            if code_of(key) == "status_code_conformance":
                continue
            print(f"\n[{code_of(key)}] {label}\n  {message.strip()[:500]}\n  {curl[:600]}")
    if undeclared:
        print("\nundeclared status codes: " + "; ".join(
            f"{label} {sorted(c for c in per_op[label].statuses if c not in (200, 201, 204, 422))}"
            for label in sorted(undeclared)))
    return 1 if five_xx or broken or (not args.no_hostile and hostile_failures) else 0


if __name__ == "__main__":
    sys.exit(main())
