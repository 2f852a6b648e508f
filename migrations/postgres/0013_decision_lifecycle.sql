-- The decision lifecycle (issue 19): scheduled → open → closed → final, or cancelled by its
-- owner before any vote. Scheduled, open and closed-by-the-clock follow from the window;
-- what the clock cannot tell is stored in decisions.lifecycle (NULL: the window says).
-- A close is an entry of the vote log (schemas/src/close.rs); decision_closes keeps the
-- first of a decision's partition (the smallest offset), decision_results the signed final
-- result, decision_history every status change in order.

ALTER TABLE decisions ADD COLUMN lifecycle TEXT NULL
    CHECK (lifecycle IN ('closed', 'final', 'cancelled'));

CREATE TABLE decision_closes (
    decision_id TEXT PRIMARY KEY,
    log_partition BIGINT NOT NULL,
    log_offset BIGINT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('schedule', 'early', 'cancel')),
    -- µs since the Unix epoch, as the closer stamped the entry.
    closed_at BIGINT NOT NULL,
    -- The closing account's id; NULL for the schedule.
    closed_by TEXT NULL
);

CREATE TABLE decision_results (
    decision_id TEXT PRIMARY KEY,
    -- The signed note over the result.
    statement TEXT NOT NULL,
    -- JSON.
    result TEXT NOT NULL,
    tree_size BIGINT NOT NULL,
    -- Hex.
    root TEXT NOT NULL,
    log_partition BIGINT NOT NULL,
    log_offset BIGINT NOT NULL,
    -- µs since the Unix epoch.
    finalized_at BIGINT NOT NULL
);

CREATE TABLE decision_history (
    seq BIGSERIAL PRIMARY KEY,
    decision_id TEXT NOT NULL,
    -- created, edited, closed, cancelled, final.
    status TEXT NOT NULL,
    -- µs since the Unix epoch.
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    -- JSON.
    detail TEXT NOT NULL
);

CREATE INDEX decision_history_by_decision ON decision_history (decision_id, seq);
CREATE INDEX decisions_by_lifecycle ON decisions (lifecycle, created_at DESC, id);
