"""The cluster measured with real processes: ``python -m benchmarks.cluster_run [--kills 6] [--analytics-minutes 10]``.

Part 1, failover. Two ``ioc serve --role brain`` candidates, two ``--role api`` replicas and two ``ioc ingest``
workers run against a fresh database and a private Mosquitto (``--mqtt-port`` for another broker), under a steady
telemetry stream (5 devices, 20 messages/s, QoS 1) and with a webhook receiver in this process. Each round: a device
raises an alarm (an incident opens and pages), the leader is SIGKILLed, a second device raises an alarm while no
brain runs, the first device repeats its alarm; then the standby takes over. The killed candidate is started again
as the new standby. Printed: failover time (SIGKILL -> lease taken by the standby, and -> the alarm raised during
the failover is an incident), incidents opened per device (duplicates), pages per incident (outbox rows and
deliveries at the receiver, by notification id), alarms never analysed, readings acknowledged by the broker but not
stored, and how long an officer's resolve sent to one API replica takes to be applied by the leader and to reach a
screen on the other replica.

Part 2, numeric analytics on K partitioned workers (NATS JetStream at 127.0.0.1:4222), K=1 against K=2 in
the same run: ``benchmarks.analytics_scale``'s workload (the simulator's province, ``--analytics-minutes`` of
it, put on a fresh stream and drained by K ``ioc analytics-worker`` processes from a fresh database).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import orjson
import websockets

from benchmarks import analytics_scale
from ioc.cluster.brain import ACK_AFTER_S
from tests.conftest import BASE_DSN, create_database, drop_database, ingest_env
from tests.support.auth import make_token_sync
from tests.support.cluster import (
    RoleProcess,
    TelemetryStream,
    WebhookReceiver,
    cluster_env,
    db_fetch,
    lease,
    unique_lease,
    wait_for,
)
from tests.support.mqtt import Publisher, iso, unique_id
from tests.support.services import IngestProcess, private_mosquitto


def _alarm(pub: Publisher, device: str) -> None:
    pub.publish(f"ioc/v1/bts/{device}/event", {"ts": iso(time.time()), "type": "mains_power_lost",
                                               "severity": "major", "detail": {}})
    pub.wait_all()


def _incidents(dsn: str, device: str) -> list[int]:
    """Incidents the device's alerts belong to or ever belonged to (the audit trail keeps an alert that moved)."""
    return sorted({r["incident_id"] for r in db_fetch(
        dsn, "SELECT incident_id FROM alerts WHERE device_id = $1 UNION SELECT e.incident_id FROM alert_events e "
        "JOIN alerts a ON a.id = e.alert_id WHERE a.device_id = $1", device) if r["incident_id"] is not None})


async def _resolve_and_watch(api: RoleProcess, screen: RoleProcess, incident: int) -> tuple[float, float]:
    """Resolve through ``api``; (seconds until it answered, seconds until ``screen``'s WebSocket showed it)."""
    url = f"ws://127.0.0.1:{screen.port}/ws/live"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {screen.token}"}) as ws:
        await asyncio.wait_for(ws.recv(), 10)  # the snapshot
        sent = time.monotonic()
        answered: list[float] = []

        def resolve() -> tuple[int, object]:
            out = api.request("POST", f"/api/incidents/{incident}/resolve", {"note": "cluster_run"})
            answered.append(time.monotonic() - sent)
            return out

        request = asyncio.create_task(asyncio.to_thread(resolve))
        seen = None
        while seen is None and time.monotonic() - sent < 15:
            frames = orjson.loads(await asyncio.wait_for(ws.recv(), 15))
            for frame in frames if isinstance(frames, list) else [frames]:
                body = frame.get("incident") if isinstance(frame, dict) else None
                if body and body.get("id") == incident and body.get("state") in ("resolved", "closed"):
                    seen = time.monotonic() - sent
        status, doc = await request
        assert status == 200, (status, doc)
    if seen is None:
        raise TimeoutError("the resolve never reached the other replica's screen")
    return answered[0], seen


def run(kills: int, mqtt_port: int, logs: Path) -> None:
    dsn = asyncio.run(create_database(BASE_DSN))
    name = unique_lease()
    hook = WebhookReceiver().__enter__()
    # Each round's incident is resolved by an officer (through the API replica) and closes at once, so the next
    # round opens a new one and pages can be counted per incident.
    env = cluster_env(dsn, mqtt_port, name, IOC_ALERTS__NOTIFY__WEBHOOK_URLS=f'["{hook.url}"]',
                      IOC_ANALYTICS__ENABLED="false", IOC_ALERTS__REOPEN_WITHIN_S="0", IOC_ALERTS__CLOSE_AFTER_S="0")
    token = make_token_sync(dsn, "admin", "cluster-run")
    brains = [RoleProcess(env, "brain", logs / f"brain-{i}.log", token) for i in range(2)]
    api = RoleProcess(env, "api", logs / "api.log", token)
    screen = RoleProcess(env, "api", logs / "api-screen.log", token)
    ienv = ingest_env(dsn, mqtt_port)
    workers = [IngestProcess(ienv, f"cluster-run-{uuid.uuid4().hex[:6]}-{i}", logs / f"ingest-{i}.log")
               for i in range(2)]
    stream = TelemetryStream(mqtt_port, unique_id("crun"))
    pub = Publisher(mqtt_port)
    failovers: list[float] = []
    analysed: list[float] = []
    actions: list[float] = []
    screens: list[float] = []
    devices: list[str] = []
    try:
        for w in workers:
            w.start()
        for p in (*brains, api, screen):
            p.start(wait=False)
        for p in (*brains, api, screen):
            wait_for(p._up, 90, what="process up")
        stream.__enter__()
        for round_no in range(kills):
            row = wait_for(lambda: (r := lease(dsn, name))["valid"] and r, 30, what="a leader")
            epoch, holder = int(row["epoch"]), row["holder"]
            lead = next(b for b in brains if b.proc is not None and b.pid == int(holder.rsplit("-", 2)[1]))
            first, during = unique_id("bts"), unique_id("bts")
            devices += [first, during]
            _alarm(pub, first)
            wait_for(lambda first=first: _incidents(dsn, first), 30, what="the incident")
            wait_for(lambda first=first: db_fetch(dsn, "SELECT 1 FROM notifications n JOIN alerts a ON "
                                                  "a.incident_id = n.incident_id WHERE a.device_id = $1", first),
                     15, what="its page")
            lead.kill()
            killed = time.monotonic()
            _alarm(pub, during)
            _alarm(pub, first)
            wait_for(lambda epoch=epoch: (r := lease(dsn, name))["valid"] and r["epoch"] > epoch, 60, 0.05,
                     what="takeover")
            failovers.append(time.monotonic() - killed)
            wait_for(lambda during=during: _incidents(dsn, during), 60, 0.05, what="the alarm raised during failover")
            analysed.append(time.monotonic() - killed)
            print(f"round {round_no + 1}: lease taken {failovers[-1]:.1f} s after SIGKILL, the alarm raised "
                  f"meanwhile is an incident after {analysed[-1]:.1f} s", flush=True)
            # The repeated alarm may come a tick after the one raised during the failover: let the leader apply it
            # before the officer resolves, else it is (rightly) a new incident, not a duplicate made by failover.
            time.sleep(2)
            incident = _incidents(dsn, first)[0]
            applied, seen = asyncio.run(_resolve_and_watch(api, screen, incident))
            actions.append(applied)
            screens.append(seen)
            lead.start(wait=True)  # back as the standby
            # The new leader acks what it got ACK_AFTER_S after it got it; killing it sooner than that (two failovers
            # within seconds) hands the same messages to the next leader again: at least once, by design.
            time.sleep(max(0.0, ACK_AFTER_S + 1.5 - (time.monotonic() - killed - failovers[-1])))
        time.sleep(3)  # the last leader ticks over the repeated alarms
        stream.__exit__()
        with contextlib.suppress(TimeoutError):
            wait_for(lambda: stream.stored(dsn)["n"] >= stream.acked, 60, 0.5, what="the stream stored")
        stored = stream.stored(dsn)
        per_device = {d: _incidents(dsn, d) for d in devices}
        lost = [d for d, inc in per_device.items() if not inc]
        duplicated = [d for d, inc in per_device.items() if len(inc) > 1]
        for d in duplicated:
            for r in db_fetch(dsn, "SELECT a.id, a.incident_id, a.state, a.started_at, a.resolved_at, e.action, e.ts, "
                              "e.actor FROM alerts a LEFT JOIN alert_events e ON e.alert_id = a.id "
                              "WHERE a.device_id = $1 ORDER BY e.ts", d):
                print("  duplicate:", d, dict(r))
        pages = db_fetch(dsn, "SELECT incident_id, reason, target, count(*) AS n FROM notifications "
                         "GROUP BY incident_id, reason, target")
        incidents = {i for inc in per_device.values() for i in inc}
        firing = [p for p in pages if p["reason"] == "firing" and p["incident_id"] in incidents]
        # A page claimed by a leader that was then killed waits out the claim's lease (IOC_ALERTS__NOTIFY__LEASE_S,
        # 120 s) before the next leader sends it: wait that long, and say how long it took.
        waited = time.monotonic()
        with contextlib.suppress(TimeoutError):
            wait_for(lambda: {i for _, r, i in hook.deliveries if r == "firing"} >= incidents, 150, 0.5,
                     what="the pages delivered")
        waited = time.monotonic() - waited
        delivered = {(i, r): {nid for nid, r2, i2 in hook.deliveries if (i2, r2) == (i, r)}
                     for _, r, i in hook.deliveries if i in incidents}
        redelivered = len(hook.deliveries) - len({nid for nid, _, _ in hook.deliveries})
        others = db_fetch(dsn, "SELECT i.id, i.title, n.reason FROM incidents i LEFT JOIN notifications n ON "
                          "n.incident_id = i.id WHERE NOT i.id = ANY($1) ORDER BY i.id", sorted(incidents))
        outcomes = db_fetch(dsn, "SELECT reason, status, coalesce(last_error, '') AS why, count(*) AS n "
                            "FROM notifications GROUP BY 1, 2, 3 ORDER BY 1, 2")
        print()
        ttl = env.get("IOC_CLUSTER__LEASE_TTL_S", "8 (default)")
        print(f"brain failover over {kills} SIGKILLs of the leader (lease TTL {ttl} s)")
        print(f"  SIGKILL -> standby holds the lease: p50 {statistics.median(failovers):.1f} s, "
              f"max {max(failovers):.1f} s")
        print(f"  SIGKILL -> alarm raised during the failover is an incident: p50 {statistics.median(analysed):.1f} s, "
              f"max {max(analysed):.1f} s")
        print(f"  alarms: {len(devices)}, never analysed: {len(lost)}, devices with a duplicate incident: "
              f"{len(duplicated)}")
        print(f"  incidents: {len(incidents)}, firing pages per incident and target: "
              f"{len(firing) / max(1, len(incidents)):.2f} (max {max((p['n'] for p in pages), default=0)} "
              f"rows for one incident, reason and target)")
        firing_ids = sum(len(v) for k, v in delivered.items() if k[1] == "firing")
        print(f"  pages at the webhook receiver: {firing_ids / max(1, len(incidents)):.2f} "
              f"firing pages per incident; (incident, reason) pairs with two notification ids: "
              f"{sum(1 for v in delivered.values() if len(v) > 1)}; deliveries repeated under the same id "
              f"(at least once, receivers dedupe): {redelivered}; the last page arrived {waited:.0f} s after the "
              "last round")
        print(f"  incidents not opened by the rounds' alarms: {len({o['id'] for o in others})}"
              + "".join(f"\n    #{o['id']} {o['title']} (page: {o['reason']})" for o in others))
        for o in {o["id"]: o for o in others}:
            for e in db_fetch(dsn, "SELECT e.ts, e.alert_id, e.action, e.actor, a.device_id, a.incident_id FROM "
                              "alert_events e LEFT JOIN alerts a ON a.id = e.alert_id WHERE e.incident_id = $1 "
                              "ORDER BY e.ts", o):
                print(f"      {dict(e)}")
        print("  outbox: " + "; ".join(f"{o['reason']} {o['status']}" + (f" ({o['why'][:60]})" if o["why"] else "")
                                     + f": {o['n']}" for o in outcomes))
        print(f"  readings: {stream.acked} acknowledged by the broker, {stored['n']} rows stored, "
              f"{stored['n'] - stored['d']} duplicate rows, lost: {max(0, stream.acked - stored['d'])}")
        print(f"  officer's resolve sent to the API replica, applied by the leader: p50 "
              f"{statistics.median(actions) * 1000:.0f} ms, max {max(actions) * 1000:.0f} ms; on a screen of the "
              f"other replica: p50 {statistics.median(screens) * 1000:.0f} ms, max {max(screens) * 1000:.0f} ms")
    finally:
        stream.stop.set()
        pub.close()
        for p in (*brains, api, screen):
            p.stop()
        for w in workers:
            w.stop()
        hook.__exit__()
        asyncio.run(drop_database(BASE_DSN, dsn))


def run_analytics(minutes: int, partitions: int, logs: Path) -> None:
    """K=1 then K=2 analytics workers draining the same province stream (benchmarks.analytics_scale)."""
    t = time.perf_counter()
    flushes, _ = analytics_scale.province_rows(minutes, "province")
    total = sum(len(f) for f in flushes)
    realtime = total / (minutes * 60)
    print(f"\nnumeric analytics on K partitioned workers: {total:,} readings ({minutes} simulated minutes of the "
          f"province, {realtime:,.0f} readings/s in real time), generated in {time.perf_counter() - t:.0f} s")
    rates: dict[int, float] = {}
    for k in (1, 2):
        stream = f"CRUN{uuid.uuid4().hex[:8]}"
        n = asyncio.run(analytics_scale.fill(stream, partitions, flushes))
        try:
            rates[k] = analytics_scale.run_k(k, stream, partitions, n, logs)
        finally:
            asyncio.run(analytics_scale.drop_stream(stream))
        print(f"  K={k}: {rates[k]:,.0f} readings/s = {rates[k] / realtime:,.1f}x the province's real-time rate",
              flush=True)
    print(f"  K=2 / K=1 = {rates[2] / rates[1]:.2f} (2 cores shared with the stream server and PostgreSQL)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=6, help="leader SIGKILLs (default 6)")
    parser.add_argument("--mqtt-port", type=int, default=int(os.environ.get("IOC_BENCH_MQTT_PORT", "0")),
                        help="broker port; 0 (default) starts a private Mosquitto, so that alarms other programs "
                        "publish on a shared broker are not counted as this run's incidents")
    parser.add_argument("--logs", type=Path, help="folder for the processes' logs (default: a temporary one)")
    parser.add_argument("--analytics-minutes", type=int, default=10,
                        help="simulated minutes of the province for the K=1 / K=2 analytics part (0 skips it)")
    parser.add_argument("--partitions", type=int, default=32, help="stream partitions for the analytics part")
    args = parser.parse_args()
    logs = args.logs or Path(tempfile.mkdtemp(prefix="cluster-run-"))
    logs.mkdir(parents=True, exist_ok=True)
    print(f"logs in {logs}; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if args.kills:
        with contextlib.ExitStack() as stack:
            port = args.mqtt_port or stack.enter_context(private_mosquitto())
            run(args.kills, port, logs)
    if args.analytics_minutes:
        run_analytics(args.analytics_minutes, args.partitions, logs)
    print(f"load average at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
