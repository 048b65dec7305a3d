"""jq-transform-provider in-process: filtering, reshaping, fan-out, rejects, bad programs."""

from __future__ import annotations

from typing import Any

import jq
import pytest
from dstream_jq import JqTransformProvider
from hypothesis import given, settings
from hypothesis import strategies as st

from dstream import protocol
from dstream.sdk.testing import checkpoint, envelope, run_transform

ROWS = [
    envelope({"id": 1, "ssn": "123"}, {"TableName": "dbo.Orders"}),
    envelope({"id": 2, "ssn": "456"}, {"TableName": "dbo.Audit"}),
    checkpoint({"lsn": 2}),
]


def test_the_issue_example_filters_a_table_and_drops_a_column() -> None:
    program = 'select(.metadata.TableName != "dbo.Audit") | del(.data.ssn)'
    run = run_transform(JqTransformProvider, {"program": program}, ROWS)
    assert run.exit_code == 0
    assert [m["data"] for m in run.data] == [{"id": 1}]
    assert run.checkpoints == [{"lsn": 2}]


def test_fan_out_args_and_null_results() -> None:
    program = "if .data.id == 2 then null else (range($copies) as $n | .data.copy = $n) end"
    run = run_transform(JqTransformProvider, {"program": program, "args": {"copies": 2}}, ROWS)
    assert [(m["data"]["id"], m["data"]["copy"]) for m in run.data] == [(1, 0), (1, 1)]


def test_runtime_errors_and_non_objects_are_rejected_with_the_reason() -> None:
    run = run_transform(
        JqTransformProvider, {"program": 'if .data.id == 1 then error("no ones") else .data.id end'}, ROWS
    )
    reasons = [d["reason"] for d in run.dead_letters]
    assert reasons == ["jq: no ones", "the jq program produced a int, not an object: 2"]
    assert run.checkpoints == [{"lsn": 2}]


def test_a_program_that_does_not_compile_is_a_config_error_naming_it() -> None:
    run = run_transform(JqTransformProvider, {"program": ".data | {"}, ROWS)
    assert run.error is not None
    assert "config.program: jq: error: syntax error" in run.error


def test_the_identity_program_passes_lines_through_unchanged() -> None:
    odd = b'{"metadata": {}, "data": {"b": 1,   "a": 2}}'
    run = run_transform(JqTransformProvider, {}, [odd])
    assert odd + b"\n" in run.raw


# -- batches against one record at a time ------------------------------------------------
#
# The provider runs libjq over many records per call. The reference below runs it over one
# record per call, as the provider did before batching, and says what the stream must be:
# each record's outputs in order, a dead letter with the same reason for each record that
# fails, checkpoints after everything before them.

PROGRAMS = [
    ".",
    "del(.data.s) | .metadata.Seen = true",  # one output each (the benchmark's kind)
    "select(.data.n % 3 == 0)",  # zero or one
    ".data.n as $n | range($n % 4) as $i | .data.i = $i",  # zero to three
    'if .data.n % 5 == 0 then error("five") else . end',  # errors
    'if .data.n % 5 == 0 then error({"bad": .data.n}) else . end',  # a non-string error
    '., (if .data.n % 3 == 0 then error("after one output") else empty end)',  # output, then error
    "if .data.n % 7 == 0 then .data.n else . end",  # a non-object: rejected
    "if .data.n % 2 == 0 then null else . end",  # null: dropped
    "if .data.n % 4 == 0 then error(null) else . end",  # no output and no message
    "if .data.n % 3 == 0 then (., halt) else . end",  # halt ends one record's program
    "if .data.n % 3 == 0 then input else . end",  # no further input for a record
    "[., inputs] | .[0]",
    ".data.n + .data.s | {data: {sum: .}, metadata: {}}",  # a type error for numbers + strings
    'try error("x") catch {data: ., metadata: {}}',
    "limit(2; ., .) | .metadata.loc = $__loc__.line",
    "def twice: ., .; twice # a trailing comment",
    "first(.data.missing[]?, .)",
]

record = st.builds(
    lambda n, s, extra: envelope({"n": n, "s": s, **extra}, {"TableName": "dbo.T"}),
    st.integers(0, 40),
    st.one_of(st.text(max_size=8), st.integers(-5, 5)),
    st.dictionaries(
        st.sampled_from(["f", "g"]), st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.none())
    ),
)
odd_line = st.sampled_from(
    [
        b"",
        b"   ",
        b"[1]",
        b'{"a":',
        b"1}",
        b"{} {}",
        b'{"checkpoint": 5',
        b'{"data": {"checkpoint": 1}}',
        b'{"a": "\xff"}',
    ]
)
stream = st.lists(
    st.one_of(record, record, record, st.builds(lambda n: checkpoint({"at": n}), st.integers(0, 99)), odd_line),
    max_size=40,
)


def reference(program: str, lines: list[bytes]) -> list[dict[str, Any]]:
    """What the stream must be, one record per libjq call."""
    compiled = jq.compile(program)
    expected: list[dict[str, Any]] = []
    for line in (sent.removesuffix(b"\n") for sent in lines):
        if not line.strip():
            continue
        try:
            parsed = protocol.decode_object(line)
        except protocol.DecodeError:
            parsed = None
        if parsed is not None and "checkpoint" in parsed and "data" not in parsed:
            expected.append(parsed)
            continue
        body: Any = parsed if parsed is not None else line.decode("utf-8", "replace")
        try:
            outputs = compiled.input_text(line.decode()).all()
        except ValueError as exc:
            expected.append({"dead_letter": {"reason": f"jq: {exc}", "envelope": body}})
            continue
        bad = [o for o in outputs if o is not None and not isinstance(o, dict)]
        if bad:
            reason = f"the jq program produced a {type(bad[0]).__name__}, not an object: {str(bad[0])[:80]}"
            expected.append({"dead_letter": {"reason": reason, "envelope": body}})
            continue
        expected.extend(o for o in outputs if o is not None)
    return expected


class SmallBatches(JqTransformProvider):
    sub_batch = 3  # many sub-batch edges in a short stream


@settings(max_examples=150, deadline=None)
@given(program=st.sampled_from(PROGRAMS), lines=stream, small=st.booleans())
def test_batches_give_exactly_what_one_record_at_a_time_gives(program: str, lines: list[bytes], small: bool) -> None:
    run = run_transform(SmallBatches if small else JqTransformProvider, {"program": program}, lines)
    assert run.exit_code == 0
    if program == ".":  # every line byte for byte, whatever it holds
        sent = [line.removesuffix(b"\n") for line in lines]
        assert run.raw.split(b"\n", 1)[1] == b"".join(line + b"\n" for line in sent if line.strip())
        return
    assert run.messages == reference(program, lines)
    assert not run.other


class Counting(JqTransformProvider):
    sub_batch = 4

    def __init__(self, config: Any, ctx: Any) -> None:
        super().__init__(config, ctx)
        self.one_by_one: list[int] = []

    def transform(self, envelope: Any) -> list[Any]:
        self.one_by_one.append(envelope.data["n"])
        return super().transform(envelope)


def counting_run(program: str, lines: list[bytes]) -> list[int]:
    seen: list[int] = []

    class Spy(Counting):
        def close(self) -> None:
            seen.extend(self.one_by_one)

    run = run_transform(Spy, {"program": program}, lines)
    assert run.messages == reference(program, lines)
    return seen


ROWS_0_TO_9 = [envelope({"n": n, "s": "x"}) for n in range(10)]


def test_a_clean_stream_never_goes_one_record_at_a_time() -> None:
    assert counting_run("select(.data.n % 3 == 0) | ., .", ROWS_0_TO_9) == []


def test_only_the_failing_records_go_through_the_reference() -> None:
    program = 'if .data.n % 5 == 0 then error("five") elif .data.n == 7 then 7 else . end'
    assert counting_run(program, ROWS_0_TO_9) == [0, 5, 7]


@pytest.mark.parametrize("skip", ["empty", 'error("skipped")'])
def test_arrays_that_cannot_be_attributed_send_the_batch_one_by_one(skip: str) -> None:
    # libjq gives one array per record; were a record ever to give none (as halt would),
    # the count would shift. Simulated: record 2 gives no array, record 5 (then counted as
    # 4, which succeeds on its own) a jq error. Nothing can be trusted: all one by one.
    seen: list[int] = []

    class Shifted(Counting):
        def __init__(self, config: Any, ctx: Any) -> None:
            super().__init__(config, ctx)
            self.batched = jq.compile(f"if .data.n == 2 then empty elif .data.n == 5 then {skip} else [.] end")

        def close(self) -> None:
            seen.extend(self.one_by_one)

    program = 'if .data.n == 5 then error("skipped") else . end'
    run = run_transform(Shifted, {"program": program}, ROWS_0_TO_9)
    assert run.messages == reference(program, ROWS_0_TO_9)
    assert seen == list(range(10))


def test_programs_that_read_inputs_run_one_record_at_a_time() -> None:
    assert counting_run("[., inputs] | .[0]", ROWS_0_TO_9[:3]) == [0, 1, 2]


class Raising(JqTransformProvider):
    def transform_batch(self, envelopes: list[Any]) -> list[Any] | None:
        raise RuntimeError("batch engine broke")


class Short(JqTransformProvider):
    def transform_batch(self, envelopes: list[Any]) -> list[Any] | None:
        return super().transform_batch(envelopes)[:-1]  # type: ignore[index]


def test_a_batch_that_raises_or_miscounts_goes_one_record_at_a_time() -> None:
    program = 'if .data.n == 4 then error("four") else .data.m = 1 end'
    for cls in (Raising, Short):
        run = run_transform(cls, {"program": program}, ROWS_0_TO_9)
        assert run.messages == reference(program, ROWS_0_TO_9)
        assert [d["envelope"]["data"]["n"] for d in run.dead_letters] == [4]


def test_numbers_beyond_64_bit_integers_are_written_not_rejected() -> None:
    # The binding gives integral doubles as Python ints (1e300 → a 301-digit int), which
    # orjson refuses to write; they go out as the doubles they were.
    rows = [envelope({"big": 1e300, "n": 1}), envelope({"big": -2e19, "n": 2})]
    for program in (".data.n += 1", 'if .data.n == 1 then error("one") else .data.n += 1 end'):
        run = run_transform(JqTransformProvider, {"program": program}, rows)
        assert [m["data"]["big"] for m in run.data] == [1e300, -2e19][len(run.dead_letters) :]
        assert run.messages == reference(program, rows)
