"""``dstream init|plan|status|destroy|check TASK``: route a verb to the task's providers.

Each provider gets the verb in its command envelope and answers with its handshake
(listing the verbs it supports) and result lines. A provider that does not list the
verb is skipped. A legacy provider (no handshake) gets the verb only when it is the
output, as upstream does; a legacy input is stopped before it can do anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dstream import log, protocol
from dstream.errors import DStreamError, ProviderError
from dstream.redact import Redactor
from dstream.relay.handshake import stderr_excerpt
from dstream.task import checkpoints
from dstream.task.launch import LaunchOptions, new_run_id, start_and_open

if TYPE_CHECKING:
    from dstream.config.models import Document

LIFECYCLE_TIMEOUT = 30 * 60.0


@dataclass
class ProviderOutcome:
    role: str
    source: str
    status: str  # "ok" | "skipped" | "failed"
    reply: protocol.LifecycleReply = field(default_factory=protocol.LifecycleReply)
    reason: str = ""
    verbs: str = ""  # what a skipped provider supports instead
    seconds: float = 0.0  # how long the provider took, start to exit


async def _one(
    document: Document,
    task_name: str,
    role: str,
    verb: str,
    options: LaunchOptions,
    redactor: Redactor,
    arguments: Any = None,
) -> ProviderOutcome:
    """One stage's answer to ``verb``. ``arguments`` travel in the command envelope's
    ``checkpoint`` slot (``dstream snapshot``'s tables); ``status`` gets the task's persisted
    checkpoint there instead, as ``run`` does, so a provider can report its lag."""
    task = document.task(task_name)
    block = task.stage(role).block
    if role != "output" and not block.handshake:
        return ProviderOutcome(
            role, block.source, "skipped", reason="legacy provider: lifecycle verbs go to outputs only"
        )
    checkpoint = _stored_checkpoint(document, task_name) if verb == "status" else arguments
    opened = await start_and_open(document, task, role, new_run_id(), verb, checkpoint, options, redactor)
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
            return ProviderOutcome(role, block.source, "skipped", reason=f"does not support {verb}", verbs=verbs)
        await proc.close_stdin()
        reply = protocol.LifecycleReply()
        buffer = opened.leftover

        async def collect() -> int:
            nonlocal buffer
            while True:
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    reply.feed(_redacted(line, redactor))
                chunk = await proc.read()
                if not chunk:
                    break
                buffer += chunk
            if buffer.strip():
                reply.feed(_redacted(buffer, redactor))
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
            outcome.reason = why.rstrip(".") + "." + stderr_excerpt(proc, redactor)
        return outcome
    finally:
        await proc.cleanup()


def _stored_checkpoint(document: Document, task_name: str) -> Any:
    try:
        stored = checkpoints.stored(document, task_name)  # the store is closed again
    except DStreamError as exc:
        log.get("lifecycle").warning("status without the task's checkpoint: %s", exc)
        return None
    return stored.checkpoint if stored is not None else None


def _redacted(line: bytes, redactor: Redactor) -> bytes:
    """A result line with its secrets masked before it is parsed: resource names, details
    and messages are printed (and ``--json`` prints the raw reply). The JSON-escaped form
    of a secret is masked inside the string, so the line stays valid JSON."""
    return redactor(line.decode("utf-8", "replace")).encode()


async def run_verb(
    document: Document, task_name: str, verb: str, options: LaunchOptions | None = None
) -> list[ProviderOutcome]:
    options = options or LaunchOptions()
    redactor = Redactor(document.secrets)
    log.set_redactor(redactor)
    outcomes = []
    for role, block, _ in document.task(task_name).stages:
        started = time.monotonic()
        try:
            outcome = await _one(document, task_name, role, verb, options, redactor)
        except DStreamError as exc:
            outcome = ProviderOutcome(role, block.source, "failed", reason=redactor(str(exc)))
        outcome.seconds = time.monotonic() - started
        outcomes.append(outcome)
    return outcomes


CHANGES = ("create", "update", "delete")
_SIGNS = {"create": ("+", "green"), "delete": ("-", "red"), "update": ("~", "yellow")}


def changes(outcomes: list[ProviderOutcome]) -> dict[str, int]:
    """How many resources each action touches (plan: would touch), as Terraform counts them."""
    counted = dict.fromkeys(CHANGES, 0)
    for outcome in outcomes:
        for res in outcome.reply.resources:
            if res.action in counted:
                counted[res.action] += 1
    return counted


def render(outcomes: list[ProviderOutcome], verb: str, task: str) -> list[str]:
    """The result as lines of rich markup, a list rather than a table (as Terraform prints
    plans): a long resource name is never cut to fit the terminal. Providers that were not
    sent the verb are named once, below the list."""
    lines = [f"[bold]dstream {verb} {_escape(task)}[/bold]"]
    skipped: dict[str, list[str]] = {}
    for outcome in outcomes:
        who = f"{outcome.role} {_escape(outcome.source)}"
        if outcome.status == "skipped":
            skipped.setdefault(outcome.reason, []).append(who)
            continue
        lines += ["", f"[bold]{who}[/bold]"]
        for res in outcome.reply.resources:
            state = f" ({_escape(res.state)})" if res.state else ""
            if verb == "status":  # status changes nothing: no action column
                lines.append(f"  {_escape(res.type)} {_escape(res.name)}{state}")
            else:
                sign, colour = _SIGNS.get(res.action, (" ", ""))
                action = f"[{colour}]{sign} {res.action}[/{colour}]" if colour else f"{sign} {res.action}"
                lines.append(f"  {action} {_escape(res.type)} {_escape(res.name)}{state}")
            if res.details:
                lines.append("      " + _escape(", ".join(f"{k}={v}" for k, v in res.details.items())))
        if outcome.status == "failed":
            lines.append(f"  [red]failed: {_escape(outcome.reason)}[/red]")
        elif not outcome.reply.resources:
            lines.append("  [dim]no resources[/dim]")
    if skipped:
        lines.append("")
        lines += [f"[dim]{_escape(reason)}, not sent to: {', '.join(who)}[/dim]" for reason, who in skipped.items()]
    counted = changes(outcomes)
    if verb == "plan":
        lines += ["", "Plan: {create} to create, {update} to update, {delete} to delete.".format(**counted)]
    elif verb == "destroy":  # destroy only deletes
        lines += ["", "Destroy: {delete} deleted.".format(**counted)]
    elif verb != "status":
        done = "{create} created, {update} updated, {delete} deleted.".format(**counted)
        lines += ["", f"{verb.capitalize()}: {done}"]
    return lines


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def to_json(outcomes: list[ProviderOutcome], verb: str, task: str) -> dict[str, Any]:
    """``--json``: one document (the keys are documented in the README's command table)."""
    providers, resources = [], []
    for outcome in outcomes:
        providers.append(
            {
                "role": outcome.role,
                "provider": outcome.source,
                "status": outcome.status,
                "reason": outcome.reason,
                "reply": outcome.reply.raw,
            }
        )
        for res in outcome.reply.resources:
            resources.append(
                {
                    "role": outcome.role,
                    "type": res.type,
                    "name": res.name,
                    "action": res.action,
                    "state": res.state,
                    "details": res.details,
                }
            )
    return {
        "task": task,
        "verb": verb,
        "ok": all(o.status != "failed" for o in outcomes),
        "changes": changes(outcomes),
        "providers": providers,
        "resources": resources,
    }


def check_report(document: Document, task_name: str, outcomes: list[ProviderOutcome]) -> tuple[list[str], list[str]]:
    """``dstream check``: a line per stage (what answered, in how long) and warnings that
    explain a failure before it happens (a loopback address a container cannot reach)."""
    from dstream.runtime import reach

    lines = [f"dstream check {task_name}"]
    for outcome in outcomes:
        took = f"{outcome.seconds:.1f}s"
        head = f"  {outcome.role} {outcome.source}"
        if outcome.status == "failed":
            lines.append(f"{head}: failed in {took}: {outcome.reason}")
        elif outcome.status == "skipped":
            lines.append(f"{head}: not checked ({outcome.reason})")
        else:
            found = "; ".join(
                f"{res.type} {res.name} {res.state}"
                + (" (" + ", ".join(f"{k}={v}" for k, v in res.details.items()) + ")" if res.details else "")
                for res in outcome.reply.resources
            )
            lines.append(f"{head}: ok in {took}" + (f": {found}" if found else ""))
    notes = []
    for role, block, _ in document.task(task_name).stages:
        notes += [f"{role}: {text}" for text in reach.image_warnings(block)]
    ok = sum(o.status == "ok" for o in outcomes)
    failed = sum(o.status == "failed" for o in outcomes)
    lines.append(f"Check: {ok} ok, {failed} failed, {len(outcomes) - ok - failed} not checked.")
    return lines, notes


async def run_on(document: Document, task_name: str, role: str, verb: str, arguments: Any = None) -> ProviderOutcome:
    """``verb`` sent to one stage only (``dstream snapshot`` talks to the input)."""
    redactor = Redactor(document.secrets)
    log.set_redactor(redactor)
    block = document.task(task_name).stage(role).block
    started = time.monotonic()
    try:
        outcome = await _one(document, task_name, role, verb, LaunchOptions(), redactor, arguments)
    except DStreamError as exc:
        outcome = ProviderOutcome(role, block.source, "failed", reason=redactor(str(exc)))
    outcome.seconds = time.monotonic() - started
    return outcome
