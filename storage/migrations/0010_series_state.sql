-- Learned detector state per device (docs/ha.md "Failover"): the brain saves only the devices that learned
-- something since its last save, every IOC_ANALYTICS__SERIES_STATE_EVERY_S, in its fenced transaction, and
-- a new leader restores them all at takeover. ``scope`` names the detector ('numeric': the brain's
-- NumericMonitor); ``state`` is that detector's own bytes (already compressed: PostgreSQL keeps them as they
-- are, out of line, without compressing them again).
CREATE TABLE series_state (
    scope      text NOT NULL,
    device_id  text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    state      bytea NOT NULL,
    PRIMARY KEY (scope, device_id)
);
ALTER TABLE series_state ALTER COLUMN state SET STORAGE EXTERNAL;
