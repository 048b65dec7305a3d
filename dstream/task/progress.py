"""What a run is doing right now: the one type the status line and the metrics read.

They import only this module, never the runner: anything with a ``progress()`` and a
``state`` (a :class:`Source`) can be displayed and scraped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class Progress:
    """What a run is doing right now (for the status line and the metrics endpoint)."""

    task: str
    run_id: str
    state: str  # starting | standby | running | stopping | restarting | finished | failed
    envelopes: int
    bytes: int
    delivered: int
    delivered_bytes: int
    checkpoints_persisted: int
    dead_letters: int
    restarts: int
    in_flight: int
    waiting_for_output: bool
    last_checkpoint_age: float | None
    providers: dict[str, str]  # role → "running" | "exited N", in pipeline order
    lease: str
    # Data lines out of each stage but the output (role → count): what a transform made of its input.
    stage_envelopes: dict[str, int] = field(default_factory=dict)
    # Seconds a checkpoint write has been waiting on the store (None: it answers).
    store_stalled: float | None = None
    # Provider-reported gauges: (role, name, sorted labels) → value.
    gauges: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)


class Source(Protocol):
    """A run the status line and the metrics endpoint can read."""

    state: str

    def progress(self) -> Progress: ...
