"""The jq transform against the jq CLI, on the same program and the same 500 B lines, in one run.

- alone: the transform process alone (`jq-transform-provider`, local) against `jq -c PROGRAM`,
  each reading the same file of envelopes (with a checkpoint every 1000) and writing into the
  benchmark sink, which times first to last byte (so process start-up is not counted);
- pipeline: dstream's three stages with local providers (blast → jq-transform-provider → sink)
  against the OS pipe `blast | jq -c PROGRAM | sink`.

The transform runs with the jq binding installed in the venv (PyPI's wheel) and, when
scripts/dev/ensure-jq.sh --optimised-binding has built it, with the same binding version
built with -O2 (PyPI's wheels build libjq without optimisation: see that script).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

ROOT = Path(__file__).resolve().parent.parent
PROVIDERS = ROOT / "benchmarks" / "providers"
OPTIMISED = ROOT / "build" / "jq-O2" / "site"
PROGRAM = "del(.data.pad) | .metadata.Seen = true"
SIZE = 500

PIPELINE_TASK = """
task "bench" {{
  max_in_flight = 200000
  input {{
    provider_path = "{blast}"
    config {{
      count = {count}
      size = {size}
      checkpoint_every = 1000
      rate = 0
    }}
  }}
  transform {{
    provider_path = "{jq}"
    config {{ program = {program} }}
    {container}
  }}
  output {{ provider_path = "{sink}" }}
}}
"""


def _provider() -> str:
    found = shutil.which("jq-transform-provider", path=str(Path(sys.executable).parent))
    if found is None:
        raise RuntimeError("jq-transform-provider is not installed in this venv (make venv)")
    return found


def _tools(optimised: bool) -> None:
    args = ["--optimised-binding"] if optimised else []
    subprocess.run(["bash", str(ROOT / "scripts" / "dev" / "ensure-jq.sh"), *args], check=True)


def _timed(
    shell: Callable[..., str],
    inputs: str,
    transform: str,
    sink: str,
    count: int,
    measure: Callable[[str, int], dict[str, float]],
    cpu: Path,
) -> dict[str, float]:
    """Throughput at the sink, and the CPU time (user + system) of the transform's process
    less its start-up (the same process given no envelopes): on a shared machine the CPU
    time per envelope is the steadier of the two. ``inputs``: the files fed to it, data last."""

    def run(feed: str, into: str) -> tuple[str, float]:
        # bash's `time` on the transform only, into its own file.
        stderr = shell(f"cat {feed} | (TIMEFORMAT='CPU %U %S'; time {transform}) 2>{cpu} | {into}")
        user, system = cpu.read_text().strip().splitlines()[-1].split()[1:3]
        return stderr, float(user) + float(system)

    stderr, busy = run(inputs, sink)
    _, idle = run(" ".join(inputs.split()[:-1]) or "/dev/null", "cat >/dev/null")
    return {**measure(stderr, count), "cpu_us_per_envelope": round((busy - idle) / count * 1e6, 2)}


def bench_jq(
    quick: bool,
    command: Callable[[int, int], str],
    shell: Callable[..., str],
    run_dstream: Callable[..., tuple[str, float]],
    measure: Callable[[str, int], dict[str, float]],
) -> dict[str, Any]:
    count = 20_000 if quick else 200_000
    _tools(optimised=not os.environ.get("DSTREAM_BENCH_NO_O2"))
    provider = _provider()
    sink = f"BENCH_MODE=peer python3 {PROVIDERS / 'sink.py'}"
    bindings = {"pypi_wheel": ""}
    if (OPTIMISED / "jq.cpython-311-x86_64-linux-gnu.so").exists() or any(OPTIMISED.glob("jq*.so")):
        bindings["o2_build"] = str(OPTIMISED)
    results: dict[str, Any] = {
        "goal": "the jq transform >= 1.0x the jq CLI on the same program and 500 B lines",
        "program": PROGRAM,
        "size": SIZE,
        "envelopes": count,
        "jq_cli": subprocess.run(["jq", "--version"], capture_output=True, text=True, check=True).stdout.strip(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "envelopes.jsonl"
        shell(f"printf '%s\\n' '{command(count, SIZE)}' | python3 {PROVIDERS / 'blast.py'} | tail -n +2 > {data}")
        run_cmd = json.dumps({"command": "run", "config": {"program": PROGRAM}})
        (Path(tmp) / "command.jsonl").write_text(run_cmd + "\n")
        cpu = Path(tmp) / "cpu"
        alone: dict[str, Any] = {"jq_cli": _timed(shell, f"{data}", f"jq -c '{PROGRAM}'", sink, count, measure, cpu)}
        for name, path in bindings.items():
            env = f"PYTHONPATH={path} " if path else ""
            alone[name] = _timed(shell, f"{tmp}/command.jsonl {data}", f"{env}{provider}", sink, count, measure, cpu)
            alone[f"ratio_{name}"] = round(alone[name]["envelopes_per_s"] / alone["jq_cli"]["envelopes_per_s"], 2)
            cpu_ratio = alone["jq_cli"]["cpu_us_per_envelope"] / alone[name]["cpu_us_per_envelope"]
            alone[f"cpu_ratio_{name}"] = round(cpu_ratio, 2)
        results["alone"] = alone
        peer = f"printf '%s\\n' '{command(count, SIZE)}' | python3 {PROVIDERS / 'blast.py'} | tail -n +2"
        pipeline: dict[str, Any] = {"os_pipe_jq_cli": measure(shell(f"{peer} | jq -c '{PROGRAM}' | {sink}"), count)}
        for name, path in bindings.items():
            container = f'container {{ env = {{ PYTHONPATH = "{path}" }} }}' if path else ""
            text = PIPELINE_TASK.format(
                blast=PROVIDERS / "blast.py", jq=provider, sink=PROVIDERS / "sink.py", count=count, size=SIZE,
                program=json.dumps(PROGRAM), container=container,
            )  # fmt: skip
            err, _ = run_dstream(Path(tmp), text)
            pipeline[name] = measure(err, count)
            rate = pipeline[name]["envelopes_per_s"] / pipeline["os_pipe_jq_cli"]["envelopes_per_s"]
            pipeline[f"ratio_{name}"] = round(rate, 2)
        results["pipeline"] = pipeline
    return results
