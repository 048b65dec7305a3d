"""file-output-provider and file-input-provider, in-process."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from dstream_file.input import FileInputProvider
from dstream_file.output import FileOutputProvider

from dstream.sdk.testing import checkpoint, envelope, run_input, run_output

if TYPE_CHECKING:
    from pathlib import Path


def test_output_appends_envelopes_as_received_and_acks(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    result = run_output(
        FileOutputProvider, {"path": str(out)}, [envelope({"n": 1}), envelope({"n": 2}), checkpoint({"v": 2})]
    )
    assert result.acks == [{"v": 2}]
    assert [json.loads(line)["data"]["n"] for line in out.read_text().splitlines()] == [1, 2]


def test_output_cuts_a_torn_last_line_left_by_a_crash(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"data":{"n":1}}\n{"data":{"n":2}}\n{"data":{"n"')  # killed mid-write
    run_output(FileOutputProvider, {"path": str(out)}, [envelope({"n": 3}), checkpoint({"v": 3})])
    assert [json.loads(line)["data"]["n"] for line in out.read_text().splitlines()] == [1, 2, 3]


def test_input_replays_with_offset_checkpoints_and_resumes(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"data":{"n":1},"metadata":{}}\n{"plain":true}\n{"data":{"n":3},"metadata":{}}\n')
    first = run_input(FileInputProvider, {"path": str(source), "checkpoint_every": 1})
    assert [m["data"] for m in first.data] == [{"n": 1}, {"plain": True}, {"n": 3}]
    middle = first.checkpoints[0]
    again = run_input(FileInputProvider, {"path": str(source)}, checkpoint=middle)
    assert [m["data"] for m in again.data] == [{"plain": True}, {"n": 3}]


def test_time_settings_take_durations_and_keep_their_number_units() -> None:
    from dstream_counter import CounterConfig
    from dstream_file.input import FileInputConfig
    from pydantic import ValidationError

    # The file input's numbers are seconds, the counter's milliseconds (as documented before
    # durations); text such as "500ms" means the same in both.
    assert FileInputConfig(path="x", poll_interval="500ms").poll_interval == 0.5
    assert FileInputConfig(path="x", poll_interval=2).poll_interval == 2.0
    assert CounterConfig(interval="250ms").interval == 0.25
    assert CounterConfig(interval=250).interval == 0.25
    assert CounterConfig(interval="250").interval == 0.25
    assert CounterConfig(interval="2s").interval == 2.0
    assert CounterConfig(interval=0).interval == 0.0
    for bad in ("fast", -5, "-1s"):
        try:
            CounterConfig(interval=bad)
        except ValidationError:
            continue
        raise AssertionError(f"interval {bad!r} was accepted")
    try:
        FileInputConfig(path="x", poll_interval="0s")
    except ValidationError:
        pass
    else:
        raise AssertionError("a zero poll interval was accepted")
