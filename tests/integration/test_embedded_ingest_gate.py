"""The embedded worker's ack gate follows the brain's stages: tied while they run, untied once they are gone.

No I/O (the stages are built without a database); it sits beside test_embedded_ingest_acks.py, which runs the
same wiring on Mosquitto and PostgreSQL.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from ioc.alerts.config import AlertsConfig
from ioc.alerts.stage import AlertStage
from ioc.analytics_stage import AnalyticsStage
from ioc.cluster.embedded import EmbeddedGate
from ioc.geo import City
from ioc.live.hub import LiveHub

pytestmark = pytest.mark.integration


def stages() -> tuple[AnalyticsStage, AlertStage]:
    city = City.load()
    hub = LiveHub(city.district_of)
    return AnalyticsStage(hub, None, camera_processes=0), AlertStage(hub, None, city, AlertsConfig())


def test_the_gate_is_tied_to_the_leading_brains_stages_and_untied_when_they_stop() -> None:
    brain: Any = SimpleNamespace(analytics=None, alerts=None, lease=SimpleNamespace(stopping=False, elsewhere=False))
    gate = EmbeddedGate(brain, 100)
    gate.received(False)
    assert gate.settled() == 1 and gate.lost() is None and not gate.hold()  # standby: acks after the commit

    analytics, alerts = brain.analytics, brain.alerts = stages()  # the brain takes the lease
    gate.received(True)  # the next message ties the gate before the stages see it
    assert analytics.redelivered() and analytics.position() == 2 and alerts.held_acks
    assert gate.settled() == 0  # nothing stored by the new stages yet
    analytics.handed = 2
    assert alerts.position() == 2
    alerts.stored_seq = 2
    assert gate.settled() == 2
    gate.received(False)
    assert not analytics.redelivered()
    alerts.lost_after = 2  # a signal dropped at the bound: held for redelivery
    assert gate.lost() == 2 and gate.hold()
    gate.redelivering()
    assert alerts.lost_after is None

    alerts.stored_seq = gate.seq
    again = stages()  # a new epoch: new stages, tied afresh (the old ones had stored everything)
    brain.analytics, brain.alerts = again
    gate.sync()
    assert again[0].position() == gate.seq and gate.settled() == 0 and again[1].lost_after is None

    again[0].handed = again[1].stored_seq = gate.seq  # they store what came so far
    gate.received(False)  # handed to the stages, not stored: the lease lost under them
    brain.analytics = brain.alerts = None
    gate.sync()
    assert gate.settled() == gate.seq - 1  # held for this process's next stages (test_ha_redteam.py)
    brain.lease.elsewhere = True  # another process leads: it never reads this worker's messages
    gate.sync()
    assert gate.settled() == gate.seq and gate.lost() is None and not gate.hold() and gate.has_room()

    brain.lease.elsewhere, brain.lease.stopping = False, True
    brain.analytics, brain.alerts = stages()
    gate.received(False)
    brain.analytics = brain.alerts = None  # a clean stop: the acks follow the commit again
    gate.sync()
    assert gate.settled() == gate.seq and gate.lost() is None and not gate.hold()


def test_the_window_halves_at_a_redelivery_and_doubles_back_as_it_is_stored() -> None:
    brain: Any = SimpleNamespace(analytics=None, alerts=None, lease=SimpleNamespace(stopping=False, elsewhere=False))
    gate = EmbeddedGate(brain, 100)
    for _ in range(40):
        gate.received(False)
    gate.narrowed(40)
    assert gate.window == 20 and gate.redeliveries == 1
    gate.widen()  # settled: everything (no stage), past the mark only once more came in and was stored
    assert gate.window == 20
    for _ in range(20):
        gate.received(False)
    gate.widen()
    assert gate.window == 40
