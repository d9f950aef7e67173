-- Change sets a stage could not store because the data itself was refused (not because the database was
-- away): kept here with the error, shown to admins (GET /api/set-aside), never retried in front of the rest.
CREATE TABLE IF NOT EXISTS set_aside (
    id       bigserial PRIMARY KEY,
    ts       timestamptz NOT NULL DEFAULT now(),
    stage    text NOT NULL,
    what     text NOT NULL,
    error    text NOT NULL,
    attempts integer NOT NULL DEFAULT 1,
    payload  bytea NOT NULL
);
CREATE INDEX IF NOT EXISTS set_aside_ts ON set_aside (ts DESC);
