-- Alerts, incidents, their audit trail, silences, the duty roster, escalation policies and the
-- notification outbox. The alert engine keeps open alerts in memory and writes every change here.

CREATE TABLE incidents (
    id          bigserial PRIMARY KEY,
    group_key   text NOT NULL,                 -- why its members belong together, e.g. power:KA
    category    text NOT NULL,                 -- power, offline, camera, traffic, bts_quality, sensor
    severity    text NOT NULL,
    state       text NOT NULL CHECK (state IN ('open', 'acknowledged', 'resolved', 'closed')),
    title       text NOT NULL,
    district    text,
    started_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    resolved_at timestamptz,
    closed_at   timestamptz,
    acked_by    text,
    acked_at    timestamptz,
    assignee    text,
    suppressed  text,                          -- 'silenced:<id>' / 'inhibited:<incident>' when quiet
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX incidents_active ON incidents (state, started_at DESC);
CREATE INDEX incidents_recent ON incidents (started_at DESC);

CREATE TABLE alerts (
    id           bigserial PRIMARY KEY,
    dedupe_key   text NOT NULL,
    rule         text NOT NULL,
    category     text NOT NULL,
    severity     text NOT NULL CHECK (severity IN ('critical', 'major', 'minor', 'warning', 'info')),
    state        text NOT NULL CHECK (state IN ('open', 'acknowledged', 'resolved', 'closed')),
    title        text NOT NULL,
    explanation  text NOT NULL,
    device_id    text,
    kind         text,
    district     text,
    incident_id  bigint REFERENCES incidents (id),
    started_at   timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    resolved_at  timestamptz,
    closed_at    timestamptz,
    acked_by     text,
    acked_at     timestamptz,
    assignee     text,
    flaps        integer NOT NULL DEFAULT 0,
    suppressed   text,
    evidence     jsonb NOT NULL DEFAULT '{}'::jsonb
);
-- One live alert per dedupe key; resolved/closed ones are history.
CREATE UNIQUE INDEX alerts_one_live ON alerts (dedupe_key) WHERE state IN ('open', 'acknowledged');
CREATE INDEX alerts_recent ON alerts (started_at DESC);
CREATE INDEX alerts_incident ON alerts (incident_id);
CREATE INDEX alerts_device ON alerts (device_id, started_at DESC);

-- Audit trail: every state change, comment, assignment, escalation and notification, by whom.
CREATE TABLE alert_events (
    id          bigserial PRIMARY KEY,
    ts          timestamptz NOT NULL,
    incident_id bigint REFERENCES incidents (id),
    alert_id    bigint REFERENCES alerts (id),
    action      text NOT NULL,                 -- opened, joined, acknowledged, assigned, commented, resolved, ...
    actor       text NOT NULL,                 -- 'system' or an officer id
    note        text,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX alert_events_incident ON alert_events (incident_id, ts);
CREATE INDEX alert_events_alert ON alert_events (alert_id, ts);

CREATE TABLE silences (
    id         bigserial PRIMARY KEY,
    matchers   jsonb NOT NULL,                 -- {"device_id": ..., "district": ..., "kind": ..., "rule": ...}
    starts_at  timestamptz NOT NULL,
    ends_at    timestamptz NOT NULL CHECK (ends_at > starts_at),
    reason     text NOT NULL,
    author     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz
);

CREATE TABLE officers (
    id      text PRIMARY KEY,
    name    text NOT NULL,
    email   text,
    phone   text,
    active  boolean NOT NULL DEFAULT true
);

-- Who is on duty when. level 1 is the first line; level 2 their supervisor, and so on.
CREATE TABLE shifts (
    id         bigserial PRIMARY KEY,
    officer_id text NOT NULL REFERENCES officers (id) ON DELETE CASCADE,
    level      integer NOT NULL DEFAULT 1 CHECK (level >= 1),
    starts_at  timestamptz NOT NULL,
    ends_at    timestamptz NOT NULL CHECK (ends_at > starts_at)
);
CREATE INDEX shifts_when ON shifts (starts_at, ends_at);

CREATE TABLE escalation_policies (
    id           text PRIMARY KEY,
    name         text NOT NULL,
    min_severity text NOT NULL,                -- the policy applies to incidents at least this severe
    steps        jsonb NOT NULL,               -- [{"after_min": 0, "level": 1}, {"after_min": 10, "level": 2}]
    repeat       integer NOT NULL DEFAULT 0,   -- how many times to run the steps again if nobody acks
    channels     jsonb NOT NULL DEFAULT '["email", "webhook"]'::jsonb
);

-- Outbox: a notification is written in the same transaction as the change it reports, then sent
-- (and retried with backoff) by the dispatcher. Failures stay visible here.
CREATE TABLE notifications (
    id            bigserial PRIMARY KEY,
    created_at    timestamptz NOT NULL DEFAULT now(),
    incident_id   bigint REFERENCES incidents (id),
    channel       text NOT NULL,               -- email, webhook
    target        text NOT NULL,               -- address or URL
    reason        text NOT NULL,               -- firing, escalation, resolved, test
    subject       text NOT NULL,
    body          jsonb NOT NULL,
    status        text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'failed', 'dropped')),
    attempts      integer NOT NULL DEFAULT 0,
    next_attempt  timestamptz NOT NULL DEFAULT now(),
    last_error    text,
    sent_at       timestamptz
);
CREATE INDEX notifications_due ON notifications (next_attempt) WHERE status = 'pending';
CREATE INDEX notifications_recent ON notifications (created_at DESC);
