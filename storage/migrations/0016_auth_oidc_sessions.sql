-- Browser sessions of people who logged in through the OpenID Connect provider (ioc/auth/sso.py): such a session
-- belongs to no local user and no API token, but to the provider's name for the person and the role their claims
-- mapped to at login. Exactly one owner per session, as before.

ALTER TABLE auth_sessions
    ADD COLUMN oidc_name text,
    ADD COLUMN oidc_role text CHECK (oidc_role IN ('viewer', 'officer', 'supervisor', 'admin'));
ALTER TABLE auth_sessions DROP CONSTRAINT auth_sessions_check;
ALTER TABLE auth_sessions ADD CONSTRAINT auth_sessions_one_owner
    CHECK (num_nonnulls(user_id, api_token_id, oidc_name) = 1 AND (oidc_name IS NULL) = (oidc_role IS NULL));
