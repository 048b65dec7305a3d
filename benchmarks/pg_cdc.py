"""PostgreSQL CDC end to end: 1M row changes committed, then streamed to a file by dstream.

The changes are committed first (100 transactions of 10K inserts), then `dstream run`
catches up: changes/s is the number of changes over the time from the run's start to the
last line written. Needs the local PostgreSQL (`make services`) and the provider installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DSN = os.environ.get("DSTREAM_TEST_PG_DSN", "postgresql://dstream:dstream@127.0.0.1:5432/dstream_test")
TASK = """
task "pgbench" {{
  input {{
    provider_path = "postgres-cdc-input-provider"
    config {{
      dsn = env("BENCH_PG_DSN")
      tables = ["public.bench_orders"]
      slot_name = "dstream_bench"
      batch_size = 100000
      poll_interval = 0.05
      max_poll_interval = 0.5
    }}
  }}
  output {{
    provider_path = "file-output-provider"
    config {{
      path = "{out}"
      fsync = false
    }}
  }}
}}
"""


class _LineCounter:
    """Counts the lines of a growing file, reading only what was appended since last time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.lines = 0

    def __call__(self) -> int:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    self.lines += chunk.count(b"\n")
                    self.offset += len(chunk)
        except FileNotFoundError:
            pass
        return self.lines


def run(quick: bool) -> dict[str, Any]:
    try:
        import psycopg
    except ImportError:
        return {"skipped": "psycopg is not installed"}
    changes = 100_000 if quick else 1_000_000
    per_txn = 10_000
    env = {**os.environ, "BENCH_PG_DSN": DSN}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.jsonl"
        hcl = Path(tmp) / "dstream.hcl"
        hcl.write_text(TASK.format(out=out))
        dstream = [sys.executable, "-m", "dstream"]
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS bench_orders")
            conn.execute(
                "CREATE TABLE bench_orders (id bigserial PRIMARY KEY, customer int NOT NULL, "
                "amount numeric(12,2) NOT NULL, note text NOT NULL, created timestamptz NOT NULL DEFAULT now())"
            )
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE 'dstream_bench%'"
            )
        subprocess.run([*dstream, "init", "pgbench", "-f", str(hcl)], env=env, check=True, capture_output=True)
        with psycopg.connect(DSN, autocommit=True) as conn:
            for start in range(0, changes, per_txn):
                conn.execute(
                    "INSERT INTO bench_orders (customer, amount, note) SELECT g %% 1000, g * 1.25, 'order ' || g "
                    "FROM generate_series(%s::bigint, %s::bigint) g",
                    (start + 1, start + per_txn),
                )
        count = _LineCounter(out)
        started = time.monotonic()
        proc = subprocess.Popen(
            [*dstream, "run", "pgbench", "-f", str(hcl)], env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
        )
        deadline = started + 600
        while count() < changes and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)  # polling the output file: the measurement's resolution
        elapsed = time.monotonic() - started
        delivered = count()
        proc.terminate()
        _, err = proc.communicate(timeout=120)
        subprocess.run([*dstream, "destroy", "pgbench", "-f", str(hcl)], env=env, check=False, capture_output=True)
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS bench_orders")
    if delivered < changes:
        return {"skipped": f"only {delivered} of {changes} changes arrived: {err.decode()[-1500:]}"}
    return {
        "goal": "PostgreSQL CDC >= 50K changes/s, commit to file",
        "changes": changes,
        "seconds": round(elapsed, 2),
        "changes_per_s": round(changes / elapsed),
        "detail": f"{changes // per_txn} transactions of {per_txn} inserts committed first, then caught up by `dstream run` "
        "(provider_path, file output without fsync); time from the run's start to the last line",
    }
