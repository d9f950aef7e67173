"""Ingest: MQTT session and reconnect, topic parsing, payload validation, quarantine, batching DB writer.

Data flows one way: MQTT message -> :func:`ingest.parse.parse_message` (typed records or a rejection)
-> :class:`ingest.batcher.Batcher` -> :mod:`storage.writes` (one transaction) -> broker ack.
"""
