"""How the alert stage steps its engine: all or nothing, and never at the cost of a signal.

A step that raises half way (the reserved ids run out, a value the engine cannot compare) would leave alerts in
memory whose changes were never returned: a retry sees them as existing and stores nothing, yet the messages
behind them are acked. So each step is undone when it raises (:mod:`ioc.alerts.checkpoint`), its signals stay
queued and the acked position does not pass them; signals that no step can apply are set aside with their error
(table ``set_aside``) before their input is acked.

Officers' actions and silence changes are all or nothing the same way (:meth:`Stepping._apply_action`): one that
raises half way is undone, so memory never holds a change that is not on its way to the database.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter

from ingest.metrics import HANDLER_ERRORS
from ioc.alerts import rules
from ioc.alerts.checkpoint import checkpoint
from ioc.alerts.config import AlertsConfig
from ioc.alerts.engine import AlertEngine
from ioc.alerts.liveness import Liveness
from ioc.alerts.model import ActionUndone, AlertError, Changes, Incident, Signal
from ioc.alerts.silences import Silence
from ioc.cluster.ids import IdsExhausted
from storage.set_aside import set_aside

logger = logging.getLogger("ioc.alerts.stage")

SIGNALS_SET_ASIDE = Counter("ioc_alert_signals_set_aside", "Alert signals no engine step could apply (set aside)")


class Stepping:
    """The stepping half of :class:`ioc.alerts.stage.AlertStage` (which holds these attributes)."""

    engine: AlertEngine
    liveness: Liveness
    config: AlertsConfig
    pool: Any
    guard: Callable[[Any, Changes], Awaitable[None]] | None
    since: datetime | None
    position: Callable[[], int]
    step_failing: tuple[datetime, str] | None
    _signals: list[Signal]
    _unsaved: Changes
    _refused: list[tuple[Signal, str]]
    _step_seq: int
    _stalled: bool
    _quiet: int
    _live_devices: set[str]
    _info: Callable[[str], tuple[str | None, str | None, float | None, float | None]]
    view_of: Callable[[Incident], dict[str, Any]]

    def _step_safely(self, now: datetime) -> None:
        """One tick's :meth:`step`; never raises, never loses a signal.

        A step is all or nothing (:meth:`_apply`): one that raises leaves the engine as it was and its signals
        queued, and the acked position does not advance past them. Ids run out: they wait for the next tick's
        reservation. Anything else: :meth:`_step_apart` applies what can be applied and sets aside (with the
        error, for admins) each signal that cannot; if even the timers alone raise, the engine itself is at fault
        (e.g. a stored silence it cannot compare): every signal waits, unacked, and health says so.
        """
        try:
            self.step(now)
        except IdsExhausted:
            return  # a burst of new alerts outran the ids reserved for it: all wait for the next tick
        except Exception as err:
            HANDLER_ERRORS.labels("alerts").inc()
            if self.step_failing is None:
                self.step_failing = (now, f"{type(err).__name__}: {err}"[:200])
                logger.exception("alert engine step raised; undone, its signals are applied one part at a time")
            self._step_apart(now)
            return
        self.step_failing = None

    def _step_apart(self, now: datetime) -> None:
        """After a step raised: timers alone, then the signals in halves down to the single ones that raise."""
        seq, signals, self._signals = self.position(), self._signals, []
        try:
            ch = self._apply([], now)
        except Exception:  # the engine fails without any input: the input is not at fault and waits
            self._signals = signals + self._signals
            return
        held: list[Signal] = []
        parts = [signals]
        while parts:
            part = parts.pop()
            try:
                ch.merge(self._apply(part, now))
            except IdsExhausted:
                held += part
            except Exception as err:
                if len(part) > 1:
                    parts += [part[len(part) // 2:], part[:len(part) // 2]]  # first half next: order kept
                    continue
                SIGNALS_SET_ASIDE.inc()
                logger.error("alert signal set aside: %s (%s: %s)", part[0].key, type(err).__name__, err)
                self._refused.append((part[0], f"{type(err).__name__}: {err}"))
        self._unsaved.merge(ch)
        self._signals = held + self._signals
        if not held:  # else the position stays: the held signals are covered by a later step
            self._step_seq = seq

    def step(self, now: datetime, store: bool = True) -> Changes:
        """Apply the signals collected so far and advance the engine's timers to ``now``, all or nothing.

        What changed is also kept for the next :meth:`flush` (unless ``store`` is false). If it raises, the
        engine is as before and the signals are queued again. :meth:`run` calls this once per tick with the wall
        clock; replays call it with simulated time.
        """
        seq = self.position()  # before any await: exactly the signals taken below
        signals, self._signals = self._signals, []
        try:
            ch = self._apply(signals, now)
        except BaseException:
            self._signals = signals + self._signals
            raise
        if store:
            self._step_seq = seq
            self._unsaved.merge(ch)
        return ch

    def _apply(self, signals: list[Signal], now: datetime) -> Changes:
        """Signals, silences found and timers through the engine; if it raises, engine and liveness are undone."""
        stalled, quiet, overdue = self._stalled, self._quiet, []
        saved = checkpoint(self.engine)
        try:
            overdue = self.liveness.overdue(now, self.since)
            if len(overdue) > max(5, self.config.stalled_share * len(self.liveness.devices)):
                # Most of the city fell quiet at once: that is our input stalling (ingest backlog, broker
                # link), not the devices. Judge them again once messages flow.
                self.liveness.unmark(d for d, _, _ in overdue)
                self._quiet = len(overdue)
                if not self._stalled:
                    logger.warning("input stalled: %d of %d devices quiet at once; silence alerts held back",
                                   len(overdue), len(self.liveness.devices))
                self._stalled = True
            else:
                self._stalled = False
                signals = signals + [rules.silent(d, late, usual, now, self._info) for d, late, usual in overdue]
            ch = self.engine.observe(signals, now) if signals else Changes()
            ch.merge(self.engine.tick(now))
        except BaseException:
            saved.restore()
            self.liveness.unmark(d for d, _, _ in overdue)  # found silent again by the retry
            self._stalled, self._quiet = stalled, quiet
            raise
        saved.close()
        self._live_devices = {a.device_id for a in self.engine.by_key.values() if a.device_id}
        return ch

    def _action(self, action: str, incident_id: int, actor: str, note: str | None,
                assignee: str | None) -> Callable[[datetime], Changes]:
        """The engine call an action makes, given the time (unknown action: ValueError, before anything)."""
        engine = self.engine
        calls: dict[str, Callable[[datetime], Changes]] = {
            "ack": lambda now: engine.acknowledge(incident_id, actor, note, now),
            "assign": lambda now: engine.assign(incident_id, assignee, actor, now),
            "comment": lambda now: engine.comment(incident_id, actor, note or "", now),
            "resolve": lambda now: engine.resolve(incident_id, actor, note, now),
            "close": lambda now: engine.close(incident_id, actor, note, now)}
        if action not in calls:
            raise ValueError(f"unknown action {action!r}")
        return calls[action]

    def _apply_action(self, apply: Callable[[datetime], Changes], incident_id: int, action_id: int | None,
                      epoch: int | None) -> Incident:
        """Apply an action to the engine, all or nothing (under ``_lock``): its changes join ``_unsaved``.

        The single point every action goes through: a checkpoint of the incident, its members' incidents and the
        engine's indexes (:mod:`ioc.alerts.checkpoint`) is restored if anything raises before its changes are
        kept, so memory never holds a change that is not on its way to the database (a restart reverted it, and
        meanwhile screens and later actions saw it). Synchronous: no other step or action runs in between.
        """
        engine = self.engine
        held = engine.incidents.get(incident_id)
        scope = [] if held is None else [held]
        for m in held.members if held is not None else ():
            owner = engine.incidents.get(getattr(engine.alerts.get(m), "incident_id", None) or -1)
            if owner is not None:
                scope.append(owner)
        saved = checkpoint(engine, scope)
        try:
            ch = apply(datetime.now(UTC))
            # an action that changed no incident row answers with the incident as held (not a KeyError: a 503)
            inc = ch.incidents.get(incident_id) or engine.incident(incident_id)
            if action_id is not None:
                ch.actions[action_id] = (epoch, self.view_of(inc))
        except AlertError:
            saved.restore()  # refusals come before any change; undone all the same should one come later
            raise
        except Exception as err:
            saved.restore()
            HANDLER_ERRORS.labels("alert_action").inc()
            logger.exception("officer's action on incident %s raised; undone", incident_id)
            raise ActionUndone(f"{type(err).__name__}: {err}"[:300]) from err
        except BaseException:
            saved.restore()
            raise
        saved.close()
        self._unsaved.merge(ch)
        return inc

    def _set_silences(self, silences: list[Silence], now: datetime) -> None:
        """Replace the engine's silences (under ``_lock``), all or nothing like a step: re-evaluating every live
        incident may raise half way, after some were re-silenced in memory only."""
        saved = checkpoint(self.engine)
        try:
            ch = self.engine.set_silences(silences, now)
        except BaseException:
            saved.restore()
            raise
        saved.close()
        self._unsaved.merge(ch)

    async def _set_aside_signals(self) -> None:
        """Keep the signals no step could apply in ``set_aside`` (with their error) before their input is acked.

        Fenced like every write of the stage: a process that lost its lease writes no row (the next leader, handed
        the same input again, sets its own aside).
        """
        refused = self._refused
        try:
            async with self.pool.acquire(timeout=5) as conn, conn.transaction():
                if self.guard is not None:
                    await self.guard(conn, Changes())
                for sig, error in refused:
                    await set_aside(conn, "alerts", f"signal {sig.key}", error, 1, _signal_doc(sig))
        except Exception as err:
            logger.warning("refused alert signals not set aside yet (%s); retrying next tick", err)
            return
        self._refused = self._refused[len(refused):]


def _signal_doc(sig: Signal) -> dict[str, Any]:
    return {f: getattr(sig, f) for f in sig.__slots__}
