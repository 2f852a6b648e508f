-- Engine checkpoints in parts, with full checkpoints: a worker's chunk of checkpoint seq is
-- its delta (the entries since its previous checkpoint) and, at a full checkpoint, its base
-- (every entry it restored or wrote before seq), each cut into parts. Rows written before
-- this migration are part 0 of a delta and still load. Once every worker's base of a seq is
-- stored, lower seqs are deleted (see dataflow/src/state.rs). SQLite cannot change a primary
-- key in place: the table is rebuilt.

CREATE TABLE engine_checkpoint_parts (
    seq BIGINT NOT NULL,
    worker BIGINT NOT NULL,
    workers BIGINT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'delta' CHECK (kind IN ('delta', 'base')),
    part BIGINT NOT NULL DEFAULT 0,
    -- JSON array of [partition, end] pairs (on a delta's part 0; empty elsewhere).
    ends TEXT NOT NULL,
    data BLOB NOT NULL,
    written_at BIGINT NOT NULL,
    PRIMARY KEY (seq, worker, kind, part)
);

INSERT INTO engine_checkpoint_parts (seq, worker, workers, kind, part, ends, data, written_at)
    SELECT seq, worker, workers, 'delta', 0, ends, data, written_at FROM engine_checkpoints;

DROP TABLE engine_checkpoints;

ALTER TABLE engine_checkpoint_parts RENAME TO engine_checkpoints;
