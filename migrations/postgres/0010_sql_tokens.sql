-- SQL access tokens (issue 17): what an analyst signs in to the PostgreSQL port with, in
-- place of the account password. Each is issued once over HTTP after a full sign-in; only
-- its SCRAM-SHA-256 verifier is kept (StoredKey and ServerKey under the account's salt),
-- never the token. Erasing the account deletes its salt and tokens (ON DELETE CASCADE).

-- One salt per account, shared by all its tokens, so the port's server-first message is
-- the same whichever token the client holds.
CREATE TABLE sql_token_salts (
    user_id TEXT PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    salt BYTEA NOT NULL
);

CREATE TABLE sql_tokens (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    iterations BIGINT NOT NULL,
    stored_key BYTEA NOT NULL,
    server_key BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    last_used_at BIGINT
);

CREATE INDEX sql_tokens_user ON sql_tokens (user_id);
