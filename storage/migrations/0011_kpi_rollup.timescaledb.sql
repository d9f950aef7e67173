-- KPI rollups for the city-wide and per-district screens: per (bucket, district, device kind, metric), over
-- every device of that kind in the district (about 600 rows per bucket for a province instead of 35,660).
-- Hierarchical continuous aggregates over the per-device ones, joined with the registry: a bucket takes the
-- device's district and kind when it is materialised (the real-time part: the registry now). Refresh and
-- retention policies from settings (storage.migrate.apply_timescaledb_policies).
CREATE MATERIALIZED VIEW kpi_5m WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '5 minutes', r.bucket) AS bucket, coalesce(d.district, '') AS district, d.kind,
       r.metric, sum(r.avg * r.n) AS sum, sum(r.n)::bigint AS n, min(r.min) AS min, max(r.max) AS max,
       count(*) AS devices, sum(r.avg) AS sum_avg, count(*) FILTER (WHERE r.min < 0.5) AS devices_low
FROM telemetry_5m r JOIN devices d ON d.device_id = r.device_id
GROUP BY time_bucket(INTERVAL '5 minutes', r.bucket), coalesce(d.district, ''), d.kind, r.metric
WITH NO DATA;

CREATE MATERIALIZED VIEW kpi_1h WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', r.bucket) AS bucket, coalesce(d.district, '') AS district, d.kind,
       r.metric, sum(r.avg * r.n) AS sum, sum(r.n)::bigint AS n, min(r.min) AS min, max(r.max) AS max,
       count(*) AS devices, sum(r.avg) AS sum_avg, count(*) FILTER (WHERE r.min < 0.5) AS devices_low
FROM telemetry_1h r JOIN devices d ON d.device_id = r.device_id
GROUP BY time_bucket(INTERVAL '1 hour', r.bucket), coalesce(d.district, ''), d.kind, r.metric
WITH NO DATA;
