-- Impact statements (issue 22): what each option of a decision would do, as its owner
-- submitted it with the decision; the analysis agents read it. One per decision, replaced
-- while the decision is open.
CREATE TABLE impact_statements (
    decision_id TEXT PRIMARY KEY REFERENCES decisions(id) ON DELETE CASCADE,
    body TEXT NOT NULL,
    submitted_at BIGINT NOT NULL
);
