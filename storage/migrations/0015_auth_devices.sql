-- Browsers a user has logged in from (ioc/auth): a device cookie (only its SHA-256 kept here) lets its user log
-- in while someone elsewhere hammers the user name into the per-account login limit (OWASP's "device cookies").
-- It proves nothing else: the password is checked as always.

CREATE TABLE auth_devices (
    id          bigserial PRIMARY KEY,
    token_hash  bytea NOT NULL UNIQUE,
    user_id     bigint NOT NULL REFERENCES auth_users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX auth_devices_user ON auth_devices (user_id);
