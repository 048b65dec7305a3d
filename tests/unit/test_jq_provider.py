"""jq-transform-provider in-process: filtering, reshaping, fan-out, rejects, bad programs."""

from __future__ import annotations

from dstream_jq import JqTransformProvider

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
