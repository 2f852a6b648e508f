-- Engine checkpoints in parts, with full checkpoints: a worker's chunk of checkpoint seq is
-- its delta (the entries since its previous checkpoint) and, at a full checkpoint, its base
-- (every entry it restored or wrote before seq), each cut into parts that stay far below a
-- bytea's 1 GB limit. Rows written before this migration are part 0 of a delta and still
-- load. Once every worker's base of a seq is stored, lower seqs are deleted (see
-- dataflow/src/state.rs).

ALTER TABLE engine_checkpoints ADD COLUMN kind TEXT NOT NULL DEFAULT 'delta'
    CHECK (kind IN ('delta', 'base'));
ALTER TABLE engine_checkpoints ADD COLUMN part BIGINT NOT NULL DEFAULT 0;
ALTER TABLE engine_checkpoints DROP CONSTRAINT engine_checkpoints_pkey;
ALTER TABLE engine_checkpoints ADD PRIMARY KEY (seq, worker, kind, part);
