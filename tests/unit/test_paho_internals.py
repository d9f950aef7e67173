"""The private paho-mqtt internals the ingest session relies on, checked so that an upgrade fails loudly.

``ingest/mqtt_session.py`` drives paho's reader itself (``_packet_read``, ``_loop_rc_handle``) and swaps
the client's ``_sock`` for a buffered proxy read through ``_sock_recv``; ``ingest/paho_speedups.py``
patches ``paho.mqtt._packet.Properties``. None of these are public API: pyproject pins the versions they
were checked on (2.1, 2.2).
"""

from __future__ import annotations

import inspect
import tomllib
from importlib import metadata
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from packaging.requirements import Requirement
from packaging.version import Version
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest import paho_speedups

pytestmark = pytest.mark.unit

PAHO = Version(metadata.version("paho-mqtt"))


def _pinned() -> Requirement:
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    return next(r for r in map(Requirement, project["dependencies"]) if r.name == "paho-mqtt")


def test_installed_paho_is_in_the_pinned_range_and_the_range_is_bounded() -> None:
    spec = _pinned().specifier
    assert PAHO in spec
    assert any(s.operator == "<" for s in spec), "the range must stop at versions not checked yet"
    assert Version("3.0") not in spec


def test_the_reader_entry_points_exist_with_their_shape() -> None:
    read = inspect.signature(mqtt.Client._packet_read)
    assert list(read.parameters) == ["self"]
    handle = inspect.signature(mqtt.Client._loop_rc_handle)
    assert list(handle.parameters)[:2] == ["self", "rc"]
    assert mqtt.MQTT_ERR_AGAIN != mqtt.MQTT_ERR_SUCCESS


def test_the_socket_is_read_through_sock_recv_on_the_swappable_attribute() -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="internals", protocol=mqtt.MQTTv5)
    assert client._sock is None
    assert "self._sock.recv(" in inspect.getsource(mqtt.Client._sock_recv)
    # The session swaps the socket in on_socket_open: paho must assign _sock first, announce it, then
    # send CONNECT through it.
    source = inspect.getsource(mqtt.Client.reconnect)
    assigned = source.index("self._sock = ")
    announced = source.index("self._call_socket_open(")
    assert assigned < announced < source.index("self._send_connect(")


def test_packet_reads_go_through_sock_recv() -> None:
    source = inspect.getsource(mqtt.Client._packet_read)
    assert "self._sock_recv(" in source
    assert "MQTT_ERR_AGAIN" in source


@pytest.mark.skipif(PAHO.release[:2] < (2, 2), reason="paho 2.1 has no _packet module: speed-up not installed")
def test_speedups_patch_the_decoder_where_paho_has_one() -> None:
    from paho.mqtt import _packet

    source = inspect.getsource(_packet)
    assert "Properties(PacketTypes.PUBLISH)" in source
    assert paho_speedups.install() is True
    assert _packet.Properties is paho_speedups.LeanProperties


def test_speedups_fall_back_to_plain_paho_without_the_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paho_speedups, "_packet", None)
    assert paho_speedups.install() is False


def test_lean_properties_keep_pahos_private_attributes_and_behaviour() -> None:
    plain = Properties(PacketTypes.PUBLISH)
    assert {"packetType", "types", "names", "properties"} <= set(vars(plain))
    lean = paho_speedups.LeanProperties(PacketTypes.PUBLISH)
    for props in (plain, lean):
        props.MessageExpiryInterval = 30
        props.UserProperty = ("k", "v")
    assert lean.pack() == plain.pack()
    decoded = paho_speedups.LeanProperties(PacketTypes.PUBLISH)
    decoded.unpack(plain.pack())
    assert decoded.MessageExpiryInterval == 30
    assert not decoded.isEmpty()
    decoded.clear()
    assert decoded.isEmpty()
