-- Sign-in hardening (issue 17): usernames unique case-insensitively, one-time recovery codes.
--
-- username_key: the username NFKC-normalised and lowercased (serving's auth::username_key),
-- unique, so `BFVictim` cannot sit next to `bfvictim`. Every username so far is ASCII (the
-- API and the CLI accept no other), for which lower() is that normalisation. If two existing
-- accounts differ only in case, both are kept: the older one gets the key (and with it every
-- other spelling of the name), the newer one keeps a NULL key and signs in by its exact name.
ALTER TABLE users ADD COLUMN username_key TEXT;

UPDATE users SET username_key = lower(username)
WHERE NOT EXISTS (
    SELECT 1 FROM users AS older
    WHERE lower(older.username) = lower(users.username)
      AND (older.created_at < users.created_at
           OR (older.created_at = users.created_at AND older.id < users.id))
);

CREATE UNIQUE INDEX users_username_normalised ON users (username_key);

-- Recovery codes: the SHA-256 (hex) of each 100-bit code, shown once when 2FA is turned on;
-- each works once in place of a TOTP code (used_at set).
CREATE TABLE recovery_codes (
    user_id TEXT NOT NULL REFERENCES users(id),
    code_hash TEXT NOT NULL,
    used_at BIGINT,
    PRIMARY KEY (user_id, code_hash)
);
