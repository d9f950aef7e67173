-- TimescaleDB: hypertables with daily chunks, compressed by (device, metric) segments.
-- Compression and retention policies are applied by storage.migrate.apply_policies from settings.
CREATE TABLE telemetry (
    ts        timestamptz NOT NULL,
    device_id text NOT NULL,
    metric    text NOT NULL,
    value     double precision NOT NULL,
    seq       bigint
);
SELECT create_hypertable('telemetry', 'ts', chunk_time_interval => interval '1 day');
CREATE UNIQUE INDEX telemetry_key ON telemetry (device_id, metric, ts);
ALTER TABLE telemetry SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'device_id, metric',
    timescaledb.compress_orderby = 'ts DESC'
);

CREATE TABLE device_status (
    ts          timestamptz NOT NULL,
    device_id   text NOT NULL,
    state       text NOT NULL,
    reason      text,
    received_at timestamptz NOT NULL
);
SELECT create_hypertable('device_status', 'ts', chunk_time_interval => interval '7 days');
CREATE UNIQUE INDEX device_status_key ON device_status (device_id, ts);

CREATE TABLE device_events (
    ts          timestamptz NOT NULL,
    device_id   text NOT NULL,
    type        text NOT NULL,
    severity    text NOT NULL,
    detail      jsonb NOT NULL,
    received_at timestamptz NOT NULL
);
SELECT create_hypertable('device_events', 'ts', chunk_time_interval => interval '7 days');
CREATE UNIQUE INDEX device_events_key ON device_events (device_id, type, ts);
