"""SQL Server LSNs: binary(10) ↔ integers ↔ text, ordering, increment/decrement."""

from __future__ import annotations

import random

import pytest
from dstream_mssql_cdc.lsn import (
    LSN_MAX,
    decrement_lsn,
    format_lsn,
    from_bytes,
    increment_lsn,
    parse_log_lsn,
    parse_lsn,
    to_bytes,
)

from .fixtures import T1
from .server import lsn as lsn_int


def lsn(vlf: int, block: int, slot: int) -> bytes:
    """A binary(10) LSN from its VLF:block:slot parts, as SQL Server stores it."""
    return to_bytes(lsn_int(vlf, block, slot))


pytestmark = pytest.mark.unit


def test_text_is_20_upper_case_hex_digits_without_0x_as_upstream_printed_it() -> None:
    value = T1
    assert format_lsn(value) == "0000002A000001F00003"
    assert format_lsn(0) == "00000000000000000000"
    assert format_lsn(LSN_MAX) == "F" * 20


@pytest.mark.parametrize(
    "text",
    [
        "0000002A000001F00003",
        "0x0000002A000001F00003",
        "0X0000002a000001f00003",
        " 0000002a000001f00003 ",
        "2A000001F00003",
    ],
)
def test_parse_takes_prefixed_lower_case_and_short_forms(text: str) -> None:
    assert parse_lsn(text) == 0x0000002A000001F00003


def test_parse_takes_the_log_form_vlf_block_slot() -> None:
    assert parse_lsn("0000002a:000001f0:0003") == 0x0000002A000001F00003
    assert parse_log_lsn("0000002a:000001f0:0003") == 0x0000002A000001F00003
    assert parse_log_lsn("2a:1f0:3") == 0x0000002A000001F00003


@pytest.mark.parametrize("text", ["", "0x", "xyz", "1" * 21, "0000002A:000001F0", "0000002A:000001F0:00003", "a::b"])
def test_bad_text_is_rejected_with_the_expected_form(text: str) -> None:
    with pytest.raises(ValueError, match="is not a SQL Server LSN"):
        parse_lsn(text)


def test_parse_log_lsn_is_none_for_what_it_cannot_read() -> None:
    assert parse_log_lsn(None) is None
    assert parse_log_lsn("") is None
    assert parse_log_lsn("42:xyz:1") is None
    assert parse_log_lsn("not an lsn") is None


def test_bytes_round_trip_and_integer_order_is_byte_order() -> None:
    rng = random.Random(6)
    raw = [bytes(rng.randrange(256) for _ in range(10)) for _ in range(300)]
    raw += [lsn(1, 0, 0), lsn(0, 0xFFFFFFFF, 0xFFFF), lsn(0, 0, 1), bytes(10)]
    assert [to_bytes(from_bytes(b)) for b in raw] == raw
    assert sorted(raw) == sorted(raw, key=from_bytes)  # SQL Server compares binary(10) byte by byte
    raw_t1 = to_bytes(T1)
    assert from_bytes(bytearray(raw_t1)) == from_bytes(memoryview(raw_t1)) == from_bytes(raw_t1) == T1


def test_increment_is_fn_cdc_increment_lsn_with_carry_into_block_and_vlf() -> None:
    assert to_bytes(increment_lsn(from_bytes(lsn(0x2A, 0x1F0, 3)))) == lsn(0x2A, 0x1F0, 4)
    assert to_bytes(increment_lsn(from_bytes(lsn(0x2A, 0x1F0, 0xFFFF)))) == lsn(0x2A, 0x1F1, 0)
    assert to_bytes(increment_lsn(from_bytes(lsn(0x2A, 0xFFFFFFFF, 0xFFFF)))) == lsn(0x2B, 0, 0)
    for value in (0, 1, 0xFFFF, 0x10000, T1):
        assert decrement_lsn(increment_lsn(value)) == value
        assert increment_lsn(value) > value


def test_the_ends_of_the_range_have_no_neighbour() -> None:
    with pytest.raises(ValueError, match="no successor"):
        increment_lsn(LSN_MAX)
    with pytest.raises(ValueError, match="no predecessor"):
        decrement_lsn(0)
    with pytest.raises(ValueError, match="out of range"):
        to_bytes(LSN_MAX + 1)
    with pytest.raises(ValueError, match="10 bytes"):
        from_bytes(bytes(11))
