"""A camera analyser's learned state as bytes, for keeping it across restarts (no pickle).

The state tree of :meth:`CameraAnalyser.state_dict` (numbers, strings, numpy arrays and a few small
classes of this package) is written as JSON with the arrays in a numpy ``.npz`` beside it. Reading it
back instantiates only the classes listed here, so bytes from storage can never run code.

A restored analyser keeps its reference view: a camera re-pointed, covered or frozen while the service
was down is reported on its first snapshot after the restart instead of being learned as its new normal.
"""

from __future__ import annotations

import dataclasses
import io
import json
from typing import Any

import numpy as np

from analytics.camera.analyser import CameraAnalyser
from analytics.camera.config import CameraConfig
from analytics.camera.features import Measures
from analytics.camera.freeze import FreezeTracker
from analytics.camera.reference import Ref, Spread
from analytics.camera.shift import Alignment

STATE_VERSION = 1
_CLASSES: dict[str, type] = {c.__name__: c for c in (Ref, Spread, FreezeTracker, Measures, Alignment)}


def dumps(analyser: CameraAnalyser) -> bytes:
    """Serialise one analyser's learned state (compressed ``.npz``)."""
    arrays: dict[str, Any] = {}
    tree = _encode(analyser.state_dict(), arrays)
    meta = json.dumps({"version": STATE_VERSION, "device_id": analyser.device_id, "state": tree})
    buf = io.BytesIO()
    np.savez_compressed(buf, meta=np.array(meta), **arrays)
    return buf.getvalue()


def loads(data: bytes, config: CameraConfig | None = None) -> CameraAnalyser:
    """Rebuild an analyser saved by :func:`dumps`.

    Raises:
        ValueError: the bytes are not such a state, or of another version.
    """
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("meta")))
    except Exception as err:  # not a zip, a truncated one, no meta: all mean "not a state"
        raise ValueError(f"not a camera analyser state: {err!r}") from err
    if meta.get("version") != STATE_VERSION:
        raise ValueError(f"unsupported camera state version {meta.get('version')}")
    try:
        state, device_id = _decode(meta["state"], arrays), str(meta["device_id"])
    except (KeyError, TypeError, AttributeError) as err:  # a tree that does not fit its arrays
        raise ValueError(f"not a camera analyser state: {err!r}") from err
    return CameraAnalyser.from_state(device_id, state, config)


def _fields(obj: Any) -> list[str]:
    if dataclasses.is_dataclass(obj):
        return [f.name for f in dataclasses.fields(obj)]
    return list(type(obj).__slots__)


def _encode(value: Any, arrays: dict[str, Any]) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = value
        return {"$a": key}
    if isinstance(value, bytes):
        return {"$b": value.hex()}
    if isinstance(value, dict):
        return {"$d": {str(k): _encode(v, arrays) for k, v in value.items()}}
    name = type(value).__name__
    if _CLASSES.get(name) is type(value):
        return {"$o": name, "f": {f: _encode(getattr(value, f), arrays) for f in _fields(value)}}
    raise TypeError(f"cannot serialise {name} in a camera state")


def _decode(node: Any, arrays: dict[str, Any]) -> Any:
    if not isinstance(node, dict):
        return node
    if "$a" in node:
        return arrays[node["$a"]]
    if "$b" in node:
        return bytes.fromhex(node["$b"])
    if "$d" in node:
        return {k: _decode(v, arrays) for k, v in node["$d"].items()}
    cls = _CLASSES.get(node.get("$o", ""))
    if cls is None:
        raise ValueError(f"unknown object {node.get('$o')!r} in a camera state")
    # a tracker saved before a field was added keeps that field's initial value
    obj: Any = FreezeTracker() if cls is FreezeTracker else object.__new__(cls)
    for name, value in node["f"].items():
        object.__setattr__(obj, name, _decode(value, arrays))  # also sets frozen dataclasses' fields
    return obj
