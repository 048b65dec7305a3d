"""Lines that are not envelopes, from a real input process to the real SDK file output.

The security review's case (row 3): an encoder that lets a raw newline into a string turns
one record into two lines, each invalid, which one parse of the joined lines accepted; and a
checkpoint line torn the same way, which raised out of the relay. Here they come from a real
``provider_path`` executable, in the middle of a long stream (so the relay's fast path is on),
and must reach the dead-letter file, byte for byte, and never the output.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING

import pytest

from tests.conftest import run_cli

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

BAD = [
    b'{"data":{"msg":"hello',  # a raw newline inside a string: two broken lines
    b'world"}}',
    b'{"checkpoint":{"at":"x',  # a torn checkpoint line
    b'y"}}',
    b'{"data":{"a":[{}',  # an array across two lines, balanced by a second value on the second
    b'{}]}},{"b":1}',
]

INPUT = """
import sys
sys.stdin.readline()
out = sys.stdout.buffer
out.write(b'{"status":"ready","features":%s}\\n')
bad = %r
for n in range(1, 6001):
    out.write(b'{"data":{"n":%%d},"metadata":{}}\\n' %% n)
    if n %% 1000 == 0 and %r:
        out.write(b'{"checkpoint":{"n":%%d}}\\n' %% n)
    if n in (2500, 4500):
        out.write(b"\\n".join(bad) + b"\\n")
out.flush()
for line in sys.stdin.buffer:  # as a transform: pass the input's lines (and its checkpoint) on
    out.write(line)
"""


@pytest.mark.parametrize("where", ["input", "transform"])
def test_bad_lines_reach_the_dead_letters_and_never_the_output(
    task_file: Callable[..., Path], script: Callable[[str, str], Path], tmp_path: Path, where: str
) -> None:
    source = script("bad-input", INPUT % ('["transform"]' if where == "transform" else "[]", BAD, where == "input"))
    out = tmp_path / "out.jsonl"
    dead = tmp_path / "dead.jsonl"
    # As a transform, the same program prints the same stream (without checkpoints of its
    # own), then passes on what the input sent: its lines go through the transform hop's checks.
    transform = f'transform {{ provider_path = "{source}" }}' if where == "transform" else ""
    inp = (
        'provider_path = "counter-input-provider"\n config { max_count = 1 }'
        if where == "transform"
        else f'provider_path = "{source}"'
    )
    path = task_file(
        f"""
        task "t" {{
          on_error = "dead_letter"
          dead_letter {{ path = "{dead}" }}
          input {{ {inp} }}
          {transform}
          output {{
            provider_path = "file-output-provider"
            config {{ path = "{out}" }}
          }}
        }}
        """
    )
    result = run_cli("run", "t", "-f", str(path))
    assert result.returncode == 0, result.stderr
    lines = out.read_bytes().splitlines()
    values = [json.loads(line) for line in lines]  # every line at the output is valid JSON
    assert [v["data"]["n"] for v in values if "n" in v.get("data", {})] == list(range(1, 6001))
    records = [json.loads(line) for line in dead.read_bytes().splitlines()]
    assert [base64.b64decode(r["raw_base64"]) for r in records] == BAD * 2
    assert {r["stage"] for r in records} == {where if where == "input" else "transform-1"}
