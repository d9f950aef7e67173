-- Rollups for dashboards and long time ranges: 5-minute and hourly aggregates per (device, metric).
-- Native PostgreSQL: plain tables kept up to date by storage.rollups.refresh_rollups (run by the ingest
-- workers' maintenance every few minutes over a look-back window, and by `ioc history` over what it
-- wrote); retention by storage.maintenance.
CREATE TABLE telemetry_5m (
    bucket    timestamptz NOT NULL,
    device_id text NOT NULL,
    metric    text NOT NULL,
    avg       double precision NOT NULL,
    min       double precision NOT NULL,
    max       double precision NOT NULL,
    n         bigint NOT NULL,
    PRIMARY KEY (device_id, metric, bucket)
);
CREATE INDEX telemetry_5m_bucket ON telemetry_5m (bucket);

CREATE TABLE telemetry_1h (LIKE telemetry_5m INCLUDING ALL);

-- The district of each device, as the service places it on the city map (dashboards group by it).
ALTER TABLE devices ADD COLUMN district text;
CREATE INDEX devices_district ON devices (district, kind);
