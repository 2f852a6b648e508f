"""DuckDB over the same lake files: the second baseline of `canopy-bench analytics`.

Reads one JSON request on stdin:
    {"votes": [file, ...], "decisions": file, "threads": n, "repeat": n,
     "queries": [{"name": ..., "sql": ...}, ...]}
and prints one JSON line: DuckDB's version, and per query the time of each run and the
answer's rows (dates as days since 1970-01-01 and timestamps as microseconds, as the bench
compares them with DataFusion's).

Each run materialises the answer in a temporary table inside DuckDB, as DataFusion
collects its Arrow batches: converting rows to Python objects is not part of the timing.
"""

import datetime
import json
import sys
import time

import duckdb

EPOCH_DAY = datetime.date(1970, 1, 1)
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def plain(value):
    if isinstance(value, datetime.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)
        delta = moment - EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if isinstance(value, datetime.date):
        return (value - EPOCH_DAY).days
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return value


def files(paths):
    """A list literal of file paths (a view's definition takes no parameters)."""
    return "[" + ", ".join("'" + path.replace("'", "''") + "'" for path in paths) + "]"


def main():
    request = json.load(sys.stdin)
    con = duckdb.connect(":memory:")
    con.execute(f"SET threads = {int(request['threads'])}")
    con.execute("SET TimeZone = 'UTC'")
    # The files' own `date` column, not one guessed from the date=… folder names.
    con.execute(f"CREATE VIEW votes AS SELECT * FROM read_parquet({files(request['votes'])}, hive_partitioning = false)")
    con.execute(f"CREATE VIEW decisions AS SELECT * FROM read_parquet({files([request['decisions']])})")
    answers = []
    for query in request["queries"]:
        runs = []
        for _ in range(int(request["repeat"])):
            started = time.perf_counter()
            con.execute(f"CREATE OR REPLACE TEMP TABLE answer AS {query['sql']}")
            runs.append((time.perf_counter() - started) * 1e3)
        rows = con.execute("SELECT * FROM answer").fetchall()
        answers.append({"name": query["name"], "runs_ms": runs, "rows": [[plain(v) for v in row] for row in rows]})
        print(f"{query['name']}: DuckDB fastest {min(runs) / 1e3:.3f} s", file=sys.stderr)
    print(json.dumps({"version": duckdb.__version__, "queries": answers}))


if __name__ == "__main__":
    main()
