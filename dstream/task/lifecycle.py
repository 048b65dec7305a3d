"""``dstream init|plan|status|destroy TASK``: route a verb to the task's providers.

Each provider gets the verb in its command envelope and answers with its handshake
(listing the verbs it supports) and result lines. A provider that does not list the
verb is skipped. A legacy provider (no handshake) gets the verb only when it is the
output, as upstream does; a legacy input is stopped before it can do anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dstream import log, protocol
from dstream.errors import DStreamError, ProviderError
from dstream.redact import Redactor
from dstream.relay.handshake import stderr_excerpt
from dstream.task.launch import LaunchOptions, new_run_id, start_and_open

if TYPE_CHECKING:
    from dstream.config.models import Document

_log = log.get("lifecycle")
LIFECYCLE_TIMEOUT = 30 * 60.0


@dataclass
class ProviderOutcome:
    role: str
    source: str
    status: str  # "ok" | "skipped" | "failed"
    reply: protocol.LifecycleReply = field(default_factory=protocol.LifecycleReply)
    reason: str = ""


async def _one(
    document: Document, task_name: str, role: str, verb: str, options: LaunchOptions, redactor: Redactor
) -> ProviderOutcome:
    task = document.task(task_name)
    block = task.stage(role).block
    if role != "output" and not block.handshake:
        return ProviderOutcome(
            role, block.source, "skipped", reason="legacy provider: lifecycle verbs go to outputs only"
        )
    opened = await start_and_open(document, task, role, new_run_id(), verb, None, options, redactor)
    proc = opened.proc
    try:
        if opened.handshake.legacy and role != "output":
            await proc.kill()
            return ProviderOutcome(role, block.source, "skipped", reason=f"legacy {role} (no handshake): not sent")
        if not opened.handshake.legacy and not opened.handshake.supports(verb):
            await proc.close_stdin()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), task.stop_timeout)
            verbs = ", ".join(opened.handshake.verbs or ()) or "none"
            return ProviderOutcome(role, block.source, "skipped", reason=f"does not support {verb} (supports: {verbs})")
        await proc.close_stdin()
        reply = protocol.LifecycleReply()
        buffer = opened.leftover

        async def collect() -> int:
            nonlocal buffer
            while True:
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    reply.feed(line)
                chunk = await proc.read()
                if not chunk:
                    break
                buffer += chunk
            if buffer.strip():
                reply.feed(buffer)
            return await proc.wait()

        try:
            code = await asyncio.wait_for(collect(), LIFECYCLE_TIMEOUT)
        except TimeoutError:
            await proc.kill()
            raise ProviderError(f"{proc.description} did not finish {verb} within {LIFECYCLE_TIMEOUT:g}s") from None
        outcome = ProviderOutcome(role, block.source, "ok", reply)
        if code != 0 or reply.failed:
            outcome.status = "failed"
            why = redactor(reply.message) if reply.failed else f"exited with code {code}"
            outcome.reason = why + stderr_excerpt(proc, redactor)
        return outcome
    finally:
        await proc.cleanup()


async def run_verb(
    document: Document, task_name: str, verb: str, options: LaunchOptions | None = None
) -> list[ProviderOutcome]:
    options = options or LaunchOptions()
    redactor = Redactor(document.secrets)
    log.set_redactor(redactor)
    outcomes = []
    for role, block, _ in document.task(task_name).stages:
        try:
            outcomes.append(await _one(document, task_name, role, verb, options, redactor))
        except DStreamError as exc:
            outcomes.append(ProviderOutcome(role, block.source, "failed", reason=redactor(str(exc))))
    return outcomes


def render_table(outcomes: list[ProviderOutcome], verb: str, task: str) -> Any:
    from rich.table import Table

    table = Table(title=f"dstream {verb} {task}", title_justify="left")
    for column in ("provider", "type", "name", "action", "state", "details"):
        table.add_column(column)
    for outcome in outcomes:
        label = f"{outcome.role}"
        if outcome.status != "ok" or not outcome.reply.resources:
            note = outcome.reason or "no resources"
            style = "red" if outcome.status == "failed" else "dim"
            table.add_row(label, "", "", "", outcome.status, f"[{style}]{_escape(note)}[/{style}]")
            continue
        for res in outcome.reply.resources:
            details = ", ".join(f"{k}={v}" for k, v in res.details.items())
            table.add_row(label, res.type, res.name, _action(res.action), res.state, _escape(details))
    return table


def _action(action: str) -> str:
    colour = {"create": "green", "delete": "red", "update": "yellow"}.get(action)
    return f"[{colour}]{action}[/{colour}]" if colour else action


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def json_lines(outcomes: list[ProviderOutcome]) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for outcome in outcomes:
        for raw in outcome.reply.raw:
            lines.append({"role": outcome.role, **raw})
        if outcome.status == "failed":
            lines.append({"role": outcome.role, "status": "failed", "message": outcome.reason})
        elif outcome.status == "skipped":
            _log.info("%s provider skipped: %s", outcome.role, outcome.reason)
    return lines
