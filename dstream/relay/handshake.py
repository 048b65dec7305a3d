"""Opening a provider: send the command envelope, wait for the handshake.

The handshake is raced against the provider exiting and a timeout; every failure names
the provider and quotes its last stderr lines.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from dstream import envelope, protocol
from dstream.errors import HandshakeError
from dstream.relay.exits import describe_exit

if TYPE_CHECKING:
    from dstream.redact import Redactor
    from dstream.runtime.base import ProviderProcess


def stderr_excerpt(proc: ProviderProcess, redactor: Redactor) -> str:
    lines = redactor.lines(proc.stderr_tail())
    reasons = [reason for reason in map(protocol.failure_reason, lines) if reason is not None]
    if reasons:  # the provider said why in one line: that line alone
        return f" It reported: {reasons[-1]}"
    if not lines:
        return " It printed nothing on stderr."
    body = "\n".join(f"    {line}" for line in lines[-10:])
    return f" Its last stderr lines:\n{body}"


async def stopped_excerpt(proc: ProviderProcess, redactor: Redactor) -> str:
    """The stderr excerpt of a provider that failed its handshake while still running.

    stdout and stderr arrive on separate connections, so the line that failed the
    handshake can overtake the stderr written before it. The provider is removed next
    anyway; killing it first and waiting for its exit reads its stderr to the end.
    """
    with contextlib.suppress(Exception):
        await proc.kill()
    await _exit_code(proc)
    return stderr_excerpt(proc, redactor)


async def open_provider(
    proc: ProviderProcess,
    command: str,
    config: dict[str, Any],
    checkpoint: Any,
    *,
    timeout: float,
    expect_handshake: bool,
    max_line_bytes: int,
    redactor: Redactor,
    task: str | None = None,
) -> tuple[protocol.Handshake, bytes]:
    """Send the command envelope; return the handshake and any stdout bytes read past it.

    Those bytes belong to the data stream (or, for a legacy provider, are the data stream).
    """
    try:
        await proc.write(protocol.command_envelope(command, config, checkpoint, task, protocol.ORCHESTRATOR_FEATURES))
    except (BrokenPipeError, ConnectionError):
        code = await _exit_code(proc)
        raise HandshakeError(
            f"{proc.description} {_ended(code)} before reading its command." + stderr_excerpt(proc, redactor)
        ) from None
    if not expect_handshake:
        return protocol.LEGACY, b""
    try:
        line, rest = await asyncio.wait_for(_first_line(proc, max_line_bytes), timeout)
    except TimeoutError:
        raise HandshakeError(
            f"{proc.description} sent no handshake within {timeout:g}s "
            f'(expected a first stdout line like {{"status":"ready"}}). If it is a legacy provider '
            f"that never sends one, set handshake = false in its block; if it is slow to start, "
            f"raise handshake_timeout." + await stopped_excerpt(proc, redactor)
        ) from None
    if line is None:
        code = await _exit_code(proc)
        raise HandshakeError(
            f"{proc.description} {_ended(code)} before its handshake." + stderr_excerpt(proc, redactor)
        )
    reason, detail = _not_an_envelope(line, max_line_bytes)
    if reason:
        # Not an envelope (the grammar in dstream.envelope): neither a handshake nor data.
        shown = redactor.shorten(line, 200).strip()
        why = f" ({reason.replace('_', ' ')}: {redactor(detail)})" if detail else ""
        raise HandshakeError(
            f"{proc.description} printed {shown!r} instead of a handshake{why}; a provider's stdout "
            f"carries only protocol lines (logs belong on stderr)." + await stopped_excerpt(proc, redactor)
        )
    handshake = protocol.parse_handshake(line)
    if handshake is None:
        # A valid envelope that is not a handshake: a legacy provider, and that line is data.
        return protocol.LEGACY, line + rest
    if handshake.status == "error":
        raise HandshakeError(f"{proc.description} refused to start: {redactor(handshake.message) or 'no reason given'}")
    return handshake, rest


def _not_an_envelope(line: bytes, max_line_bytes: int) -> tuple[str, str]:
    """Why the first line is no envelope (``("", "")`` when it is one)."""
    if not line.endswith(b"\n"):
        return "oversized_line", f"longer than max_line_bytes ({max_line_bytes} bytes)"
    if envelope.is_blank(line[:-1]):
        return "blank_line", ""
    reason, detail, _ = envelope.check_line(line[:-1])
    return reason, detail


async def _first_line(proc: ProviderProcess, max_line_bytes: int) -> tuple[bytes | None, bytes]:
    buffer = bytearray()
    while True:
        newline = buffer.find(b"\n")
        if newline >= 0:
            return bytes(buffer[: newline + 1]), bytes(buffer[newline + 1 :])
        if len(buffer) > max_line_bytes:
            return bytes(buffer), b""
        chunk = await proc.read(65536)
        if not chunk:
            return (bytes(buffer) + b"\n", b"") if buffer.strip() else (None, b"")
        buffer += chunk


async def _exit_code(proc: ProviderProcess) -> int | None:
    with contextlib.suppress(TimeoutError):
        return await asyncio.wait_for(proc.wait(), 5)
    return None


def _ended(code: int | None) -> str:
    """The one phrasing of an exit status (relay.exits), or plain "exited" when it is not known."""
    return "exited" if code is None else describe_exit(code)
