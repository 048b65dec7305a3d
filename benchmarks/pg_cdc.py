"""PostgreSQL CDC end to end, against PostgreSQL's own `pg_recvlogical` in the same run.

Throughput (two workloads: 1M inserts of ~100 B rows; a mix of updates and deletes of as
many rows): the changes are committed first (transactions of 10K changes), then caught up
twice from two slots created at the same point, with the same plugin and options:

- peer: `pg_recvlogical --start --endpos` (the server's streaming replication protocol,
  each plugin's output to a file, no fsync): process start to exit; for wal2json and pgoutput;
- dstream: `dstream run` (provider_path, file output without fsync): the run's start to
  the last line written.

Latency: 1K single-row transactions a second for a few seconds while `dstream run` streams
(default settings: the provider streams over the replication protocol, so there is no poll
interval to tune); per change, the time from its commit (`CommitTime`, the server's clock,
the same machine) to the moment its line is seen in the output file (read every
millisecond).

Needs the local PostgreSQL (`make services`), the provider installed and `pg_recvlogical`
(Debian's postgresql-client); profile a run with ``BENCH_PG_PROFILE=DIR`` (py-spy).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

DSN = os.environ.get("DSTREAM_TEST_PG_DSN", "postgresql://dstream:dstream@127.0.0.1:5432/dstream_test")
# Slots are the server's, not a database's: BENCH_PG_SLOT keeps two runs on one server apart.
SLOT = os.environ.get("BENCH_PG_SLOT", "dstream_bench")
PEER_SLOT = f"{SLOT}_peer"
TABLE = "public.bench_orders"
PER_TXN = 10_000
TASK = """
task "pgbench" {{
  input {{
    provider_path = "postgres-cdc-input-provider"
    config {{
      dsn = env("BENCH_PG_DSN")
      tables = ["{table}"]
      slot_name = "{slot}"
      {settings}
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
CATCH_UP = "batch_size = 100000\n      poll_interval = 0.05\n      max_poll_interval = 0.5"
# The provider's decoding options (provider.py, _decoding_options), given to pg_recvlogical as -o.
WAL2JSON_OPTIONS = {
    "format-version": "2",
    "include-lsn": "1",
    "include-timestamp": "1",
    "include-xids": "1",
    "include-types": "0",
    "add-tables": TABLE,
}
# pgoutput's (provider.py, _decoding_options), the publication named like the slot (infra.py).
PGOUTPUT_OPTIONS = {"proto_version": "1", "messages": "true"}
# ~100 B rows: id, customer, amount, a short note and a timestamp (an insert's envelope is ~330 B).
CREATE = (
    "CREATE TABLE bench_orders (id bigserial PRIMARY KEY, customer int NOT NULL, "
    "amount numeric(12,2) NOT NULL, note text NOT NULL, created timestamptz NOT NULL DEFAULT now())"
)
INSERT = (
    "INSERT INTO bench_orders (customer, amount, note) SELECT g %% 1000, g * 1.25, 'order ' || g "
    "FROM generate_series(%s::bigint, %s::bigint) g"
)


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


def _recvlogical() -> str | None:
    found = shutil.which("pg_recvlogical")
    if found:
        return found
    for version in ("17", "16", "15", "14", "13"):
        path = Path(f"/usr/lib/postgresql/{version}/bin/pg_recvlogical")
        if path.exists():
            return str(path)
    return None


class _Bench:
    def __init__(self, tmp: Path, recvlogical: str) -> None:
        import psycopg

        self.psycopg = psycopg
        self.tmp = tmp
        self.recvlogical = recvlogical
        self.env = {**os.environ, "BENCH_PG_DSN": DSN}
        self.dstream = [sys.executable, "-m", "dstream"]
        self.profile = os.environ.get("BENCH_PG_PROFILE")

    def sql(self, query: str, params: Any = ()) -> list[tuple[Any, ...]]:
        with self.psycopg.connect(DSN, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def cleanup(self) -> None:
        self.sql(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
            " WHERE slot_name IN (%s, %s) AND NOT active",
            (SLOT, PEER_SLOT),
        )
        self.sql("DROP TABLE IF EXISTS bench_orders")

    def task(self, name: str, settings: str) -> Path:
        out = self.tmp / f"{name}.jsonl"
        out.unlink(missing_ok=True)
        hcl = self.tmp / f"{name}.hcl"
        hcl.write_text(TASK.format(table=TABLE, slot=SLOT, settings=settings, out=out))
        return hcl

    def dstream_cmd(self, verb: str, hcl: Path) -> list[str]:
        return [*self.dstream, verb, "pgbench", "-f", str(hcl)]

    def init(self, hcl: Path, peer: str | None) -> None:
        """``dstream init`` (the slot, and for pgoutput the publication first), then the peer's
        slot with the same plugin right after: both start at the same point."""
        shutil.rmtree(self.tmp / ".dstream", ignore_errors=True)
        subprocess.run(self.dstream_cmd("init", hcl), env=self.env, cwd=self.tmp, check=True, capture_output=True)
        if peer:
            self.sql("SELECT pg_create_logical_replication_slot(%s, %s)", (PEER_SLOT, peer))

    def destroy(self, hcl: Path) -> None:
        subprocess.run(self.dstream_cmd("destroy", hcl), env=self.env, cwd=self.tmp, check=False, capture_output=True)

    # -- throughput ---------------------------------------------------------------------

    def throughput(self, workload: str, changes: int, plugin: str) -> dict[str, Any]:
        self.cleanup()
        self.sql(CREATE)
        if workload == "mixed":  # the rows exist before the slots: only their updates and deletes stream
            for start in range(0, changes, 100_000):
                self.sql(INSERT, (start + 1, start + 100_000))
            self.sql("VACUUM ANALYZE bench_orders")
        hcl = self.task(workload, f'plugin = "{plugin}"\n      {CATCH_UP}')
        self.init(hcl, peer=plugin)
        for start in range(0, changes, PER_TXN):
            if workload == "inserts":
                self.sql(INSERT, (start + 1, start + PER_TXN))
            else:  # each transaction: half updates, half deletes, of rows it alone touches
                half = start + PER_TXN // 2
                with self.psycopg.connect(DSN) as conn:
                    conn.execute(
                        "UPDATE bench_orders SET amount = amount + 1, note = note || '!' WHERE id BETWEEN %s AND %s",
                        (start + 1, half),
                    )
                    conn.execute("DELETE FROM bench_orders WHERE id BETWEEN %s AND %s", (half + 1, start + PER_TXN))
        end = self.sql("SELECT pg_current_wal_flush_lsn()::text")[0][0]
        peer = self.peer(workload, end, changes, plugin)
        ours = self.ours(workload, hcl, changes)
        self.destroy(hcl)
        self.cleanup()
        row: dict[str, Any] = {
            "workload": workload,
            "plugin": plugin,
            "changes": changes,
            "pg_recvlogical": peer,
            "dstream": ours,
        }
        if "changes_per_s" in peer and "changes_per_s" in ours:
            row["ratio"] = round(ours["changes_per_s"] / peer["changes_per_s"], 2)
        return row

    def peer(self, workload: str, end: str, changes: int, plugin: str) -> dict[str, Any]:
        out = self.tmp / f"{workload}.peer.jsonl"
        out.unlink(missing_ok=True)
        cmd = [self.recvlogical, "-d", DSN, "-S", PEER_SLOT, "--start", "-E", end, "-f", str(out), "-F", "0", "-s", "1"]
        options = WAL2JSON_OPTIONS if plugin == "wal2json" else {**PGOUTPUT_OPTIONS, "publication_names": SLOT}
        for key, value in options.items():
            cmd += ["-o", f"{key}={value}"]
        started = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        elapsed = time.monotonic() - started
        if proc.returncode != 0:
            return {"failed": proc.stderr[-1500:]}
        text = out.read_bytes()
        # pgoutput's binary messages cannot be counted reliably in pg_recvlogical's newline-joined
        # file; --endpos already means it received everything up to the end.
        found = sum(text.count(f'"action":"{a}"'.encode()) for a in "IUD") if plugin == "wal2json" else changes
        if found != changes:
            return {"failed": f"pg_recvlogical wrote {found} of {changes} changes"}
        return {"seconds": round(elapsed, 2), "changes_per_s": round(changes / elapsed)}

    def ours(self, workload: str, hcl: Path, changes: int) -> dict[str, Any]:
        count = _LineCounter(self.tmp / f"{workload}.jsonl")
        started = time.monotonic()
        proc = subprocess.Popen(
            self.dstream_cmd("run", hcl), env=self.env, cwd=self.tmp, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
        )
        spies = self._spy(proc.pid, workload)
        deadline = started + 900
        while count() < changes and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)  # polling the output file: the measurement's resolution
        elapsed = time.monotonic() - started
        delivered = count()
        cpu = _cpu_seconds(proc.pid)
        proc.terminate()
        _, err = proc.communicate(timeout=120)
        for spy in spies:
            spy.wait(timeout=120)
        if delivered < changes:
            return {"failed": f"only {delivered} of {changes} changes arrived: {err.decode()[-1500:]}"}
        return {"seconds": round(elapsed, 2), "changes_per_s": round(changes / elapsed), "cpu_s": cpu}

    def _spy(self, pid: int, name: str) -> list[subprocess.Popen[bytes]]:
        """py-spy on the orchestrator and (once it started) the provider, until the run ends."""
        if not self.profile:
            return []
        import psutil

        out = Path(self.profile)
        out.mkdir(parents=True, exist_ok=True)
        spies = []
        deadline = time.monotonic() + 20
        provider = None
        while provider is None and time.monotonic() < deadline:
            for child in psutil.Process(pid).children(recursive=True):
                if "postgres-cdc" in " ".join(child.cmdline()):
                    provider = child.pid
            time.sleep(0.01)  # waiting for the provider process to appear
        for role, target in (("orchestrator", pid), ("provider", provider)):
            if target is None:
                continue
            output = str(out / f"{name}-{role}.txt")
            cmd = [
                "py-spy",
                "record",
                "--pid",
                str(target),
                "--rate",
                "200",
                "--format",
                "raw",
                "--output",
                output,
                "--idle",
            ]
            spies.append(
                subprocess.Popen([*cmd, "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        return spies

    # -- latency ------------------------------------------------------------------------

    def latency(self, seconds: float, plugin: str, rate: int = 1000) -> dict[str, Any]:
        self.cleanup()
        self.sql(CREATE)
        hcl = self.task("latency", f'plugin = "{plugin}"')
        self.init(hcl, peer=None)
        out = self.tmp / "latency.jsonl"
        proc = subprocess.Popen(
            self.dstream_cmd("run", hcl), env=self.env, cwd=self.tmp, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
        )
        seen: list[float] = []
        lines: list[bytes] = []
        try:
            tail = _Tail(out)
            self.sql("INSERT INTO bench_orders (customer, amount, note) VALUES (0, 0, 'warm-up')")
            deadline = time.monotonic() + 60
            while not tail.read(seen, lines) and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.001)
            if not lines:
                raise RuntimeError("the warm-up change never arrived")
            seen.clear()
            lines.clear()
            count = int(seconds * rate)
            writer = threading.Thread(target=self._paced_inserts, args=(count, rate), daemon=True)
            writer.start()
            deadline = time.monotonic() + seconds + 60
            while len(lines) < count and time.monotonic() < deadline and proc.poll() is None:
                tail.read(seen, lines)
                time.sleep(0.001)  # the measurement's resolution: 1 ms
            writer.join(timeout=60)
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=120)
            self.destroy(hcl)
            self.cleanup()
        if len(lines) < count:
            return {"failed": f"only {len(lines)} of {count} changes arrived: {err.decode()[-1500:]}"}
        latencies = sorted(
            (at - datetime.fromisoformat(json.loads(line)["metadata"]["CommitTime"]).timestamp()) * 1000
            for at, line in zip(seen, lines, strict=True)
        )
        return {
            "rate_per_s": rate,
            "changes": count,
            "p50_ms": round(statistics.median(latencies), 1),
            "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 1),
            "max_ms": round(latencies[-1], 1),
            "settings": f'default settings, plugin = "{plugin}"',
        }

    def _paced_inserts(self, count: int, rate: int) -> None:
        with self.psycopg.connect(DSN, autocommit=True) as conn:
            started = time.monotonic()
            for i in range(count):
                wait = started + i / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)  # pacing the load at `rate` commits a second
                conn.execute("INSERT INTO bench_orders (customer, amount, note) VALUES (%s, 1.25, 'paced')", (i,))


def _cpu_seconds(pid: int) -> dict[str, float]:
    """CPU time (user + system) so far of the orchestrator and of each provider process."""
    import psutil

    def used(process: psutil.Process) -> float:
        times = process.cpu_times()
        return round(times.user + times.system, 2)

    root = psutil.Process(pid)
    out = {"orchestrator": used(root)}
    for child in root.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            line = " ".join(child.cmdline())
            role = "provider" if "postgres-cdc" in line else "file_output" if "file-output" in line else None
            if role:
                out[role] = used(child)
    return out


class _Tail:
    """New complete lines of a growing file, each with the wall-clock time it was first seen."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.rest = b""

    def read(self, seen: list[float], lines: list[bytes]) -> int:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return 0
        now = time.time()
        self.offset += len(data)
        *complete, self.rest = (self.rest + data).split(b"\n")
        lines.extend(complete)
        seen.extend([now] * len(complete))
        return len(complete)


def run(quick: bool) -> dict[str, Any]:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return {"skipped": "psycopg is not installed"}
    recvlogical = _recvlogical()
    if recvlogical is None:
        return {"skipped": "pg_recvlogical is not installed (Debian: postgresql-client)"}
    changes = 100_000 if quick else 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        bench = _Bench(Path(tmp), recvlogical)
        workloads = os.environ.get("BENCH_PG_WORKLOADS", "inserts,mixed,latency").split(",")
        plugins = os.environ.get("BENCH_PG_PLUGINS", "wal2json,pgoutput").split(",")
        rows = [bench.throughput(w, changes, p) for p in plugins for w in ("inserts", "mixed") if w in workloads]
        latency = []
        if "latency" in workloads:
            latency = [bench.latency(3 if quick else 10, p) for p in plugins]
    result: dict[str, Any] = {
        "goal": "PostgreSQL CDC >= 0.6x pg_recvlogical (same slot options); commit-to-output p99 < 100 ms at 1K/s",
        "rows": rows,
        "detail": f"Transactions of {PER_TXN} changes committed first, then caught up from two slots created at the "
        "same point, with the same plugin and options: `pg_recvlogical --start --endpos` (to a file, no fsync; process "
        "start to exit) and "
        "`dstream run` (provider_path, file output without fsync; the run's start to the last line)",
    }
    if latency:
        result["latency"] = latency
    return result
