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
from dstream.relay.handshake import open_provider
from dstream.runtime.base import LABEL_ROLE, LABEL_RUN, LABEL_TASK, ProviderProcess, ProviderSpec, Runtime
from dstream.runtime.local import LocalRuntime

if TYPE_CHECKING:
    from dstream.config.models import Document, Task
    from dstream.redact import Redactor

_log = log.get("launch")
__all__ = ["LaunchOptions", "Opened", "new_run_id", "open_pair", "prepare_spec", "start_and_open"]


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass
class Opened:
    proc: ProviderProcess
    handshake: protocol.Handshake
    leftover: bytes


def stderr_logger(role: str, redactor: Redactor) -> Any:
    logger = log.get(f"provider.{role}")

    def sink(line: str) -> None:
        logger.log(logging.INFO, "%s", redactor(line), extra={"role": role})

    return sink


async def prepare_spec(
    document: Document, task: Task, role: str, run_id: str, options: LaunchOptions
) -> tuple[Runtime, ProviderSpec]:
    block = task.input if role == "input" else task.output
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


async def open_pair(
    document: Document,
    task: Task,
    run_id: str,
    command: str,
    checkpoint: Any,
    options: LaunchOptions,
    redactor: Redactor,
) -> tuple[Opened, Opened]:
    """Start and open both providers concurrently; if either fails, stop the other."""
    options.lock = None  # each attempt reads dstream.lock afresh; its two providers share that copy
    jobs = {
        role: asyncio.create_task(start_and_open(document, task, role, run_id, command, checkpoint, options, redactor))
        for role in ("input", "output")
    }
    try:
        await asyncio.gather(*jobs.values())
    except BaseException:
        for job in jobs.values():
            if not job.done():
                job.cancel()
        results = await asyncio.gather(*jobs.values(), return_exceptions=True)
        for result in results:
            if isinstance(result, Opened):
                with contextlib.suppress(Exception):
                    await result.proc.cleanup()
        raise
    return jobs["input"].result(), jobs["output"].result()
