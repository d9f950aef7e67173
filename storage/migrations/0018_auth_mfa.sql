-- A second factor for local users (ioc/auth/mfa.py): a TOTP secret (RFC 6238) per user, kept encrypted with
-- IOC_AUTH__MFA_KEY when that is set, and one-time recovery codes stored as Argon2 hashes, like passwords.
-- A secret being set up (shown once, not yet confirmed with a code) is "pending"; a confirmed one is "active".
-- last_step is the 30-s time step of the last code accepted: a code is accepted once (no replay).

CREATE TABLE auth_totp (
    user_id      bigint PRIMARY KEY REFERENCES auth_users (id) ON DELETE CASCADE,
    secret       text,              -- the active secret (sealed), NULL until confirmed
    pending      text,              -- a secret set up and not yet confirmed (sealed)
    pending_at   timestamptz,
    active_since timestamptz,
    last_step    bigint,
    CHECK ((secret IS NULL) = (active_since IS NULL))
);

CREATE TABLE auth_recovery_codes (
    id          bigserial PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES auth_users (id) ON DELETE CASCADE,
    code_hash   text NOT NULL,
    used_at     timestamptz
);
CREATE INDEX auth_recovery_codes_user ON auth_recovery_codes (user_id) WHERE used_at IS NULL;

-- A session of a user whose role needs a second factor (IOC_AUTH__MFA_REQUIRED_ROLES) and who has none yet: it
-- reaches the MFA setup routes, who-am-I and logout only, until the user confirms a second factor.
ALTER TABLE auth_sessions ADD COLUMN mfa_pending boolean NOT NULL DEFAULT false;
