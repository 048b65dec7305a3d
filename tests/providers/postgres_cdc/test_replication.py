"""The replication reader (replication.py) against the real PostgreSQL: the psycopg2 behaviour
that made it stream a temporary copy of the task's slot, and its errors."""

# ruff: noqa: S608 - SQL here names the test's own generated tables; nothing comes from outside

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from dstream_postgres_cdc.config import Target
from dstream_postgres_cdc.errors import CdcError, ConnectionLost
from dstream_postgres_cdc.replication import ReplicationReader, libpq_options
from dstream_postgres_cdc.source import session_settings

from tests.waiting import wait_until

if TYPE_CHECKING:
    from .helpers import Db

pytestmark = pytest.mark.postgres


@pytest.fixture
def plugin() -> str:
    """The reader's own behaviour, with wal2json's options (both plugins stream through it in
    the provider's tests)."""
    return "wal2json"


def reader(db: Db, table: str, **options: str) -> ReplicationReader:
    target = Target("127.0.0.1:5432/test", "dstream", db.name("slot"), "TASK")
    plugin = {"format-version": "2", "include-lsn": "1", "add-tables": f"public.{table}", **options}
    return ReplicationReader(db.dsn, target, f"dstream:{db.prefix}", session_settings("UTC"), list(plugin.items()))


def test_psycopg2_reports_a_flush_position_it_was_never_given(db: Db) -> None:
    """Why the reader streams a temporary copy, never the task's slot: confirm a position,
    let a keepalive arrive with no data message before it, and psycopg2 (pqpath.c,
    pq_read_replication_message) raises its flush position to the keepalive's walEnd and
    sends it with the next feedback. On the task's slot that would move the slot past a
    checkpoint the orchestrator never committed. If this test fails, psycopg2 stopped
    doing that."""
    table = db.create_table("t")
    other = db.create_table("other")
    slot = db.name("slot")
    start = db.create_slot(slot)
    # No begin/commit messages (include-transaction 0) and only this table: nothing arrives
    # while other tables change, only keepalives.
    stream = reader(db, table, **{"include-transaction": "0"})
    stream.start(slot, start)
    try:
        stream.confirm(start)  # flush = the slot's own position: nothing new confirmed
        written = 0

        def keepalive_forwarded() -> bool:
            nonlocal written
            written += 1
            db.execute(f"INSERT INTO {other} VALUES (%s, 'x')", (written,))  # WAL, but no message for us
            stream.wait(0.05)
            assert stream.read(100) == []
            stream.confirm(start)  # the same flush position again (write moved: it is sent)
            found = db.slot(slot)
            return found is not None and found["confirmed"] is not None and found["confirmed"] > start

        wait_until(keepalive_forwarded, "psycopg2 to move the slot past the confirmed position")
    finally:
        stream.close()


def test_streaming_a_missing_slot_is_one_actionable_line(db: Db) -> None:
    table = db.create_table("t")
    stream = reader(db, table)
    with pytest.raises(CdcError) as caught:
        stream.start(db.name("slot"), 0)
    stream.close()
    assert not isinstance(caught.value, ConnectionLost)
    message = str(caught.value)
    assert f'replication slot "{db.name("slot")}" does not exist' in message
    assert "dstream init TASK" in message
    assert "\n" not in message


def test_copying_a_missing_slot_is_one_actionable_line(db: Db) -> None:
    table = db.create_table("t")
    stream = reader(db, table)
    with pytest.raises(CdcError) as caught:
        stream.start(db.name("slot_reader"), 0, copy_of=db.name("slot"))
    stream.close()
    assert "dstream init TASK" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_terminated_replication_connection_is_connection_lost(db: Db) -> None:
    table = db.create_table("t")
    slot = db.name("slot")
    db.create_slot(slot)
    stream = reader(db, table)
    stream.start(db.name("slot_reader"), 0, copy_of=slot)
    try:
        assert db.terminate(f"dstream:{db.prefix}") == 1

        errors: list[str] = []

        def lost() -> bool:
            stream.wait(0.1)
            try:
                stream.read(100)
            except ConnectionLost as exc:
                errors.append(str(exc))
            return bool(errors)

        wait_until(lost, "the reader to notice")
        assert "lost the connection to PostgreSQL" in errors[0]
    finally:
        stream.close()
    wait_until(lambda: db.slot(db.name("slot_reader")) is None, "the copy to go with its connection")


def test_libpq_options_escape_spaces_and_backslashes_and_keep_the_users() -> None:
    options = libpq_options({"TimeZone": "Etc/GMT+3", "application_name": "a b\\c"}, "-c work_mem=64MB")
    assert options == "-c work_mem=64MB -c TimeZone=Etc/GMT+3 -c application_name=a\\ b\\\\c"
