-- The newest value of every (device, metric), kept by the write path (storage/writes.py) in the same
-- transaction as the readings. An API replica seeds its live state from it at start: a province's last
-- 15 minutes are 570,000 readings to sort (479 ms p95 in benchmarks.storage_scale), its latest values
-- about 40,000 rows to read. A plain table on both backends; HOT updates (no index on ts/value, space
-- left in each page) keep the per-batch upsert cheap.
CREATE TABLE telemetry_latest (
    device_id text NOT NULL,
    metric text NOT NULL,
    ts timestamptz NOT NULL,
    value double precision NOT NULL,
    PRIMARY KEY (device_id, metric)
) WITH (fillfactor = 70);

-- An existing deployment starts from its last day (a province's day: 55 M readings, read once here). A metric
-- that had already stopped reporting a day before the upgrade is missing from a device's page until it
-- reports again; its history is untouched.
INSERT INTO telemetry_latest (device_id, metric, ts, value)
SELECT DISTINCT ON (device_id, metric) device_id, metric, ts, value FROM telemetry
WHERE ts >= now() - interval '1 day' ORDER BY device_id, metric, ts DESC;
