"""A step of the alert engine made atomic: the engine's memory as it was before the step, to go back to.

The engine mutates alerts and incidents in place and numbers new ones mid-step, so a step that raises half
way (ids run out, a value it cannot compare) would leave alerts in memory whose changes were never returned:
a retry sees them as existing and stores nothing for them. A :class:`Checkpoint` copies the engine's indexes
(one level deep) and each incident's members and escalation, and, while it is open, notes the fields of each
alert and incident before its first assignment (:class:`ioc.alerts.model.Undo`): a step pays for what it
changes, not for every alert held. :meth:`Checkpoint.restore` puts them back in place (the same objects, so
change sets still waiting for the database keep pointing at them). Ids drawn by the failed step are not given
back: a gap in a sequence is harmless, a reused id is not.

An officer's action changes one incident and its members, so its checkpoint (``scope``) keeps the in-place contents
of those incidents only, and of any incident the action assigns a field of (noted on that first change): the
indexes are still copied (a dict copy is cheap; it was the per-incident copies that cost a step 40-200 ms with
20,000 incidents held).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from ioc.alerts.model import Alert, Incident, Undo

if TYPE_CHECKING:
    from ioc.alerts.engine import AlertEngine

_FIELDS = {cls: tuple(f.name for f in fields(cls)) for cls in (Alert, Incident)}
_VALUES = {cls: attrgetter(*names) for cls, names in _FIELDS.items()}
# Containers of the engine a step changes (each copied one level deep; their values are restored field by field).
_DICTS = ("alerts", "by_key", "_dirty", "_resolving", "pending", "incidents", "resolved")
_SCALARS = ("replayed", "_pruned_at", "next_alert_id", "next_incident_id", "silences", "policies", "shifts")


def _save(record: Any) -> tuple[Any, tuple[Any, ...] | None]:
    try:
        return record, _VALUES[type(record)](record)
    except AttributeError:  # being built by this step: it goes with the containers
        return record, None


def _save_whole(record: Any) -> tuple[Any, tuple[Any, ...] | None]:
    """:func:`_save`, and an incident's members and escalation as they are (a scoped checkpoint did not copy
    them up front): a change in place after its first assignment is undone too."""
    saved = _save(record)
    if saved[1] is not None and type(record) is Incident:
        return record, (*saved[1], list(record.members), dict(record.escalation))
    return saved


class Checkpoint:
    """The engine before a step; open (noting first changes) until :meth:`close` or :meth:`restore`."""

    __slots__ = ("_dicts", "_engine", "_incidents", "_log", "_scalars")

    def __init__(self, engine: AlertEngine, scope: Iterable[Incident] | None = None) -> None:
        if Undo.log is not None:
            raise RuntimeError("an engine checkpoint is already open")
        self._engine = engine
        self._dicts = {name: dict(getattr(engine, name)) for name in _DICTS}
        self._scalars = {name: getattr(engine, name) for name in _SCALARS}
        # an incident's members list and escalation dict are changed in place: their contents are kept here
        kept = engine.incidents.values() if scope is None else {id(i): i for i in scope}.values()
        self._incidents = [(i, list(i.members), dict(i.escalation)) for i in kept]
        self._log: dict[int, tuple[Any, Any]] = {}
        Undo.log, Undo.save = self._log, _save if scope is None else _save_whole

    def close(self) -> None:
        """The step went through: stop noting changes."""
        if Undo.log is self._log:
            Undo.log = None

    def restore(self) -> None:
        """Put the engine back as it was when this checkpoint was taken (and close it)."""
        self.close()
        engine = self._engine
        for record, values in self._log.values():
            if values is not None:
                names = _FIELDS[type(record)]
                for name, value in zip(names, values[:len(names)], strict=True):
                    object.__setattr__(record, name, value)
                if len(values) > len(names):  # a scoped checkpoint's incident: its members and escalation
                    record.members[:], escalated = values[len(names)], values[len(names) + 1]
                    record.escalation.clear()
                    record.escalation.update(escalated)
        for inc, members, esc in self._incidents:
            inc.members[:] = members
            inc.escalation.clear()
            inc.escalation.update(esc)
        same_alerts = engine.alerts.keys() == self._dicts["alerts"].keys()
        for name, saved in self._dicts.items():
            setattr(engine, name, dict(saved))
        for name, value in self._scalars.items():
            setattr(engine, name, value)
        if same_alerts:  # no alert added nor forgotten: the per-device index holds what it held (an action refused)
            return
        # the per-device index, rebuilt from the alerts held (it is only appended to and pruned of forgotten ids)
        engine._by_device = {}
        for alert in engine.alerts.values():
            engine._index(alert)


def checkpoint(engine: AlertEngine, scope: Iterable[Incident] | None = None) -> Checkpoint:
    """The engine's state now, to :meth:`~Checkpoint.restore` if the step that follows raises (else close it).

    ``scope``: the incidents an officer's action works on (None: a step, which may change any incident).
    """
    return Checkpoint(engine, scope)
