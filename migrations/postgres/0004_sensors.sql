-- The sensor registry: where each sensor stands and what it reports (body: the Sensor as
-- JSON). Readings from a sensor not listed here are refused.

CREATE TABLE sensors (
    id TEXT PRIMARY KEY,
    region TEXT NOT NULL,
    body TEXT NOT NULL,
    registered_at BIGINT NOT NULL
)
