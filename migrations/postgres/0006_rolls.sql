-- Voter rolls: censuses an operator imports, one row per person (an opaque identifier, e.g.
-- a hash of a residence-register number, and the region it counts in). Each entry is
-- claimed by at most one account with its one-time invitation code; only the code's
-- SHA-256 is stored, so reading this table does not let anyone claim an entry.

CREATE TABLE rolls (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE roll_entries (
    -- The entry's own id: the ballot's subject in the roll's decisions, so one entry
    -- casts one ballot whatever account holds it.
    id TEXT PRIMARY KEY,
    roll_id TEXT NOT NULL REFERENCES rolls(id),
    identifier TEXT NOT NULL,
    region TEXT NOT NULL,
    -- NULL once claimed (a code works once); a revocation issues a new one.
    code_hash TEXT UNIQUE,
    claimed_by TEXT,
    claimed_at BIGINT,
    -- Set when the claimant was erased: the entry has voted its last.
    spent_at BIGINT,
    UNIQUE (roll_id, identifier)
);

-- One entry per account and roll.
CREATE UNIQUE INDEX roll_entries_one_per_account ON roll_entries (roll_id, claimed_by)
    WHERE claimed_by IS NOT NULL;
