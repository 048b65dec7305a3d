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
