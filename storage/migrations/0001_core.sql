-- Tables that do not grow with time: metadata, the device registry, snapshots, quarantine.
CREATE TABLE IF NOT EXISTS ioc_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE devices (
    device_id    text PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('camera', 'bts', 'traffic')),
    first_seen   timestamptz NOT NULL,
    last_seen    timestamptz NOT NULL,
    lat          double precision,
    lon          double precision,
    state        text NOT NULL DEFAULT 'unknown',
    state_reason text,
    state_ts     timestamptz,
    last_seq     bigint,
    meta         jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX devices_kind_state ON devices (kind, state);

-- One row per distinct image per camera: a frozen camera repeating the same JPEG keeps one row whose
-- first_seen..last_seen spans the freeze. Pruned to a bounded history per camera by maintenance.
CREATE TABLE snapshots (
    device_id  text NOT NULL,
    sha256     bytea NOT NULL,
    first_seen timestamptz NOT NULL,
    last_seen  timestamptz NOT NULL,
    width      integer NOT NULL,
    height     integer NOT NULL,
    size       integer NOT NULL,
    jpeg       bytea NOT NULL,
    PRIMARY KEY (device_id, sha256)
);
CREATE INDEX snapshots_latest ON snapshots (device_id, last_seen DESC);

-- Bad input, kept with the reason in words. The unique index makes a redelivered message a no-op.
CREATE TABLE quarantine (
    id             bigserial PRIMARY KEY,
    received_at    timestamptz NOT NULL,
    topic          text NOT NULL,
    reason         text NOT NULL,
    detail         text NOT NULL,
    item_index     integer NOT NULL DEFAULT -1,
    payload        bytea NOT NULL,
    payload_size   integer NOT NULL,
    payload_sha256 bytea NOT NULL
);
CREATE UNIQUE INDEX quarantine_once ON quarantine (payload_sha256, topic, item_index);
CREATE INDEX quarantine_recent ON quarantine (received_at DESC);
CREATE INDEX quarantine_reason ON quarantine (reason, received_at DESC);
