-- The audit trail is append-only: a row, once written, is neither changed nor removed.
-- Whoever holds the database file can still drop these triggers; the hash chain (and its
-- anchoring) is what shows a rewrite, these make an honest mistake or a stray tool fail.
CREATE TRIGGER audit_trail_no_update BEFORE UPDATE ON audit_trail
BEGIN
    SELECT RAISE(ABORT, 'audit_trail is append-only');
END;

CREATE TRIGGER audit_trail_no_delete BEFORE DELETE ON audit_trail
BEGIN
    SELECT RAISE(ABORT, 'audit_trail is append-only');
END;
