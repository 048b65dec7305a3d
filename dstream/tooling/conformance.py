"""``dstream test-provider REF``: a conformance suite for any provider image or executable.

Checks (each pass, fail or skip, with a detail):
- handshake       valid config → ``{"status":"ready"}`` within the timeout
- invalid config  an unknown config key → ``{"status":"error","message":…}`` naming it
- sigterm         SIGTERM after the handshake → exits (0 or 143) within the grace period; for an
                  image, also whether it would without the container's init process
- acks            (outputs) data + a checkpoint → ``{"ack": <the same checkpoint>}``
- transform       (transforms) each envelope followed by a checkpoint: the checkpoint comes back
                  byte for byte, after what the transform emitted for that envelope (0, 1 or n
                  envelopes, or a well-formed ``dead_letter`` line), and nothing after the last one
- checkpoints     (inputs) data lines are envelopes and a ``{"checkpoint": …}`` follows
- resume          (inputs) restarting from that checkpoint handshakes and streams again
- lifecycle       ``plan``/``status`` (when offered) print well-formed resource lines
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dstream import protocol
from dstream.config.models import Document, Task
from dstream.config.secrets import secret_values
from dstream.errors import ConfigError, DStreamError, HandshakeError
from dstream.redact import Redactor
from dstream.relay.handshake import open_provider
from dstream.runtime.base import LABEL_RUN
from dstream.task.launch import LaunchOptions, new_run_id, prepare_spec
from dstream.tooling.probes import TransformProbe

if TYPE_CHECKING:
    from dstream.runtime.base import ProviderProcess, ProviderSpec, Runtime

UNKNOWN_KEY = "dstream_conformance_unknown_key"
CHECKPOINT = {"dstream_conformance": 1}
GRACE = 10.0


@dataclass
class Check:
    name: str
    result: str  # pass | fail | skip
    detail: str = ""


def provider_config(option: str, env_var: str | None) -> dict[str, Any]:
    """``test-provider``'s config: ``--config-env VAR``, ``--config @FILE`` or inline JSON.

    Inline JSON that holds a secret (by key, or inside a connection string) is refused: a
    command line is readable by every local user (``/proc/PID/cmdline``, ``ps``) and stays
    in shell history.
    """
    if env_var is not None:
        if option != "{}":
            raise ConfigError("pass the provider config with either --config or --config-env, not both")
        text = os.environ.get(env_var)
        if text is None:
            raise ConfigError(f"--config-env {env_var}: the environment variable is not set")
        where = f"environment variable {env_var}"
    elif option.startswith("@"):
        path = Path(option[1:]).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--config {option}: cannot read {path}: {exc}") from None
        where = str(path)
    else:
        text, where = option, "--config"
    try:
        parsed = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: the provider config is not JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise ConfigError(f'{where}: the provider config must be a JSON object, e.g. {{"path": "/tmp/x"}}')
    if where == "--config" and secret_values(parsed):
        keys = ", ".join(sorted(_secret_keys(parsed))) or "a connection string"
        raise ConfigError(
            f"--config holds a secret ({keys}), and a command line is readable by every local user; "
            f"put the config in a file (--config @config.json) or a variable (--config-env VAR)"
        )
    return parsed


def _secret_keys(config: dict[str, Any], prefix: str = "") -> set[str]:
    found = set()
    for key, value in config.items():
        if isinstance(value, dict):
            found |= _secret_keys(value, f"{prefix}{key}.")
        elif secret_values({key: value}):
            found.add(prefix + key)
    return found


class Suite:
    def __init__(self, ref: str, config: dict[str, Any], kind: str | None, timeout: float, network: str | None) -> None:
        is_path = "/" not in ref or Path(ref).exists()
        container: dict[str, Any] = {"network": network} if network else {}
        block = {"provider_path" if is_path else "provider_ref": ref, "config": config, "container": container}
        self.task = Task.model_validate(
            {
                "name": "conformance",
                "input": block,
                "output": block,
                "handshake_timeout": timeout,
                "stop_timeout": GRACE,
            }
        )
        self.document = Document(path=Path.cwd() / "conformance.hcl", tasks={"conformance": self.task})
        self.config = config
        self.kind = kind
        self.timeout = timeout
        self.options = LaunchOptions()
        self.redactor = Redactor(secret_values(config))
        self.checks: list[Check] = []
        self._prepared: tuple[Runtime, ProviderSpec] | None = None

    async def _prepare(self) -> tuple[Runtime, ProviderSpec]:
        """Resolve the provider once (registry, lock, pull); every later open reuses it
        under a fresh run id, so each container still gets its own name and labels."""
        run_id = new_run_id()
        if self._prepared is None:
            self._prepared = await prepare_spec(
                self.document, self.task, "conformance", run_id, self.options, self.task.input
            )
            return self._prepared
        runtime, spec = self._prepared
        return runtime, replace(spec, run_id=run_id, labels={**spec.labels, LABEL_RUN: run_id})

    async def _open(
        self, config: dict[str, Any], command: str = "run", checkpoint: Any = None, init: bool = True
    ) -> tuple[ProviderProcess, protocol.Handshake, bytes]:
        runtime, spec = await self._prepare()
        if not init:
            container = spec.block.container.model_copy(update={"init": False})
            spec = replace(spec, block=spec.block.model_copy(update={"container": container}))
        proc = await runtime.start(spec, lambda line: None)
        try:
            handshake, rest = await open_provider(
                proc, command, config, checkpoint, timeout=self.timeout, expect_handshake=True,
                max_line_bytes=self.task.max_line_bytes, redactor=self.redactor, task="conformance",
            )  # fmt: skip
        except BaseException:
            await proc.cleanup()
            raise
        return proc, handshake, rest

    def record(self, name: str, ok: bool | None, detail: str = "") -> None:
        result = "skip" if ok is None else ("pass" if ok else "fail")
        self.checks.append(Check(name, result, self.redactor(detail)))

    async def run(self) -> list[Check]:
        try:
            proc, handshake, rest = await self._open(self.config)
        except DStreamError as exc:
            self.record("handshake", False, _first(str(exc)))
            return self.checks
        kind = self.kind or _kind(handshake)
        self.record(
            "handshake",
            handshake.status == "ready",
            f"{kind}; verbs {list(handshake.verbs or [])}; features {sorted(handshake.features)}",
        )
        try:
            if kind == "output":
                await self._acks(proc, rest)
            elif kind == "transform":
                await TransformProbe(proc, rest, self.timeout, self.record, self.redactor.shorten).run()
            else:
                checkpoint = await self._checkpoints(proc, rest)
                await self._resume(checkpoint)
        finally:
            await proc.cleanup()
        await self._invalid_config()
        await self._sigterm(kind)
        await self._lifecycle(handshake)
        return self.checks

    async def _invalid_config(self) -> None:
        try:
            proc, handshake, _ = await self._open({**self.config, UNKNOWN_KEY: True})
        except HandshakeError as exc:
            refused = "refused to start" in str(exc)
            detail = _first(str(exc)) if refused else "exited without an error handshake: " + _first(str(exc))
            self.record("invalid config", refused and UNKNOWN_KEY in str(exc), detail)
            return
        await proc.cleanup()
        self.record("invalid config", False, f"accepted an unknown key {UNKNOWN_KEY!r} (status {handshake.status})")

    async def _sigterm(self, kind: str) -> None:
        outcome = await self._stop_on_sigterm(kind)
        if isinstance(outcome, str):
            self.record("sigterm", False, outcome)
            return
        code, took = outcome
        detail = f"exit {code} after {took:.1f}s"
        _, spec = await self._prepare()
        if code in (0, 143, -15) and spec.image is not None:
            # Containers run under an init process by default: would it stop without one?
            alone = await self._stop_on_sigterm(kind, init=False)
            if isinstance(alone, str):
                detail += (
                    "; it stops only because of the container's init process: as PID 1 (container "
                    "{ init = false }) it ignores SIGTERM. Handle SIGTERM in the provider to stop cleanly anywhere"
                )
            else:
                detail += "; also without an init process"
        self.record("sigterm", code in (0, 143, -15), detail)

    async def _stop_on_sigterm(self, kind: str, init: bool = True) -> tuple[int, float] | str:
        """(exit code, seconds) after SIGTERM, or what went wrong."""
        try:
            proc, _, _ = await self._open(self.config, init=init)
        except DStreamError as exc:
            return _first(str(exc))
        try:
            if kind == "input":
                await proc.close_stdin()
            drain = asyncio.create_task(_drain(proc))
            started = time.monotonic()
            await proc.terminate()
            try:
                code = await asyncio.wait_for(proc.wait(), GRACE)
            except TimeoutError:
                return f"still running {GRACE:g}s after SIGTERM"
            finally:
                drain.cancel()
            return code, time.monotonic() - started
        finally:
            await proc.cleanup()

    async def _acks(self, proc: ProviderProcess, rest: bytes) -> None:
        lines = [protocol.data({"n": n}, {"Source": "conformance"}) for n in range(3)]
        await proc.write(b"".join(lines) + protocol.checkpoint(CHECKPOINT))
        buffer = rest
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            for line in buffer.split(b"\n"):
                with contextlib.suppress(protocol.DecodeError):
                    is_ack, value = protocol.control_value(protocol.decode(line), "ack")
                    if is_ack:
                        self.record("acks", value == CHECKPOINT, f"acked {value}")
                        await proc.close_stdin()
                        return
            try:
                chunk = await asyncio.wait_for(proc.read(), max(deadline - time.monotonic(), 0.01))
            except TimeoutError:
                break
            if not chunk:
                break
            buffer += chunk
        self.record("acks", False, "no ack for the checkpoint")

    async def _checkpoints(self, proc: ProviderProcess, rest: bytes) -> Any:
        buffer = rest
        data = 0
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if not line.strip():
                    continue
                try:
                    value = protocol.decode_object(line)
                except protocol.DecodeError:
                    self.record("checkpoints", False, f"not a JSON object: {self.redactor.shorten(line, 80)!r}")
                    return None
                is_cp, position = protocol.control_value(value, "checkpoint")
                if is_cp:
                    self.record("checkpoints", True, f"{data} envelope(s), then checkpoint {position}")
                    return position
                if "data" not in value:
                    self.record(
                        "checkpoints",
                        False,
                        f"a line that is neither data nor a checkpoint: {self.redactor.shorten(line, 80)!r}",
                    )
                    return None
                data += 1
            try:
                chunk = await asyncio.wait_for(proc.read(), max(deadline - time.monotonic(), 0.01))
            except TimeoutError:
                break
            if not chunk:
                break
            buffer += chunk
        self.record(
            "checkpoints", None if data else False, f"{data} envelope(s) and no checkpoint within {self.timeout:g}s"
        )
        return None

    async def _resume(self, checkpoint: Any) -> None:
        if checkpoint is None:
            self.record("resume", None, "no checkpoint to resume from")
            return
        try:
            proc, handshake, _ = await self._open(self.config, checkpoint=checkpoint)
        except DStreamError as exc:
            self.record("resume", False, _first(str(exc)))
            return
        await proc.cleanup()
        self.record("resume", handshake.status == "ready", f"restarted from {checkpoint}")

    async def _lifecycle(self, handshake: protocol.Handshake) -> None:
        verbs = [v for v in ("plan", "status") if handshake.verbs and v in handshake.verbs]
        if not verbs:
            self.record("lifecycle", None, "offers no plan/status")
            return
        for verb in verbs:
            try:
                proc, _, rest = await self._open(self.config, command=verb)
            except DStreamError as exc:
                self.record(f"lifecycle {verb}", False, _first(str(exc)))
                continue
            reply = protocol.LifecycleReply()
            try:
                await proc.close_stdin()
                output = rest + await asyncio.wait_for(_read_all(proc), self.timeout)
                code = await proc.wait()
            except TimeoutError:
                self.record(f"lifecycle {verb}", False, f"did not finish within {self.timeout:g}s")
                continue
            finally:
                await proc.cleanup()
            for line in output.split(b"\n"):
                reply.feed(line)
            ok = code == 0 and not reply.failed and not reply.other and all(r.type and r.name for r in reply.resources)
            detail = f"{len(reply.resources)} resource(s), exit {code}"
            if reply.other:
                detail += f"; unexpected line {reply.other[0][:60]!r}"
            self.record(f"lifecycle {verb}", ok, detail)


async def _drain(proc: ProviderProcess) -> None:
    while await proc.read():
        pass


async def _read_all(proc: ProviderProcess) -> bytes:
    out = b""
    while chunk := await proc.read():
        out += chunk
    return out


def _kind(handshake: protocol.Handshake) -> str:
    if protocol.FEATURE_TRANSFORM in handshake.features:
        return "transform"
    return "output" if handshake.acks else "input"


def _first(text: str) -> str:
    return text.splitlines()[0] if text else text


def run_suite(ref: str, config: dict[str, Any], kind: str | None, timeout: float, network: str | None) -> list[Check]:
    return asyncio.run(Suite(ref, config, kind, timeout, network).run())
