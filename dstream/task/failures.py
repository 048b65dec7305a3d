"""What went wrong in an attempt, in words a user can act on: which stage, how it ended,
its last stderr lines, and what that means for the checkpoint."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from dstream import log
from dstream.errors import DStreamError, ProtocolError, ProviderError
from dstream.relay.exits import STOPPED_CODES, describe_exit
from dstream.relay.handshake import stderr_excerpt

if TYPE_CHECKING:
    from dstream.redact import Redactor
    from dstream.relay.hop import Hop
    from dstream.relay.ledger import CheckpointLedger, OrderViolation
    from dstream.runtime.base import ProviderProcess

_log = log.get("relay")


def short(value: Any, limit: int = 120) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "…"


async def died(proc: ProviderProcess, envelopes: int, redactor: Redactor) -> DStreamError:
    """``proc`` went away while data was still on its way to it."""
    try:
        code: int | None = await asyncio.wait_for(asyncio.shield(asyncio.ensure_future(proc.wait())), 10)
    except TimeoutError:
        code = None
    how = "stopped reading its input" if code is None else describe_exit(code)
    return ProviderError(
        f"{proc.description} {how} while data was still on its way to it "
        f"({envelopes} envelopes read from the input; nothing unacknowledged "
        f"was checkpointed)." + stderr_excerpt(proc, redactor)
    )


def out_of_order(proc: ProviderProcess, exc: OrderViolation) -> DStreamError:
    if exc.expected is None:
        what = f"forwarded a checkpoint it was never sent, or forwarded one twice: {short(exc.got)}"
    else:
        what = f"forwarded checkpoint {short(exc.got)} while {short(exc.expected)} was due"
    return ProtocolError(
        f"{proc.description} {what}. A transform must forward every checkpoint line unchanged and in "
        f"order, after what it emitted for the lines before it; the checkpoint stays before this point."
    )


def drain_timeout(output: ProviderProcess, seconds: float, redactor: Redactor) -> DStreamError:
    return ProviderError(
        f"{output.description} did not finish within drain_timeout ({seconds:g}s) "
        f"after its input ended; stopping it." + stderr_excerpt(output, redactor)
    )


def after_exit(
    procs: list[ProviderProcess], hops: list[Hop], ledger: CheckpointLedger, stopped: bool, redactor: Redactor
) -> DStreamError | None:
    """Once every stage has ended: a non-zero exit (the output first, then the transforms
    nearest it, then the input; not a stop dstream asked for), or checkpoints a transform
    kept. None when the attempt ended well."""
    stages_to_check = [procs[-1], *reversed(procs[1:-1]), procs[0]]
    for index, proc in enumerate(stages_to_check):
        code = proc.returncode
        asked = stopped and index > 0 and code in STOPPED_CODES  # the output is never asked to stop
        if code not in (0, None) and not asked:
            return ProviderError(f"{proc.description} {describe_exit(code)}." + stderr_excerpt(proc, redactor))
    for hop in hops[1:]:
        lost = ledger.unforwarded(hop.index)
        if lost:
            return ProtocolError(
                f"{hop.source.description} ended without forwarding {len(lost)} checkpoint(s) "
                f"(first: {short(lost[0])}). A transform must forward every checkpoint line unchanged; "
                f"the checkpoint stays before them."
            )
    if ledger.output_acks and ledger.pending:
        _log.warning(
            "the output exited without acknowledging %d checkpoint(s); data after the last "
            "acknowledged one will be sent again on the next run",
            ledger.pending,
        )
    return None
