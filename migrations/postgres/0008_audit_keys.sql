-- Keyed audit entries, anchored audit heads, TOTP secrets sealed at rest.
--
-- hmac: HMAC-SHA256 of the entry under the audit key, which lives outside the database
-- (<data>/keys/audit-hmac.key); NULL on entries written before the store had the key. The
-- column is added, not filled: the append-only triggers of 0005 refuse to change a row.
ALTER TABLE audit_trail ADD COLUMN hmac TEXT;

-- The audit trail's head (seq, chain hash) as entry entry_index of an anchor batch.
CREATE TABLE audit_anchors (
    batch_id BIGINT PRIMARY KEY REFERENCES anchor_batches(batch_id),
    entry_index BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL
);

CREATE INDEX audit_anchors_seq ON audit_anchors (seq);

-- TOTP secrets sealed under the secrets key (<data>/keys/secrets.key, XChaCha20-Poly1305,
-- the user id as associated data). totp_secret keeps only secrets written before this
-- migration, until the first start with the key seals them and clears it.
ALTER TABLE users ADD COLUMN totp_secret_sealed BYTEA;
