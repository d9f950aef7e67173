-- Storage at a province's scale, PostgreSQL fallback.
-- 1. Time-range scans (rollup refresh, city-wide KPIs) read only the blocks of the range: a BRIN index on ts
--    (telemetry arrives roughly in time order; the index is a few pages per day partition).
CREATE INDEX telemetry_ts_brin ON telemetry USING brin (ts) WITH (pages_per_range = 32);

-- 2. Incremental rollups: every INSERT statement into telemetry notes the 5-minute buckets it touched
--    (late data included); storage.rollups.refresh_recent recomputes only those buckets and deletes the marks
--    it folded in. No key, so concurrent ingest transactions never wait on each other's marks.
CREATE TABLE telemetry_dirty (
    bucket   timestamptz NOT NULL,
    noted_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION telemetry_note_dirty() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO telemetry_dirty (bucket)
    SELECT DISTINCT date_bin('5 minutes', ts, TIMESTAMPTZ '2000-01-03 00:00:00+00') FROM new_rows;
    RETURN NULL;
END
$$;

CREATE TRIGGER telemetry_note_dirty AFTER INSERT ON telemetry
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION telemetry_note_dirty();

-- 3. How far the rollups are complete: readers take buckets before complete_before from the rollup tables
--    and the rest from the raw rows (what TimescaleDB's real-time aggregation does).
CREATE TABLE rollup_state (
    name            text PRIMARY KEY,
    complete_before timestamptz NOT NULL,
    refreshed_at    timestamptz NOT NULL
);

-- 4. A device's chart reads its rollup rows by (device, metric, time), but they are written time-major, one
--    row per heap page for a chart's range. Carrying the values in the key index lets the chart be an
--    index-only scan over adjacent leaf pages (a 7-day chart of a BTS: ~200 pages instead of ~3,500).
ALTER TABLE telemetry_5m DROP CONSTRAINT telemetry_5m_pkey,
    ADD CONSTRAINT telemetry_5m_pkey PRIMARY KEY (device_id, metric, bucket) INCLUDE (avg, min, max, n);
ALTER TABLE telemetry_1h DROP CONSTRAINT telemetry_1h_pkey,
    ADD CONSTRAINT telemetry_1h_pkey PRIMARY KEY (device_id, metric, bucket) INCLUDE (avg, min, max, n);
