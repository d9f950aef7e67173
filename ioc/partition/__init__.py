"""Numeric analytics on K workers: committed readings on a partitioned, replayable NATS JetStream stream
(:mod:`ioc.partition.stream`), fed by the ingest workers after commit (:mod:`ioc.partition.feed`) and
consumed by ``ioc analytics-worker`` processes that share the partitions (:mod:`ioc.partition.worker`)."""
