"""db.Session's reading of a capture instance's columns, against answers shaped like SQL
Server's (each answer cites the page that documents it): review rows 9 and 12."""

from __future__ import annotations

from typing import Any

import pytest
from dstream_mssql_cdc.catalog import CaptureInstance
from dstream_mssql_cdc.changes import ResultSet
from dstream_mssql_cdc.config import MssqlCdcConfig, Target
from dstream_mssql_cdc.db import Session
from dstream_mssql_cdc.errors import InstanceGone, translate

pytestmark = pytest.mark.unit

CONN = "DRIVER={FreeTDS};SERVER=db;PORT=1433;DATABASE=shop;UID=dstream;PWD=hunter22;TDS_Version=7.4"
TARGET = Target.from_config(MssqlCdcConfig.model_validate({"connection_string": CONN}), "orders")
FILES = CaptureInstance("dbo_Files", "dbo", "Files", 303, 1, key=("hash",))
# sys.sp_cdc_get_captured_columns, "Result sets": character_maximum_length is the "maximum character
# length of the character-based column; otherwise, NULL" (so NULL for binary/varbinary).
CAPTURED = (
    "column_name",
    "column_ordinal",
    "data_type",
    "character_maximum_length",
    "numeric_precision",
    "numeric_scale",
    "datetime_precision",
)


class Answering(Session):
    """A Session whose statements are answered here (no driver)."""

    def __init__(self, answers: dict[str, Any]) -> None:
        super().__init__(CONN, TARGET, 15, 60)
        self.answers = answers
        self.sent: list[str] = []

    def query(self, sql: str, *params: Any) -> ResultSet:
        self.sent.append(sql)
        for marker, answer in self.answers.items():
            if marker in sql:
                if isinstance(answer, Exception):
                    raise answer
                return answer  # type: ignore[no-any-return]
        raise AssertionError(f"unexpected statement: {sql}")


def captured(*rows: tuple[Any, ...]) -> ResultSet:
    return ResultSet(CAPTURED, list(rows))


def test_an_instance_dropped_before_its_columns_are_read_is_gone_not_denied() -> None:
    # sys.sp_cdc_get_captured_columns, "Remarks": a caller that cannot see the instance gets
    # "error 22981 (Object does not exist or access is denied.)"
    gone = translate(
        "42000",
        "[42000] [FreeTDS][SQL Server]Object does not exist or access is denied. (22981) (SQLExecDirectW)",
        TARGET,
    )
    session = Answering({"sp_cdc_get_captured_columns": gone})
    with pytest.raises(InstanceGone) as caught:
        session.captured_columns(FILES)
    assert caught.value.instance == "dbo_Files"


def test_a_null_column_ordinal_is_the_instance_gone_not_a_type_error() -> None:
    session = Answering(
        {
            "sp_cdc_get_captured_columns": captured(("body", 1, "nvarchar", -1, None, None, None)),
            "sys.fn_cdc_get_column_ordinal": ResultSet(("",), [(None,)]),
        }
    )
    with pytest.raises(InstanceGone):
        session.captured_columns(FILES)


def test_binary_lengths_come_from_sys_columns_when_the_procedure_gives_none() -> None:
    session = Answering(
        {
            "sp_cdc_get_captured_columns": captured(
                ("hash", 1, "binary", None, None, None, None),
                ("blob", 2, "varbinary", None, None, None, None),
                ("name", 3, "nvarchar", 20, None, None, None),
            ),
            "FROM sys.columns": ResultSet(("name", "max_length"), [("hash", 32), ("blob", -1), ("name", 40)]),
            "sys.fn_cdc_get_column_ordinal": ResultSet(("",), [(2,)]),
        }
    )
    columns = {c.name: c for c in session.captured_columns(FILES)}
    assert columns["hash"].sql_type == "binary(32)"  # a key bound CONVERT(binary(32), ?, 1), not varbinary(30)
    assert columns["blob"].lob  # varbinary(max): its unchanged before-image is marked unavailable
    assert columns["blob"].ordinal == 2
    assert columns["name"].max_length == 20  # character lengths stay the procedure's (characters, not bytes)
