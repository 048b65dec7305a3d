"""Three stages through containers: blast → passthrough → sink, dstream against
`docker run … | docker run -i … | docker run -i …` with the same images, in one run. (The jq
transform has its own benchmark, benchmarks/jq.py, against the jq CLI.)"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

PIPELINE_TASK = """
task "bench" {{
  max_in_flight = 200000
  handshake_timeout = "60s"
  input {{
    provider_ref = "{blast}"
    config {{
      count = {count}
      size = {size}
      checkpoint_every = 1000
      rate = 0
    }}
  }}
  transform {{
    provider_ref = "{transform}"
    {transform_config}
  }}
  output {{ provider_ref = "{sink}" }}
}}
"""


def bench_pipeline(
    quick: bool,
    images: dict[str, str],
    command: Callable[[int, int], str],
    shell: Callable[[str], str],
    run_dstream: Callable[[Path, str], tuple[str, float]],
    measure: Callable[[str, int], dict[str, float]],
) -> dict[str, Any]:
    count = 100_000 if quick else 1_000_000
    docker = "docker run -i --rm --log-driver none --network none"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in (100, 500, 4096):
            peer_pipe = (
                f"printf '%s\\n' '{command(count, size)}' | {docker} {images['blast']} "
                f"| {docker} -e BENCH_MODE=peer {images['passthrough']} | {docker} -e BENCH_MODE=peer {images['sink']}"
            )
            peer = measure(shell(peer_pipe), count)
            text = PIPELINE_TASK.format(
                blast=images["blast"], transform=images["passthrough"], transform_config="",
                sink=images["sink"], count=count, size=size,
            )  # fmt: skip
            err, wall = run_dstream(Path(tmp), text)
            ours = measure(err, count)
            rows.append(
                {"size": size, "envelopes": count, "dstream": ours, "docker_pipe": peer,
                 "ratio": round(ours["envelopes_per_s"] / peer["envelopes_per_s"], 2), "dstream_wall_s": round(wall, 2)}
            )  # fmt: skip
    return {
        "goal": "three stages through containers >= 1.0x the docker CLI pipe of the same three images at 500 B",
        "rows": rows,
    }
