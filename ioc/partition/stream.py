"""The partitioned, replayable stream of committed readings (NATS JetStream), and how devices map to partitions.

The numeric analytics of a large province can run on K workers. JetStream keeps the readings (a file
stream with a retention window), so a worker that takes over a partition replays what its predecessor had
not acknowledged; nothing about the queue or its consensus is ours.

Partitions follow districts, not devices: the domain rules judge a district as a whole (mains lost at
several BTS of a district, a district-wide slowdown), so every device of a district must be analysed by the
same worker. A province has tens of districts, so up to that many workers share the load evenly enough; a
device whose district is not known yet (no position) goes by its own id.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import orjson

STREAM = "IOC_READINGS"


def subject(stream: str, partition: int) -> str:
    """Readings of ``partition`` are published on ``<stream>.<partition>``."""
    return f"{stream}.{partition}"


def partition_of(key: str, partitions: int) -> int:
    """The partition of a district code (or of a device id when its district is unknown)."""
    return zlib.crc32(key.encode()) % partitions


async def ensure_stream(js: Any, stream: str = STREAM, max_age_s: float = 24 * 3600.0, replicas: int = 1) -> None:
    """Create the stream if it is missing (file storage, kept ``max_age_s``; ``replicas`` > 1 on a cluster)."""
    from nats.js.api import RetentionPolicy, StorageType, StreamConfig
    from nats.js.errors import NotFoundError

    try:
        await js.stream_info(stream)
    except NotFoundError:
        await js.add_stream(StreamConfig(
            name=stream, subjects=[f"{stream}.*"], retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE, max_age=max_age_s, duplicate_window=120.0, num_replicas=replicas))


@dataclass(frozen=True, slots=True)
class Row:
    """One reading as it travels on the stream."""

    device_id: str
    kind: str
    district: str
    metric: str
    ts: float  # epoch seconds
    value: float


def encode_rows(rows: list[Row]) -> bytes:
    """A batch of readings as one stream message (compact JSON arrays)."""
    return orjson.dumps([[r.device_id, r.kind, r.district, r.metric, r.ts, r.value] for r in rows])


def decode_rows(data: bytes) -> list[Row]:
    """The rows of a stream message; rows that do not have the expected shape are skipped."""
    out = []
    for item in orjson.loads(data):
        if (isinstance(item, list) and len(item) == 6 and all(isinstance(v, str) for v in item[:4])
                and all(isinstance(v, int | float) and not isinstance(v, bool) for v in item[4:])):
            out.append(Row(item[0], item[1], item[2], item[3], float(item[4]), float(item[5])))
    return out


class Publisher:
    """Puts committed readings on the stream, one message per partition per batch.

    ``msg_id`` (JetStream's ``Nats-Msg-Id``) makes a batch published twice within the duplicate window
    (an ingest worker retrying after a lost ack) stored once.
    """

    def __init__(self, js: Any, partitions: int, stream: str = STREAM) -> None:
        self.js, self.partitions, self.stream = js, partitions, stream
        self.published = 0

    async def publish(self, rows: list[Row], msg_id: str | None = None) -> None:
        by_partition: dict[int, list[Row]] = {}
        for r in rows:
            by_partition.setdefault(partition_of(r.district or r.device_id, self.partitions), []).append(r)
        for p, part in by_partition.items():
            headers = {"Nats-Msg-Id": f"{msg_id}:{p}"} if msg_id else None
            await self.js.publish(subject(self.stream, p), encode_rows(part), stream=self.stream, headers=headers)
            self.published += len(part)
