"""A screen's control frames (answers, notices, snapshots) are counted, so the server can stop reading a screen
that does not read its answers (tests/integration/test_hostile_ws_flood.py drives it through a real server)."""

from __future__ import annotations

from ioc.live.client import MAX_CONTROL_BYTES
from ioc.live.filters import Subscription
from ioc.live.hub import LiveHub


def test_control_frames_are_counted_until_taken() -> None:
    hub = LiveHub()
    client = hub.attach(Subscription())
    hub.take_messages(client)  # the snapshot
    assert client.control_bytes == 0 and not client.control_full
    pong = '{"type":"pong","seq":0}'
    for _ in range(MAX_CONTROL_BYTES // len(pong) + 1):
        client.push_control(pong)
    assert client.control_full
    while client.queue:
        hub.take_messages(client)
    assert client.control_bytes == 0 and not client.control_full


def test_a_new_subscription_or_a_catch_up_empties_the_count() -> None:
    hub = LiveHub()
    client = hub.attach(Subscription())
    client.push_control("x" * (MAX_CONTROL_BYTES + 1))
    hub.resubscribe(client, Subscription(kinds=frozenset({"bts"})))
    snapshot = client.queue[0]
    assert isinstance(snapshot, str) and client.control_bytes == len(snapshot)  # the new snapshot only
    client.lagging = True
    client.push_control("y" * 10)
    hub.take_messages(client)
    assert client.control_bytes == 0


def test_no_heartbeat_is_queued_for_a_screen_that_does_not_read() -> None:
    import asyncio

    async def run() -> int:
        hub = LiveHub(heartbeat_s=0.0)
        client = hub.attach(Subscription())
        client.push_control("x" * (MAX_CONTROL_BYTES + 1))
        queued = len(client.queue)
        beat = asyncio.create_task(hub.heartbeat_loop())
        await asyncio.sleep(0.2)
        beat.cancel()
        return len(client.queue) - queued

    assert asyncio.run(run()) == 0
