-- Decision search: the fields a search filters on, as columns (the body stays the
-- decision as stored), and an FTS5 index over title and description kept in step by
-- triggers. The FTS table holds its own copy keyed by the decision's id rather than
-- following the decisions table's implicit rowid, which a VACUUM may renumber.

ALTER TABLE decisions ADD COLUMN title TEXT NOT NULL DEFAULT '';
ALTER TABLE decisions ADD COLUMN description TEXT NOT NULL DEFAULT '';
ALTER TABLE decisions ADD COLUMN region TEXT NOT NULL DEFAULT '';
ALTER TABLE decisions ADD COLUMN method TEXT NOT NULL DEFAULT 'single_choice';

UPDATE decisions SET
    title = COALESCE(json_extract(body, '$.title'), ''),
    description = COALESCE(json_extract(body, '$.description'), ''),
    region = COALESCE(json_extract(body, '$.region'), ''),
    method = COALESCE(json_extract(body, '$.method'), 'single_choice');

CREATE INDEX decisions_newest ON decisions (created_at DESC, id);
CREATE INDEX decisions_by_region ON decisions (region, created_at DESC, id);

CREATE VIRTUAL TABLE decisions_fts USING fts5(
    decision_id UNINDEXED,
    title,
    description,
    tokenize = 'porter unicode61'
);

INSERT INTO decisions_fts (decision_id, title, description)
    SELECT id, title, description FROM decisions;

CREATE TRIGGER decisions_fts_insert AFTER INSERT ON decisions
BEGIN
    INSERT INTO decisions_fts (decision_id, title, description)
        VALUES (new.id, new.title, new.description);
END;

CREATE TRIGGER decisions_fts_update AFTER UPDATE OF title, description ON decisions
BEGIN
    DELETE FROM decisions_fts WHERE decision_id = old.id;
    INSERT INTO decisions_fts (decision_id, title, description)
        VALUES (new.id, new.title, new.description);
END;

CREATE TRIGGER decisions_fts_delete AFTER DELETE ON decisions
BEGIN
    DELETE FROM decisions_fts WHERE decision_id = old.id;
END;
