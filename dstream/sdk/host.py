"""The stdio host: speaks the wire protocol for a provider class.

Reads the command envelope, validates ``config`` with the provider's pydantic model
(answering ``{"status": "error"}`` naming the field when it is wrong), prints the
handshake, then runs the verb: :mod:`~dstream.sdk.inputs`, :mod:`~dstream.sdk.transforms`
or :mod:`~dstream.sdk.outputs` for ``run``, the provider's method for a lifecycle verb.
SIGTERM/SIGINT ask the provider to stop: an input stops at the next record and emits a
last checkpoint; a transform or an output finishes its batch.

The host knows provider classes only by what it calls on them (``kind``, ``verbs()``,
``Config``, ``read``/``transform``/``write``), so it imports none of the base classes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import sys
import threading
from typing import Any, BinaryIO

from pydantic import ValidationError

from dstream import protocol
from dstream.sdk.context import Context
from dstream.sdk.errors import ActionableError
from dstream.sdk.inputs import InputLoop
from dstream.sdk.outputs import OutputLoop
from dstream.sdk.transforms import TransformLoop
from dstream.sdk.wire import READ_CHUNK, StopNow, Wire, describe_validation_error

FLUSH_INTERVAL = 0.02

__all__ = ["Host", "describe_validation_error", "main"]


class Host:
    def __init__(self, cls: Any, stdin: BinaryIO, stdout: BinaryIO, install_signals: bool = False) -> None:
        self.cls = cls  # a Provider subclass (dstream.sdk.base)
        self.wire = Wire(stdin, stdout)
        self.ctx = Context(cls.name)
        self.ctx._stdout = self.wire.send
        self.install_signals = install_signals
        self._signalled = False
        self._finished = threading.Event()

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Several SIGTERMs can arrive at once (the parent-death signal fires once per
        # thread of a dying orchestrator). A handler that ran while another was inside
        # Event.set() would deadlock on the event's lock: only the first one sets it.
        if not self._signalled:
            self._signalled = True
            self.ctx.stopping.set()
        if self.wire.idle:
            raise StopNow

    def _flusher(self) -> None:
        # Bounded latency for providers that block outside ctx.sleep().
        while not self._finished.wait(FLUSH_INTERVAL):
            try:
                self.wire.flush()
            except (OSError, ValueError):
                return

    def _refuse(self, message: str, code: int) -> int:
        self.wire.send(protocol.handshake_error(message))
        self.wire.flush()
        return code

    def run(self) -> int:
        if self.install_signals:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        wire = self.wire
        try:
            wire.idle = True
            first = wire.reader.readline()
        except StopNow:
            return 0
        finally:
            wire.idle = False
        if not first.strip():
            self.ctx.log.error("no command envelope on stdin (this program is a dstream provider)")
            return 2
        try:
            envelope = protocol.decode_object(first)
        except protocol.DecodeError as exc:
            return self._refuse(f"the first stdin line is not a command envelope: {exc}", 2)
        command = str(envelope.get("command") or "run")
        ctx = self.ctx
        ctx.task = envelope.get("task")
        ctx.command = command
        ctx.checkpoint = envelope.get("checkpoint")
        ctx._gauges = protocol.FEATURE_GAUGE in (envelope.get("features") or ())
        verbs = self.cls.verbs()
        if command not in verbs:
            # The orchestrator says so once, for every such provider ("not sent to: …").
            ctx.log.debug("verb %r is not supported by %s (supports: %s)", command, self.cls.name, verbs)
            wire.send(protocol.handshake_ready(verbs, self._features()))
            wire.flush()
            return 0
        try:
            config = self.cls.Config.model_validate(envelope.get("config") or {})
        except ValidationError as exc:
            return self._refuse(describe_validation_error(exc, self.cls.Config.model_fields), 1)
        try:
            provider = self.cls(config, ctx)
        except Exception as exc:  # a provider's own start-up failure → error handshake
            ctx.log.debug("could not start", exc_info=True)
            return self._refuse(_reason(exc), 1)
        wire.send(protocol.handshake_ready(verbs, self._features()))
        wire.flush()
        threading.Thread(target=self._flusher, daemon=True).start()
        try:
            return self._run_verb(provider, command, envelope)
        except BrokenPipeError:
            ctx.log.warning("stdout closed by the orchestrator; stopping")
            return 1
        except StopNow:
            return 0
        except Exception as exc:
            ctx.log.debug("%s failed", self.cls.name, exc_info=True)
            ctx.log.error("%s", protocol.failure_line(_reason(exc)))
            return 1
        finally:
            self._finished.set()
            try:
                provider.close()
            finally:
                with contextlib.suppress(BrokenPipeError, ValueError):
                    wire.flush()

    def _run_verb(self, provider: Any, command: str, envelope: dict[str, Any]) -> int:
        if command != "run":
            for res in getattr(provider, command)() or []:
                self.wire.send(protocol.resource(res))
            self.wire.flush()
            return 0
        kind = self.cls.kind
        if kind == "input":
            return InputLoop(provider, self.wire, self.ctx).run(envelope.get("checkpoint"))
        if kind == "transform":
            return TransformLoop(provider, self.wire, self.ctx).run()
        return OutputLoop(provider, self.wire, self.ctx).run()

    def _features(self) -> list[str]:
        kind = self.cls.kind
        features: list[str] = []
        if kind == "output":
            features.append(protocol.FEATURE_ACK)
        if kind == "transform":
            features.append(protocol.FEATURE_TRANSFORM)
        if kind == "input" and self.cls.wants_commits():
            features.append(protocol.FEATURE_COMMIT)
        return features


def _reason(exc: BaseException) -> str:
    """What a user is told: an ActionableError's message as it is, others with their type."""
    return str(exc) if isinstance(exc, ActionableError) else f"{type(exc).__name__}: {exc}"


def main(cls: Any) -> None:
    level = os.environ.get("DSTREAM_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(stream=sys.stderr, level=level, format="%(levelname)s %(name)s: %(message)s")
    stdout = io.BufferedWriter(io.FileIO(sys.stdout.fileno(), "wb", closefd=False), buffer_size=256 * 1024)
    stdin = io.BufferedReader(io.FileIO(sys.stdin.fileno(), "rb", closefd=False), buffer_size=READ_CHUNK)
    code = Host(cls, stdin, stdout, install_signals=True).run()
    with contextlib.suppress(BrokenPipeError, ValueError):
        stdout.flush()
    # Skip interpreter teardown that could block on a dead stdout.
    sys.stderr.flush()
    os._exit(code)
