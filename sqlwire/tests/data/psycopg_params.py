"""Runs one parameterised query through psycopg 3 in each way a program may send it and
prints the rows of each as JSON, for sqlwire/tests/psycopg.rs to compare with the lake.

Usage: python psycopg_params.py <conninfo> <decision_id> <option>
"""

import json
import sys

import psycopg

conninfo, decision, option = sys.argv[1], sys.argv[2], int(sys.argv[3])

TEXT = (
    "SELECT log_partition, log_offset, option, component FROM votes "
    "WHERE decision_id = %s AND option = %s ORDER BY log_partition, log_offset LIMIT 40"
)
# `%b` sends the parameters in PostgreSQL's binary format (str as text, int as int2/4/8).
BINARY = TEXT.replace("%s", "%b")

CASES = {
    "text": (TEXT, {}),
    "text_prepared": (TEXT, {"prepare": True}),
    "binary": (BINARY, {"binary": True}),
    "binary_prepared": (BINARY, {"binary": True, "prepare": True}),
    # Not prepared on the server: psycopg runs it through the extended protocol anyway.
    "text_unprepared": (TEXT, {"prepare": False}),
}

results = {}
with psycopg.connect(conninfo, autocommit=True) as conn:
    for name, (sql, options) in CASES.items():
        # Twice: a prepared statement is reused the second time.
        for _ in range(2):
            with conn.cursor() as cur:
                cur.execute(sql, (decision, option), **options)
                results[name] = ["|".join(str(cell) for cell in row) for row in cur.fetchall()]
    # A value that carries SQL stays a value.
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM votes WHERE decision_id = %s", ("x' OR '1'='1",))
        results["injected_count"] = cur.fetchone()[0]
    # An untyped value where the lake expects a number is refused as PostgreSQL would.
    with conn.cursor() as cur:
        try:
            cur.execute("SELECT count(*) FROM votes WHERE option = %s", ("1 OR 1=1",))
            results["untyped_not_a_number"] = "accepted"
        except psycopg.errors.InvalidTextRepresentation as error:
            results["untyped_not_a_number"] = error.sqlstate
print(json.dumps(results))
