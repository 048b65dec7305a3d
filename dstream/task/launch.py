"""Starting one provider of a task: pick the runtime for its block, start it, open it.

``provider_path`` runs as a local process. ``provider_ref`` is resolved by
:mod:`dstream.distribution` to an image (run in a container) or an ORAS executable
(run as a local process).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dstream import log, protocol
from dstream.distribution.options import LaunchOptions
from dstream.errors import HandshakeError
from dstream.relay.handshake import open_provider
from dstream.runtime.base import (
    LABEL_ROLE,
    LABEL_RUN,
    LABEL_TASK,
    ProviderProcess,
    ProviderSpec,
    RedactingSink,
    Runtime,
)
from dstream.runtime.local import LocalRuntime

if TYPE_CHECKING:
    from dstream.config.models import Document, ProviderBlock, Task
    from dstream.redact import Redactor

_log = log.get("launch")
__all__ = ["LaunchOptions", "Opened", "new_run_id", "open_stages", "prepare_spec", "start_and_open"]


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass
class Opened:
    proc: ProviderProcess
    handshake: protocol.Handshake
    leftover: bytes


def stderr_logger(role: str, redactor: Redactor) -> RedactingSink:
    logger = log.get(f"provider.{role}")

    def sink(line: str) -> None:
        # A failure line is quoted in the error that ends the attempt: logged here only for debugging.
        level = logging.DEBUG if protocol.failure_reason(line) is not None else logging.INFO
        logger.log(level, "%s", line, extra={"role": role})

    return RedactingSink(redactor, sink)


async def prepare_spec(
    document: Document,
    task: Task,
    role: str,
    run_id: str,
    options: LaunchOptions,
    block: ProviderBlock | None = None,
) -> tuple[Runtime, ProviderSpec]:
    """Where and how the provider of ``role`` (or the given ``block``) will run."""
    block = block or task.stage(role).block
    labels = {LABEL_TASK: task.name, LABEL_ROLE: role, LABEL_RUN: run_id}
    spec = ProviderSpec(
        role=role, task=task.name, run_id=run_id, block=block, base_dir=document.base_dir, labels=labels
    )
    if block.provider_path:
        return options.runtimes.get("local") or LocalRuntime(), spec
    from dstream.distribution.resolve import resolve_for_run

    return await resolve_for_run(document, spec, options)


async def start_and_open(
    document: Document,
    task: Task,
    role: str,
    run_id: str,
    command: str,
    checkpoint: Any,
    options: LaunchOptions,
    redactor: Redactor,
) -> Opened:
    runtime, spec = await prepare_spec(document, task, role, run_id, options)
    proc = await runtime.start(spec, stderr_logger(role, redactor))
    try:
        handshake, leftover = await open_provider(
            proc,
            command,
            spec.block.config,
            checkpoint,
            timeout=task.handshake_timeout,
            expect_handshake=spec.block.handshake,
            max_line_bytes=task.max_line_bytes,
            redactor=redactor,
            task=task.name,
        )
    except BaseException:
        await proc.cleanup()
        raise
    return Opened(proc, handshake, leftover)


async def open_stages(
    document: Document,
    task: Task,
    run_id: str,
    command: str,
    checkpoint: Any,
    options: LaunchOptions,
    redactor: Redactor,
) -> list[Opened]:
    """Start and open every stage of the task concurrently, in pipeline order; if one
    fails, stop the others. A transform block must hold a transform (its handshake says so)."""
    options.lock = None  # each attempt reads dstream.lock afresh; its stages share that copy
    jobs = [
        asyncio.create_task(start_and_open(document, task, stage.role, run_id, command, checkpoint, options, redactor))
        for stage in task.stages
    ]
    try:
        opened = list(await asyncio.gather(*jobs))
        if command == "run":
            for stage, one in zip(task.stages, opened, strict=True):
                _check_kind(stage.role, one)
    except BaseException:
        for job in jobs:
            if not job.done():
                job.cancel()
        results = await asyncio.gather(*jobs, return_exceptions=True)
        for result in results:
            if isinstance(result, Opened):
                with contextlib.suppress(Exception):
                    await result.proc.cleanup()
        raise
    return opened


def _check_kind(role: str, opened: Opened) -> None:
    handshake = opened.handshake
    if handshake.legacy or not role.startswith("transform"):
        return  # a legacy filter (handshake = false) is trusted to forward checkpoint lines
    if protocol.FEATURE_TRANSFORM not in handshake.features:
        features = ", ".join(sorted(handshake.features)) or "none"
        raise HandshakeError(
            f"{opened.proc.description} is in a transform block but is not a transform: its handshake lists "
            f'features [{features}], not "{protocol.FEATURE_TRANSFORM}". Put inputs and outputs in their own blocks.'
        )
