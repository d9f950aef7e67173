-- Rollups for dashboards and long time ranges: 5-minute and hourly aggregates per (device, metric).
-- TimescaleDB: continuous aggregates (the hourly one on top of the 5-minute one); refresh and retention
-- policies are applied by storage.migrate.apply_timescaledb_policies from settings. Real-time
-- aggregation is on, so the newest, not yet materialised buckets are computed on read.
CREATE MATERIALIZED VIEW telemetry_5m WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '5 minutes', ts) AS bucket, device_id, metric,
       avg(value) AS avg, min(value) AS min, max(value) AS max, count(*) AS n
FROM telemetry
GROUP BY time_bucket(INTERVAL '5 minutes', ts), device_id, metric
WITH NO DATA;

CREATE MATERIALIZED VIEW telemetry_1h WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', bucket) AS bucket, device_id, metric,
       sum(avg * n) / sum(n) AS avg, min(min) AS min, max(max) AS max, sum(n)::bigint AS n
FROM telemetry_5m
GROUP BY time_bucket(INTERVAL '1 hour', bucket), device_id, metric
WITH NO DATA;

-- The district of each device, as the service places it on the city map (dashboards group by it).
ALTER TABLE devices ADD COLUMN district text;
CREATE INDEX devices_district ON devices (district, kind);
