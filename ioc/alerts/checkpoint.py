"""A step of the alert engine made atomic: the engine's memory as it was before the step, to go back to.

The engine mutates alerts and incidents in place and numbers new ones mid-step, so a step that raises half
way (ids run out, a value it cannot compare) would leave alerts in memory whose changes were never returned:
a retry sees them as existing and stores nothing for them. :func:`checkpoint` records every field of every
held alert and incident and the engine's indexes; :meth:`Checkpoint.restore` puts them back in place (the same
objects, so change sets still waiting for the database keep pointing at them). Ids drawn by the failed step
are not given back: a gap in a sequence is harmless, a reused id is not.
"""

from __future__ import annotations

import gc
from dataclasses import fields
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from ioc.alerts.model import Alert, Incident

if TYPE_CHECKING:
    from ioc.alerts.engine import AlertEngine

_ALERT_FIELDS = tuple(f.name for f in fields(Alert))
_INCIDENT_FIELDS = tuple(f.name for f in fields(Incident))
_alert_values = attrgetter(*_ALERT_FIELDS)
_incident_values = attrgetter(*_INCIDENT_FIELDS)
# Containers of the engine a step changes (each copied one level deep; their values are restored field by field).
_DICTS = ("alerts", "by_key", "_dirty", "_resolving", "pending", "incidents", "resolved")
_SCALARS = ("replayed", "_pruned_at", "next_alert_id", "next_incident_id", "silences", "policies", "shifts")


class Checkpoint:
    """The engine's state at one moment; O(alerts + incidents) to take (a step already walks them all)."""

    __slots__ = ("_alerts", "_dicts", "_engine", "_incidents", "_scalars")

    def __init__(self, engine: AlertEngine) -> None:
        self._engine = engine
        paused = gc.isenabled()
        gc.disable()  # tens of thousands of young tuples: no collection (a full one walks the heap) meanwhile
        try:
            self._dicts = {name: dict(getattr(engine, name)) for name in _DICTS}
            self._scalars = {name: getattr(engine, name) for name in _SCALARS}
            self._alerts = [(a, _alert_values(a)) for a in engine.alerts.values()]
            # an incident's members list and escalation dict are changed in place: their contents are kept too
            self._incidents = [(i, _incident_values(i), list(i.members), dict(i.escalation))
                               for i in engine.incidents.values()]
        finally:
            if paused:
                gc.enable()

    def restore(self) -> None:
        """Put the engine back as it was when this checkpoint was taken."""
        engine = self._engine
        for alert, values in self._alerts:
            _set(alert, _ALERT_FIELDS, values)
        for inc, values, members, esc in self._incidents:
            _set(inc, _INCIDENT_FIELDS, values)
            inc.members[:] = members
            inc.escalation.clear()
            inc.escalation.update(esc)
        for name, saved in self._dicts.items():
            setattr(engine, name, dict(saved))
        for name, value in self._scalars.items():
            setattr(engine, name, value)
        # the per-device index, rebuilt from the alerts held (it is only appended to and pruned of forgotten ids)
        engine._by_device = {}
        for alert in engine.alerts.values():
            engine._index(alert)


def _set(obj: Any, names: tuple[str, ...], values: tuple[Any, ...]) -> None:
    for name, value in zip(names, values, strict=True):
        setattr(obj, name, value)


def checkpoint(engine: AlertEngine) -> Checkpoint:
    """The engine's state now, to :meth:`~Checkpoint.restore` if the step that follows raises."""
    return Checkpoint(engine)
