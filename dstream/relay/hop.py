"""One hop of a pipeline: a stage's stdout → framing → validation → the next stage's stdin.

Data moves in large chunks: stdout is read up to 256 KiB at a time, cut at the last newline,
validated in one C-level call, and written on as one block. Lines are looked at one by one
only when a block fails validation or holds a line the orchestrator keeps for itself
(``gauge`` from any stage, ``dead_letter`` from a transform).

A hop knows nothing about acks. It reports what it sees through :class:`HopEvents` (a
checkpoint about to be written on, a gauge), applies ``on_error`` to bad lines and to
records a transform rejected, and at the end of its source's stream closes the next
stage's stdin, so end-of-file travels down the pipeline as it would through OS pipes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from dstream import envelope, log, protocol
from dstream.errors import BadDataError
from dstream.relay.exits import describe_exit
from dstream.relay.framing import Block, LineFramer, Oversize
from dstream.runtime.base import READ_CHUNK

if TYPE_CHECKING:
    from dstream.redact import Redactor
    from dstream.relay.deadletter import DeadLetterWriter
    from dstream.runtime.base import ProviderProcess

_log = log.get("relay")
# Below this many bytes per line, per-line work in Python costs more than a few C scans.
SHORT_LINE = 200


def freeze_startup_objects() -> None:
    """Before data flows: move every object alive now out of the garbage collector's reach.
    The task runner freezes what exists before an attempt starts (and unfreezes it when the
    attempt ends); starting the providers then imports and builds much more (the Docker
    client, its HTTP stack), which the relay's allocations made the collector rescan over
    and over: 13 % of the orchestrator's time at 500 B through containers (py-spy). Objects
    created later are collected as before."""
    gc.freeze()


class SinkGone(Exception):
    """Writing to the next stage failed: its stdin is gone (it exited or was killed)."""


class HopEvents(Protocol):
    """What a hop tells the pipeline (implemented by the supervisor of an attempt)."""

    async def gate(self, hop: Hop) -> None:
        """Wait until the hop may read more (the input's in-flight window)."""

    def before_write(self, hop: Hop, checkpoints: list[tuple[Any, int, int]]) -> None:
        """Checkpoints (value, envelopes and bytes before it in this hop) about to be written on."""

    def after_write(self, hop: Hop, checkpoints: list[tuple[Any, int, int]]) -> None:
        """They were handed to the next stage."""

    def gauge(self, hop: Hop, value: Any) -> None:
        """The source stage reported a metric."""


@dataclass
class HopStats:
    envelopes: int = 0  # data lines written on
    bytes: int = 0
    checkpoints: int = 0
    dead_letters: int = 0
    skipped_blank: int = 0


class Hop:
    def __init__(
        self,
        index: int,
        source: ProviderProcess,
        sink: ProviderProcess,
        *,
        events: HopEvents,
        leftover: bytes,
        max_line_bytes: int,
        stop_timeout: float,
        from_transform: bool,
        dead_letters: DeadLetterWriter | None,
        redactor: Redactor,
        resume_from: Any,
    ) -> None:
        self.index = index
        self.source = source
        self.sink = sink
        self.events = events
        self.stats = HopStats()
        self.from_transform = from_transform
        self.dead_letters = dead_letters
        self.redactor = redactor
        self.stop_timeout = stop_timeout
        self.last_checkpoint: Any = resume_from  # for dead letters: what they come after
        self.source_code: int | None = None
        self.sink_closed = False  # end-of-file was passed on: the sink may now finish and exit
        self._leftover = leftover
        self._framer = LineFramer(max_line_bytes)
        self._max_line_bytes = max_line_bytes
        self._line = 1  # number of the source's next stdout line (for messages)
        self._fatal: BadDataError | None = None
        self._short_lines = False  # the stream's lines are short: scan blocks, do not split them

    @property
    def role(self) -> str:
        return self.source.role

    async def run(self) -> None:
        """Relay until the source's stdout ends; then close the sink's stdin."""
        freeze_startup_objects()
        framer = self._framer
        if self._leftover:
            await self._handle(framer.feed(self._leftover))
            self._leftover = b""
        while True:
            await self.events.gate(self)
            chunk = await self.source.read(READ_CHUNK)
            if not chunk:
                break
            await self._handle(framer.feed(chunk))
        if framer.pending:
            # A last line without a newline: relay it only if the source ended cleanly. From
            # a crashed source it is a torn write, after its last checkpoint, so it is resent.
            code = await self._source_exit()
            if code != 0:
                _log.warning(
                    "dropped an incomplete last line (%d bytes) from %s, which %s; it comes after the "
                    "last checkpoint, so it will be sent again",
                    framer.pending,
                    self.source.description,
                    "did not exit" if code is None else describe_exit(code),
                )
                await self._end()
                return
        await self._handle(framer.finish())
        await self._end()

    async def _end(self) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionError, OSError):
            await self.sink.close_stdin()
        self.sink_closed = True
        self.source_code = await self._source_exit()

    async def _source_exit(self) -> int | None:
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.ensure_future(self.source.wait())), self.stop_timeout)
        except TimeoutError:
            return None

    async def _handle(self, events: list[Block | Oversize]) -> None:
        for event in events:
            if isinstance(event, Block):
                await self._forward(event.data)
            else:
                self._oversize(event)
                if event.stage == "end":
                    self._line += 1

    async def _forward(self, data: bytes) -> None:
        self._fatal = None
        out, checkpoints, envelopes = self._process(data)
        if out:
            self.events.before_write(self, checkpoints)
            try:
                await self.sink.write(out)
            except (BrokenPipeError, ConnectionError, OSError) as exc:
                raise SinkGone(str(exc)) from None
            self.stats.envelopes += envelopes
            self.stats.bytes += len(out)
            self.stats.checkpoints += len(checkpoints)
            if checkpoints:
                self.events.after_write(self, checkpoints)
        if self._fatal is not None:
            raise self._fatal  # after forwarding the good lines before it

    # -- validation ------------------------------------------------------------------

    def _process(self, data: bytes) -> tuple[bytes, list[tuple[Any, int, int]], int]:
        """What to forward, its checkpoints (each with the envelopes and bytes of this hop's
        stream up to it) and its envelope count. Anything unusual goes to :meth:`_process_slowly`.

        Two fast paths, both with one exact check of the whole block in C
        (:func:`envelope.valid_block`), chosen by the stream's line length: for short lines
        (many per block) substring scans find the rare control lines without touching each
        line in Python; for longer lines one split and one ``startswith`` pass find every
        line that is not plain data, which is cheaper than a scan per kind of control line.
        Every line the fast paths cannot vouch for is judged by :func:`envelope.check_line`.
        """
        if self._short_lines and not (
            protocol.GAUGE_TOKEN in data
            or (self.from_transform and protocol.DEAD_LETTER_TOKEN in data)
            or envelope.may_hide_control_key(data)
        ):
            return self._process_by_scanning(data)
        lines = data.split(b"\n")
        lines.pop()  # the block ends with a newline
        first = self._line
        self._line += len(lines)
        self._short_lines = len(data) < SHORT_LINE * len(lines)
        prefix = protocol.DATA_PREFIX
        other = [i for i, line in enumerate(lines) if not line.startswith(prefix)]
        if any(not lines[i].startswith(b"{") for i in other) or envelope.valid_block(data, objects_checked=True) < 0:
            return self._process_slowly(lines, first)
        checkpoints: list[tuple[Any, int, int]] = []
        sizes = list(map(len, lines)) if other else []
        offset = 0  # bytes of the block before line i
        counted = 0
        for i in other:
            offset += sum(sizes[counted:i]) + i - counted
            counted = i
            value = envelope.check_line(lines[i])[2]
            if (
                value is None  # never, after valid_block; but no line may stop the relay
                or protocol.control_value(value, "gauge")[0]
                or (self.from_transform and protocol.control_value(value, "dead_letter")[0])
            ):
                return self._process_slowly(lines, first)  # lines kept back: rebuild the block
            is_cp, position = protocol.control_value(value, "checkpoint")
            if is_cp:
                end = offset + len(lines[i]) + 1
                envelopes = self.stats.envelopes + i - len(checkpoints)
                checkpoints.append((position, envelopes, self.stats.bytes + end))
        if checkpoints:
            self.last_checkpoint = checkpoints[-1][0]
        return data, checkpoints, len(lines) - len(checkpoints)

    def _process_by_scanning(self, data: bytes) -> tuple[bytes, list[tuple[Any, int, int]], int]:
        """The fast path for short lines, with no gauge, rejection or escaped key in the block."""
        count = envelope.valid_block(data)
        if count < 0:
            return self._split_and_process_slowly(data)
        checkpoints: list[tuple[Any, int, int]] = []
        token = protocol.CHECKPOINT_TOKEN
        at = data.find(token)
        line_index = 0
        counted_to = 0
        while at >= 0:
            start = data.rfind(b"\n", 0, at) + 1
            end = data.index(b"\n", at)
            value = envelope.check_line(data[start:end])[2]
            if value is None:  # never, after valid_block; but no line may stop the relay
                return self._split_and_process_slowly(data)
            is_cp, position = protocol.control_value(value, "checkpoint")
            if is_cp:
                line_index += data.count(b"\n", counted_to, start)
                counted_to = start
                envelopes = self.stats.envelopes + line_index - len(checkpoints)
                checkpoints.append((position, envelopes, self.stats.bytes + end + 1))
            at = data.find(token, end)
        self._line += count
        self._short_lines = len(data) < SHORT_LINE * count
        if checkpoints:
            self.last_checkpoint = checkpoints[-1][0]
        return data, checkpoints, count - len(checkpoints)

    def _split_and_process_slowly(self, data: bytes) -> tuple[bytes, list[tuple[Any, int, int]], int]:
        lines = data.split(b"\n")
        lines.pop()
        first = self._line
        self._line += len(lines)
        return self._process_slowly(lines, first)

    def _process_slowly(self, lines: list[bytes], first_line: int) -> tuple[bytes, list[tuple[Any, int, int]], int]:
        """Each line judged by the reference (:func:`envelope.check_line`) on its own."""
        keep: list[bytes] = []
        checkpoints: list[tuple[Any, int, int]] = []
        envelopes = 0
        size = 0
        for offset, line in enumerate(lines):
            if envelope.is_blank(line):
                self.stats.skipped_blank += 1
                continue
            reason, detail, value = envelope.check_line(line)
            if value is None:
                self._fatal = self._bad_line(reason, detail, line, first_line + offset)
                if self._fatal is not None:
                    break
                continue
            is_gauge, gauge = protocol.control_value(value, "gauge")
            if is_gauge:
                self.events.gauge(self, gauge)
                continue
            if self.from_transform:
                is_rejected, rejected = protocol.control_value(value, "dead_letter")
                if is_rejected:
                    self._fatal = self._rejected(rejected, first_line + offset)
                    if self._fatal is not None:
                        break
                    continue
            keep.append(line)
            size += len(line) + 1
            is_cp, position = protocol.control_value(value, "checkpoint")
            if is_cp:
                checkpoints.append((position, self.stats.envelopes + envelopes, self.stats.bytes + size))
                self.last_checkpoint = position
            else:
                envelopes += 1
        out = b"\n".join(keep) + b"\n" if keep else b""
        return out, checkpoints, envelopes

    # -- on_error --------------------------------------------------------------------

    def _bad_line(self, reason: str, detail: str, line: bytes, number: int) -> BadDataError | None:
        """Dead-letter a bad line, or (on_error = "fail") return the error to stop with."""
        if self.dead_letters is None:
            shown = self.redactor.shorten(line, 120)
            return BadDataError(
                f"{self.source.description} sent a bad line {number} ({reason.replace('_', ' ')}: "
                f"{detail}): {shown!r}. The checkpoint stays before it. Fix the provider, or set "
                f'on_error = "dead_letter" to set such lines aside and go on.',
                reason,
                line,
                number,
            )
        self.dead_letters.write(reason, line, number, self.last_checkpoint, detail, stage=self.role)
        self.stats.dead_letters += 1
        _log.warning(
            "dead-lettered line %d of %s (%s) to %s",
            number,
            self.role,
            reason.replace("_", " "),
            self.dead_letters.path,
        )
        return None

    def _rejected(self, rejected: Any, number: int) -> BadDataError | None:
        """A transform set a record aside: ``{"dead_letter": {"reason": …, "envelope": …}}``."""
        body = rejected if isinstance(rejected, dict) else {"reason": str(rejected)}
        reason = str(body.get("reason") or "no reason given")
        held = body.get("envelope")
        if self.dead_letters is None:
            shown = self.redactor.shorten(protocol.encode(held), 120).strip()
            return BadDataError(
                f"{self.source.description} rejected an envelope: {self.redactor(reason)} (envelope: {shown}). "
                f'The checkpoint stays before it. Set on_error = "dead_letter" to set such records aside and go on.',
                "rejected",
                protocol.encode(held),
                number,
            )
        self.dead_letters.write_rejected(reason, held, number, self.last_checkpoint, stage=self.role)
        self.stats.dead_letters += 1
        _log.warning("%s rejected an envelope (%s); dead-lettered to %s", self.role, reason, self.dead_letters.path)
        return None

    def _oversize(self, event: Oversize) -> None:
        """A line over max_line_bytes: fail at its start, or stream it into the dead letters."""
        limit = self._max_line_bytes
        if self.dead_letters is None:
            raise BadDataError(
                f"{self.source.description} printed a line longer than max_line_bytes ({limit} bytes) "
                f'at line {self._line}; raise max_line_bytes or set on_error = "dead_letter".',
                "oversized_line",
                event.data,
                self._line,
            )
        if event.stage == "start":
            detail = f"line longer than max_line_bytes ({limit} bytes)"
            self.dead_letters.begin("oversized_line", self._line, self.last_checkpoint, detail, stage=self.role)
        elif event.stage == "data":
            self.dead_letters.write_raw(event.data)
        else:
            self.dead_letters.end()
            self.stats.dead_letters += 1
            _log.warning("dead-lettered an oversized line (%d bytes) to %s", event.size, self.dead_letters.path)
