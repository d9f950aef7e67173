"""Failover of the brain, measured with real processes: ``python -m benchmarks.cluster_run [--kills 6]``.

Two ``ioc serve --role brain`` candidates and two ``--role api`` replicas run against a fresh database and the
broker. Each round: a device raises an alarm (an incident opens and pages), the leader is SIGKILLed, a second
device raises an alarm while no brain runs, the first device repeats its alarm; then the standby takes over.
The killed candidate is started again as the new standby. Printed: failover time (SIGKILL -> lease taken
by the standby, and -> the alarm raised during the failover is an incident), incidents opened per device
(duplicates), pages per incident and target (duplicates), alarms never analysed, and how long an officer's
resolve sent to one API replica takes to be applied by the leader and to reach a screen on the other replica.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import orjson
import websockets

from ioc.cluster.brain import ACK_AFTER_S
from tests.conftest import BASE_DSN, create_database, drop_database
from tests.support.auth import make_token_sync
from tests.support.cluster import RoleProcess, cluster_env, db_fetch, lease, unique_lease, wait_for
from tests.support.mqtt import Publisher, iso, unique_id

HOOK = "http://127.0.0.1:9/cluster-run"


def _alarm(pub: Publisher, device: str) -> None:
    pub.publish(f"ioc/v1/bts/{device}/event", {"ts": iso(time.time()), "type": "mains_power_lost",
                                               "severity": "major", "detail": {}})
    pub.wait_all()


def _incidents(dsn: str, device: str) -> list[int]:
    return sorted({r["incident_id"] for r in db_fetch(dsn, "SELECT incident_id FROM alerts WHERE device_id = $1",
                                                       device) if r["incident_id"] is not None})


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
    # Each round's incident is resolved by an officer (through the API replica) and closes at once, so the next
    # round opens a new one and pages can be counted per incident.
    env = cluster_env(dsn, mqtt_port, name, IOC_ALERTS__NOTIFY__WEBHOOK_URLS=f'["{HOOK}"]',
                      IOC_ANALYTICS__ENABLED="false", IOC_ALERTS__REOPEN_WITHIN_S="0", IOC_ALERTS__CLOSE_AFTER_S="0")
    token = make_token_sync(dsn, "admin", "cluster-run")
    brains = [RoleProcess(env, "brain", logs / f"brain-{i}.log", token) for i in range(2)]
    api = RoleProcess(env, "api", logs / "api.log", token)
    screen = RoleProcess(env, "api", logs / "api-screen.log", token)
    pub = Publisher(mqtt_port)
    failovers: list[float] = []
    analysed: list[float] = []
    actions: list[float] = []
    screens: list[float] = []
    devices: list[str] = []
    try:
        for p in (*brains, api, screen):
            p.start(wait=False)
        for p in (*brains, api, screen):
            wait_for(p._up, 90, what="process up")
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
        firing = [p for p in pages if p["reason"] == "firing"]
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
        print(f"  officer's resolve sent to the API replica, applied by the leader: p50 "
              f"{statistics.median(actions) * 1000:.0f} ms, max {max(actions) * 1000:.0f} ms; on a screen of the "
              f"other replica: p50 {statistics.median(screens) * 1000:.0f} ms, max {max(screens) * 1000:.0f} ms")
    finally:
        pub.close()
        for p in (*brains, api, screen):
            p.stop()
        asyncio.run(drop_database(BASE_DSN, dsn))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=6, help="leader SIGKILLs (default 6)")
    parser.add_argument("--mqtt-port", type=int, default=int(os.environ.get("IOC_BENCH_MQTT_PORT", "1883")))
    parser.add_argument("--logs", type=Path, help="folder for the processes' logs (default: a temporary one)")
    args = parser.parse_args()
    logs = args.logs or Path(tempfile.mkdtemp(prefix="cluster-run-"))
    logs.mkdir(parents=True, exist_ok=True)
    print(f"logs in {logs}")
    run(args.kills, args.mqtt_port, logs)


if __name__ == "__main__":
    main()
