-- People and machine credentials (ioc/auth): local users with Argon2 hashes, API tokens (stored as
-- SHA-256 of a 256-bit random secret, shown once), and server-side browser sessions (same: only the
-- hash of the cookie value is kept, so a database dump opens no session).

CREATE TABLE auth_users (
    id                  bigserial PRIMARY KEY,
    username            text NOT NULL UNIQUE,
    display_name        text NOT NULL,
    role                text NOT NULL CHECK (role IN ('viewer', 'officer', 'supervisor', 'admin')),
    password_hash       text NOT NULL,
    disabled            boolean NOT NULL DEFAULT false,
    created_at          timestamptz NOT NULL DEFAULT now(),
    password_changed_at timestamptz NOT NULL DEFAULT now(),
    last_login_at       timestamptz
);

CREATE TABLE auth_tokens (
    id           bigserial PRIMARY KEY,
    name         text NOT NULL,
    role         text NOT NULL CHECK (role IN ('viewer', 'officer', 'supervisor', 'admin')),
    token_hash   bytea NOT NULL UNIQUE,
    prefix       text NOT NULL,                 -- the first characters, to recognise a token in a list
    created_by   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz,
    last_used_at timestamptz
);

CREATE TABLE auth_sessions (
    id          bigserial PRIMARY KEY,
    token_hash  bytea NOT NULL UNIQUE,
    csrf_token  text NOT NULL,
    user_id     bigint REFERENCES auth_users (id) ON DELETE CASCADE,
    api_token_id bigint REFERENCES auth_tokens (id) ON DELETE CASCADE,  -- a wall that exchanged its token
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz,
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((user_id IS NULL) <> (api_token_id IS NULL))
);
CREATE INDEX auth_sessions_user ON auth_sessions (user_id) WHERE revoked_at IS NULL;
