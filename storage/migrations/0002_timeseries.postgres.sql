-- Fallback without TimescaleDB: native range partitioning by day. Partitions are created ahead of time
-- by storage.maintenance (called from `ioc db upgrade` and hourly by ingest workers), never on insert.
-- The DEFAULT partitions catch rows outside the prepared range so an insert never fails for lack of one.
CREATE TABLE telemetry (
    ts        timestamptz NOT NULL,
    device_id text NOT NULL,
    metric    text NOT NULL,
    value     double precision NOT NULL,
    seq       bigint
) PARTITION BY RANGE (ts);
CREATE UNIQUE INDEX telemetry_key ON telemetry (device_id, metric, ts);
CREATE TABLE telemetry_default PARTITION OF telemetry DEFAULT;

CREATE TABLE device_status (
    ts          timestamptz NOT NULL,
    device_id   text NOT NULL,
    state       text NOT NULL,
    reason      text,
    received_at timestamptz NOT NULL
) PARTITION BY RANGE (ts);
CREATE UNIQUE INDEX device_status_key ON device_status (device_id, ts);
CREATE TABLE device_status_default PARTITION OF device_status DEFAULT;

CREATE TABLE device_events (
    ts          timestamptz NOT NULL,
    device_id   text NOT NULL,
    type        text NOT NULL,
    severity    text NOT NULL,
    detail      jsonb NOT NULL,
    received_at timestamptz NOT NULL
) PARTITION BY RANGE (ts);
CREATE UNIQUE INDEX device_events_key ON device_events (device_id, type, ts);
CREATE INDEX device_events_recent ON device_events (ts DESC);
CREATE TABLE device_events_default PARTITION OF device_events DEFAULT;
