-- Storage at a province's scale, TimescaleDB: the rollups are kept for 400 days (5-minute) and 5 years
-- (hourly), by far the most rows a province keeps, so their older chunks are compressed too (policy from
-- settings in storage.migrate.apply_timescaledb_policies).
ALTER MATERIALIZED VIEW telemetry_5m SET (timescaledb.compress = true);
ALTER MATERIALIZED VIEW telemetry_1h SET (timescaledb.compress = true);
