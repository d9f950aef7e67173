-- KPI rollups for the city-wide and per-district screens: per (bucket, district, device kind, metric), over
-- every device of that kind in the district. A province's 5-minute rollup holds 35,660 rows per bucket; this
-- holds about 600, so a day of a district panel reads 288 rows per district instead of 3,240 per district-hour.
-- Kept by storage.rollups with the per-device rollups (same incremental refresh): kpi_5m from telemetry_5m,
-- kpi_1h from telemetry_1h, each grouped by the registry's district and kind when the bucket is rolled up.
CREATE TABLE kpi_5m (
    bucket      timestamptz NOT NULL,
    district    text NOT NULL,              -- devices.district; '' for a device not placed in a district
    kind        text NOT NULL,
    metric      text NOT NULL,
    sum         double precision NOT NULL,  -- of the readings: mean = sum / n
    n           bigint NOT NULL,            -- readings
    min         double precision NOT NULL,
    max         double precision NOT NULL,
    devices     bigint NOT NULL,            -- devices that sent the metric in the bucket
    sum_avg     double precision NOT NULL,  -- sum over those devices of their mean ("sum of sensors": flow)
    devices_low bigint NOT NULL,            -- of those, devices with a reading under 0.5 (0/1 metrics: mains lost)
    PRIMARY KEY (kind, metric, bucket, district)
);
CREATE INDEX kpi_5m_bucket ON kpi_5m (bucket);
CREATE TABLE kpi_1h (LIKE kpi_5m INCLUDING ALL);

-- What the per-device rollups already hold for the last 7 days (older KPI buckets are not backfilled: a
-- province's 400 days of 5-minute rollups are billions of rows, too many for a migration).
INSERT INTO kpi_5m (bucket, district, kind, metric, sum, n, min, max, devices, sum_avg, devices_low)
SELECT r.bucket, coalesce(d.district, ''), d.kind, r.metric, sum(r.avg * r.n), sum(r.n), min(r.min), max(r.max),
       count(*), sum(r.avg), count(*) FILTER (WHERE r.min < 0.5)
FROM telemetry_5m r JOIN devices d USING (device_id) WHERE r.bucket >= now() - INTERVAL '7 days'
GROUP BY 1, 2, 3, 4;
INSERT INTO kpi_1h (bucket, district, kind, metric, sum, n, min, max, devices, sum_avg, devices_low)
SELECT r.bucket, coalesce(d.district, ''), d.kind, r.metric, sum(r.avg * r.n), sum(r.n), min(r.min), max(r.max),
       count(*), sum(r.avg), count(*) FILTER (WHERE r.min < 0.5)
FROM telemetry_1h r JOIN devices d USING (device_id) WHERE r.bucket >= now() - INTERVAL '7 days'
GROUP BY 1, 2, 3, 4;
