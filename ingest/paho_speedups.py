"""A targeted speed-up for paho-mqtt 2.x's MQTT v5 receive path.

paho builds a ``Properties`` object for every PUBLISH it decodes, and its constructor rebuilds three
lookup tables each time while ``clear()`` scans them with ``hasattr``: about a fifth of the ingest
worker's CPU at 10k msg/s. :class:`LeanProperties` keeps the tables on the class (they are never
mutated) and clears only the attributes actually set; behaviour is otherwise paho's own.

Every message also goes through the client's topic-callback matcher (``MQTTMatcher.iter_match``), which
builds a self-referencing closure per call: a reference cycle that only the garbage collector frees, ~6
objects per message (the worker's largest source of cyclic garbage: it ran the collector about a third more
often). The sessions here register no topic callbacks, so :func:`install` makes ``iter_match`` on an empty
matcher return at once; with callbacks it is paho's own.

The decoder it patches lives in ``paho.mqtt._packet``, which paho 2.1 does not have (2.2 does): there
:func:`install` does nothing and paho runs as shipped. ``tests/unit/test_paho_internals.py`` checks the
private names this module and :mod:`ingest.mqtt_session` rely on, so an upgrade that moves them fails a test.
"""

from __future__ import annotations

from typing import Any

from paho.mqtt.matcher import MQTTMatcher
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

try:  # paho >= 2.2; absent from 2.1
    from paho.mqtt import _packet
except ImportError:  # pragma: no cover - depends on the installed paho
    _packet = None  # type: ignore[assignment]

_PRIVATE = frozenset({"packetType", "types", "names", "properties"})
_TEMPLATE = Properties(PacketTypes.PUBLISH)


class LeanProperties(Properties):
    """paho ``Properties`` with class-level lookup tables."""

    types = _TEMPLATE.types
    names = _TEMPLATE.names
    properties = _TEMPLATE.properties

    def __init__(self, packetType: int) -> None:
        object.__setattr__(self, "packetType", packetType)

    def clear(self) -> None:
        for name in [n for n in vars(self) if n not in _PRIVATE]:
            delattr(self, name)

    def isEmpty(self) -> bool:
        return all(n in _PRIVATE for n in vars(self))

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(name)


_ITER_MATCH = MQTTMatcher.iter_match


def _iter_match(self: MQTTMatcher, topic: str) -> Any:
    if not self._root._children:  # no filter at all: nothing matches (paho's recursion would find the same)
        return iter(())
    return _ITER_MATCH(self, topic)


def install() -> bool:
    """Make paho's packet decoder use :class:`LeanProperties`, and its matcher answer at once when it holds no
    filter (idempotent, process-wide).

    Returns:
        False when this paho has no ``_packet`` decoder to patch (paho 2.1): plain paho is used.
    """
    MQTTMatcher.iter_match = _iter_match  # type: ignore[method-assign]
    if _packet is None or not hasattr(_packet, "Properties"):
        return False
    _packet.Properties = LeanProperties  # type: ignore[misc]
    return True
