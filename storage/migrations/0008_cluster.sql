-- High availability (docs/ha.md): the brain's lease with its fencing epoch, the cluster's members,
-- officers' actions handed from any replica to the leader, shared notification rate limits, and ids
-- drawn from the database's sequences (no process numbers rows from max(id) + 1 any more).

-- One row per lease. ``epoch`` grows by one at every takeover; every write of the stateful stages
-- checks, inside its own transaction, that the lease still names its process with its epoch and has
-- not expired (SELECT ... FOR SHARE), so a paused former leader can never write after losing it.
-- Times are the database's clock: processes on different hosts never compare their own clocks.
CREATE TABLE cluster_lease (
    name        text PRIMARY KEY,
    holder      text,                          -- process id of the leader (NULL: released)
    epoch       bigint NOT NULL DEFAULT 0,
    acquired_at timestamptz,
    renewed_at  timestamptz,
    expires_at  timestamptz
);
INSERT INTO cluster_lease (name) VALUES ('brain');

-- Every running process, refreshed by its heartbeat (GET /api/cluster).
CREATE TABLE cluster_members (
    process_id   text PRIMARY KEY,
    role         text NOT NULL,                -- api, brain, all
    host         text NOT NULL,
    pid          integer NOT NULL,
    started_at   timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    doing        text NOT NULL DEFAULT '',     -- leading (epoch N), standby, serving
    input_lag_s  double precision,             -- newest reading's age when it reached this process
    detail       jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX cluster_members_heartbeat ON cluster_members (heartbeat_at DESC);

-- An officer's action taken on a replica that does not lead: the leader applies it once and writes
-- the result back (NOTIFY ioc_actions wakes it; it also polls).
CREATE TABLE cluster_actions (
    id          bigserial PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now(),
    origin      text NOT NULL,                 -- process id of the replica that took it
    incident_id bigint NOT NULL,
    action      text NOT NULL,
    actor       text NOT NULL,
    note        text,
    assignee    text,
    status      text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'failed')),
    epoch       bigint,                        -- the leader's epoch that applied it
    result      jsonb,
    error       text,
    done_at     timestamptz
);
CREATE INDEX cluster_actions_pending ON cluster_actions (id) WHERE status = 'pending';

-- Per-(channel, target) token buckets shared by every dispatcher.
CREATE TABLE notify_rate (
    channel    text NOT NULL,
    target     text NOT NULL,
    tokens     double precision NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (channel, target)
);

-- The bigserial sequences of alerts and incidents were never used (the engine wrote its own ids):
-- move them past what exists. The engine now reserves ids with nextval().
SELECT setval('alerts_id_seq', greatest((SELECT coalesce(max(id), 0) FROM alerts), 1),
              (SELECT count(*) > 0 FROM alerts));
SELECT setval('incidents_id_seq', greatest((SELECT coalesce(max(id), 0) FROM incidents), 1),
              (SELECT count(*) > 0 FROM incidents));
