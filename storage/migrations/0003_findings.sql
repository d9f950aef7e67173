-- Findings of the detectors (numeric and camera), and detector state that must survive restarts.
CREATE TABLE findings (
    id          bigserial PRIMARY KEY,
    ts          timestamptz NOT NULL,
    device_id   text NOT NULL,
    series      text NOT NULL,
    type        text NOT NULL,
    score       double precision NOT NULL,
    explanation text NOT NULL,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX findings_once ON findings (device_id, series, type, ts);
CREATE INDEX findings_recent ON findings (ts DESC);

CREATE TABLE analytics_state (
    name       text PRIMARY KEY,
    updated_at timestamptz NOT NULL,
    state      bytea NOT NULL
);
