-- Engine checkpoints: each worker's share of the dataflow state added since its previous
-- checkpoint, with the log ends of the partitions it feeds. Checkpoint seq is complete once
-- 'workers' rows of it exist (see dataflow/src/state.rs).

CREATE TABLE engine_checkpoints (
    seq BIGINT NOT NULL,
    worker BIGINT NOT NULL,
    workers BIGINT NOT NULL,
    -- JSON array of [partition, end] pairs.
    ends TEXT NOT NULL,
    data BLOB NOT NULL,
    written_at BIGINT NOT NULL,
    PRIMARY KEY (seq, worker)
)
