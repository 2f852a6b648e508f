-- Crypto-shredding: each account's key, under which the vote log seals the account's id,
-- and the pseudonym the audit trail names the account by. Erasure deletes both rows (and
-- the salts), after which nothing stored links the person to a ballot or an audit entry.

CREATE TABLE voter_keys (
    voter_id TEXT PRIMARY KEY,
    seal_key BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE user_pseudonyms (
    user_id TEXT PRIMARY KEY,
    pseudonym TEXT NOT NULL UNIQUE
);
