-- The vote record: per-voter salts behind the voter commitments, signed checkpoints of
-- each decision's Merkle log, and the batches they were anchored in.

CREATE TABLE voter_salts (
    voter_id TEXT PRIMARY KEY,
    -- NULL once erased: the voter's leaves can no longer be linked to them.
    salt BLOB,
    created_at BIGINT NOT NULL,
    erased_at BIGINT
);

CREATE TABLE checkpoints (
    decision_id TEXT NOT NULL,
    tree_size BIGINT NOT NULL,
    root TEXT NOT NULL,
    note TEXT NOT NULL,
    log_partition BIGINT NOT NULL,
    log_offset BIGINT NOT NULL,
    cut_at BIGINT NOT NULL,
    batch_id BIGINT,
    entry_index BIGINT,
    PRIMARY KEY (decision_id, tree_size)
);

CREATE INDEX checkpoints_unanchored ON checkpoints (batch_id, decision_id, tree_size);

CREATE TABLE anchor_batches (
    batch_id BIGINT PRIMARY KEY,
    root TEXT NOT NULL,
    entry_count BIGINT NOT NULL,
    target TEXT NOT NULL,
    chain_batch_id BIGINT,
    tx_hash TEXT,
    block_number BIGINT,
    created_at BIGINT NOT NULL,
    confirmed_at BIGINT
);
