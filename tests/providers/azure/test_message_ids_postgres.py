"""Regression (data loss): a real PostgreSQL initial snapshot through asb-output-provider's
message ids. Its rows all carried ``{TableName, OperationType: "Read", LSN}`` and no other
position, so position ids gave every row of a table the same id, and with duplicate
detection on the broker kept one row per table. Each envelope must get its own id."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import pytest
from dstream_azure.message_ids import MessageIds
from dstream_postgres_cdc import PostgresCdcInputProvider

from dstream import protocol
from tests.providers.postgres_cdc.helpers import Db, LiveInput

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.postgres


@pytest.fixture
def db(pg_dsn: str) -> Iterator[Db]:
    handle = Db(pg_dsn, f"tids_{uuid.uuid4().hex[:8]}")
    try:
        yield handle
    finally:
        handle.cleanup()


def snapshot(db: Db, tables: list[str], rows: int) -> list[dict[str, Any]]:
    """Every envelope of the initial snapshot of ``tables`` (``rows`` in all), in order."""
    config = {
        "dsn": db.dsn,
        "tables": [f"public.{t}" for t in tables],
        "slot_name": db.name("slot"),
        "snapshot": "initial",
        "poll_interval": 0.05,
        "max_poll_interval": 0.2,
    }
    db.create_slot(db.name("slot"))  # what `dstream init` does for the task
    live = LiveInput(PostgresCdcInputProvider, config, task=db.name("task"))
    try:
        live.wait(lambda lv: len(lv.data) >= rows, f"{rows} snapshot rows")
    finally:
        live.stop()
    data = live.data
    assert all(m["metadata"]["OperationType"] == "Read" for m in data)
    return data


def test_every_row_of_a_real_snapshot_gets_its_own_message_id(db: Db) -> None:
    keyed = db.create_table("keyed", "id int PRIMARY KEY, v text")
    keyless = db.create_table("keyless", "v text, n int")
    db.execute(f"ALTER TABLE {keyless} REPLICA IDENTITY FULL")  # as the provider requires of a keyless table
    db.execute(f"INSERT INTO {keyed} SELECT g, 'same value' FROM generate_series(1, 5) g")  # noqa: S608
    # A table without a key, with byte-identical rows: nothing but their place tells them apart.
    db.execute(f"INSERT INTO {keyless} VALUES ('dup', 1), ('dup', 1), ('dup', 1), ('other', 2)")  # noqa: S608
    envelopes = snapshot(db, [keyed, keyless], rows=9)
    assert len(envelopes) == 9

    naive = {(m["metadata"]["TableName"], m["metadata"].get("LSN"), m["metadata"]["OperationType"]) for m in envelopes}
    assert len(naive) < len(envelopes)  # the old id basis: a table's rows shared one id

    def ids(resume: Any) -> list[str]:
        derive = MessageIds(db.name("task"), resume)
        out = []
        for m in envelopes:
            raw = protocol.data(m["data"], m["metadata"]).rstrip(b"\n")
            out.append(derive.next(m["metadata"]["TableName"], m["metadata"], raw))
        return out

    first = ids(None)
    assert len(set(first)) == len(envelopes)  # one id per envelope: the broker keeps every row
    assert ids(None) == first  # the same attempt replayed (same resume checkpoint): the same ids
