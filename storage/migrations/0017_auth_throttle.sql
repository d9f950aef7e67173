-- Login and action rate limits shared by every API replica (ioc/auth/throttle.py): one row per limit and key
-- (SHA-256 of e.g. "LIMITER/login-account/admin/10/1/minute"), holding the times of the granted hits still in
-- the moving window. expires_at is the last granted hit plus the window: past it the row says nothing and any
-- hit may delete it (each hit deletes up to 8 of them), so a flood of random user names leaves one window's
-- rows at most.
-- UNLOGGED: a flood writes no WAL and nothing to standbys; after a crash or a failover the counts start again
-- empty, which gives back at most one window's attempts.

CREATE UNLOGGED TABLE auth_throttle (
    key         bytea PRIMARY KEY,
    hits        timestamptz[] NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX auth_throttle_expires ON auth_throttle (expires_at);
