"""What a live-feed client wants to see."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FRAME_TYPES = frozenset({"reading", "status", "event", "image", "health", "finding", "alert", "incident"})
#: The most names one list of a filter holds, and the longest name (device ids are at most 64 characters). A
#: subscription is kept while its screens are open and its snapshot a while after: one of 1.5 million device ids
#: (a 15 MB message) held 144 MB, 32 screens of one address 4.6 GB.
MAX_NAMES = 5000
MAX_NAME_CHARS = 128


class FilterError(ValueError):
    """A subscription request the hub cannot honour (the reason is sent back to the client)."""


@dataclass(frozen=True, slots=True)
class Subscription:
    """A client's filter; an empty set means "all"."""

    kinds: frozenset[str] = frozenset()
    devices: frozenset[str] = frozenset()
    districts: frozenset[str] = frozenset()
    bbox: tuple[float, float, float, float] | None = None  # min lon, min lat, max lon, max lat
    types: frozenset[str] = frozenset()

    def matches(self, kind: str, device_id: str, district: str | None, lat: float | None, lon: float | None,
                frame_type: str) -> bool:
        # a ``device`` frame is a piece of the snapshot (a device's whole state), which no type filter hides
        if self.types and frame_type not in self.types and frame_type != "device":
            return False
        return self.matches_device(kind, device_id, district, lat, lon)

    def matches_device(self, kind: str, device_id: str, district: str | None, lat: float | None,
                       lon: float | None) -> bool:
        """The device dimensions of the filter only (kind, ids, district, bbox)."""
        if self.kinds and kind not in self.kinds:
            return False
        if self.devices and device_id not in self.devices:
            return False
        if self.districts and district not in self.districts:
            return False
        if self.bbox is not None:
            if lat is None or lon is None:
                return False
            x0, y0, x1, y1 = self.bbox
            return x0 <= lon <= x1 and y0 <= lat <= y1
        return True

    @classmethod
    def parse(cls, doc: dict[str, Any]) -> Subscription:
        """Build from a subscribe message or query parameters (lists or comma-separated strings)."""

        def names(key: str) -> frozenset[str]:
            raw = doc.get(key) or []
            items = raw.split(",") if isinstance(raw, str) else raw
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise FilterError(f"'{key}' must be a list of strings")
            if len(items) > MAX_NAMES or any(len(i) > MAX_NAME_CHARS for i in items):
                raise FilterError(f"'{key}' holds at most {MAX_NAMES} names of at most {MAX_NAME_CHARS} characters")
            return frozenset(i.strip() for i in items if i.strip())

        types = names("types")
        if types - FRAME_TYPES:
            raise FilterError(f"unknown types {sorted(types - FRAME_TYPES)}; use {sorted(FRAME_TYPES)}")
        kinds = names("kinds")
        if kinds - {"camera", "bts", "traffic"}:
            raise FilterError("kinds must be among camera, bts, traffic")
        bbox = doc.get("bbox")
        if isinstance(bbox, str):
            bbox = bbox.split(",")
        if bbox is not None:
            try:
                x0, y0, x1, y1 = (float(v) for v in bbox)
            except (TypeError, ValueError):
                raise FilterError("bbox must be [min_lon, min_lat, max_lon, max_lat]") from None
            if x0 > x1 or y0 > y1:
                raise FilterError("bbox minimums must not exceed maximums")
            bbox = (x0, y0, x1, y1)
        return cls(kinds, names("devices"), names("districts"), bbox, types)
