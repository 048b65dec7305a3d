"""The wire protocol, version 1: UTF-8 JSON, one object per ``\\n``-terminated line.

This is the only module that calls orjson. Message kinds:

- command envelope (orchestrator → provider, first stdin line):
  ``{"command": "run"|"init"|"plan"|"status"|"destroy"|"check"|"snapshot", "config": {...},
  "checkpoint": ..., "protocol": 1, "task": "NAME", "features": ["gauge"]}`` (to every stage;
  ``checkpoint`` is where the input resumes)
- handshake (provider → orchestrator, first stdout line):
  ``{"status": "ready", "verbs": [...], "features": [...]}`` or ``{"status": "error", "message": ...}``
- data: ``{"data": {...}, "metadata": {...}}`` (extra top-level fields are relayed untouched)
- ``{"checkpoint": {...}}`` input → (every transform, unchanged) → output, ``{"ack": {...}}``
  output → orchestrator, ``{"committed": {...}}`` orchestrator → input (``commit`` feature)
- ``{"dead_letter": {"reason": ..., "envelope": {...}}}`` transform → orchestrator (a rejected record)
- ``{"gauge": {"name": ..., "value": ..., "labels": {...}}}`` any stage → orchestrator
- lifecycle results: ``{"resource": {...}}`` lines, or upstream's single
  ``{"status": "Success"|"Failed", "resources": [...], ...}`` reply
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

PROTOCOL_VERSION = 1
DEFAULT_MAX_LINE_BYTES = 8 * 1024 * 1024
VERBS = ("run", "init", "plan", "status", "destroy")
LIFECYCLE_VERBS = ("init", "plan", "status", "destroy")
FEATURE_ACK = "ack"
FEATURE_COMMIT = "commit"
# Orchestrator features, announced in the command envelope's "features": "gauge" means
# providers may print {"gauge": {...}} lines, which dstream exports and never forwards.
FEATURE_GAUGE = "gauge"
ORCHESTRATOR_FEATURES = (FEATURE_GAUGE,)

# Cheap substring probes so the relay only parses lines that may be control lines.
CHECKPOINT_TOKEN = b'"checkpoint"'
ACK_TOKEN = b'"ack"'
COMMITTED_TOKEN = b'"committed"'
GAUGE_TOKEN = b'"gauge"'
DATA_PREFIX = b'{"data":'  # how nearly every data line starts (the SDK's and upstream's encoders)
DEAD_LETTER_TOKEN = b'"dead_letter"'
FEATURE_TRANSFORM = "transform"

Command = Literal["run", "init", "plan", "status", "destroy"]


class DecodeError(ValueError):
    """A line is not one JSON object."""


def encode(message: Any) -> bytes:
    """One protocol line, newline included."""
    return orjson.dumps(message) + b"\n"


def canonical(value: Any) -> bytes:
    """A stable byte form (sorted keys) used to match an ack to its checkpoint."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def decode(line: bytes | str) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(str(exc)) from None


def decode_object(line: bytes | str) -> dict[str, Any]:
    value = decode(line)
    if not isinstance(value, dict):
        raise DecodeError(f"expected a JSON object, got {type(value).__name__}")
    return value


def command_envelope(
    command: str,
    config: dict[str, Any],
    checkpoint: Any = None,
    task: str | None = None,
    features: tuple[str, ...] = (),
) -> bytes:
    """The first stdin line. ``task`` (an addition) lets providers tag what they own;
    ``features`` are what this orchestrator accepts beyond protocol 1's base."""
    envelope: dict[str, Any] = {"command": command, "config": config, "checkpoint": checkpoint}
    envelope["protocol"] = PROTOCOL_VERSION
    if task is not None:
        envelope["task"] = task
    if features:
        envelope["features"] = list(features)
    return encode(envelope)


def gauge(name: str, value: float, labels: dict[str, str]) -> bytes:
    """A provider-reported metric; the orchestrator exports it as ``dstream_provider_<name>``."""
    return encode({"gauge": {"name": name, "value": value, "labels": labels}})


@dataclass(frozen=True)
class Handshake:
    """A provider's first stdout line. ``legacy`` means there was none (that line was data)."""

    status: Literal["ready", "error"]
    verbs: tuple[str, ...] | None = None
    features: frozenset[str] = field(default_factory=frozenset)
    message: str = ""
    legacy: bool = False
    protocol: int = PROTOCOL_VERSION

    @property
    def acks(self) -> bool:
        return FEATURE_ACK in self.features

    @property
    def commits(self) -> bool:
        return FEATURE_COMMIT in self.features

    def supports(self, verb: str) -> bool:
        return self.verbs is None or verb in self.verbs


LEGACY = Handshake(status="ready", legacy=True)


def parse_handshake(line: bytes) -> Handshake | None:
    """The handshake in ``line``, or None when the line is not a handshake (a legacy provider)."""
    try:
        value = decode_object(line)
    except DecodeError:
        return None
    status = value.get("status")
    if status not in ("ready", "error") or "data" in value:
        return None
    verbs = value.get("verbs")
    features = value.get("features") or []
    version = value.get("protocol")
    if not isinstance(version, int | float) or isinstance(version, bool):
        version = PROTOCOL_VERSION  # absent or not a number: ignored, as malformed verbs are
    return Handshake(
        status=status,
        verbs=tuple(str(v) for v in verbs) if isinstance(verbs, list) else None,
        features=frozenset(str(f) for f in features) if isinstance(features, list) else frozenset(),
        message=str(value.get("message") or ""),
        protocol=int(version),
    )


def handshake_ready(verbs: list[str], features: list[str]) -> bytes:
    return encode({"status": "ready", "verbs": verbs, "features": features, "protocol": PROTOCOL_VERSION})


def handshake_error(message: str) -> bytes:
    return encode({"status": "error", "message": message})


def data(data: Any, metadata: dict[str, Any] | None = None) -> bytes:
    return encode({"data": data, "metadata": metadata or {}})


def checkpoint(position: Any) -> bytes:
    return encode({"checkpoint": position})


def ack(position: Any) -> bytes:
    return encode({"ack": position})


def dead_letter(reason: str, envelope: Any) -> bytes:
    """A transform's verdict on one envelope: set it aside (the task's on_error decides)."""
    return encode({"dead_letter": {"reason": reason, "envelope": envelope}})


def committed(position: Any) -> bytes:
    return encode({"committed": position})


def control_value(message: Any, key: str) -> tuple[bool, Any]:
    """``(True, value)`` when ``message`` is a control line ``{key: value}`` (not data)."""
    if isinstance(message, dict) and key in message and "data" not in message:
        return True, message[key]
    return False, None


@dataclass(frozen=True)
class Resource:
    """One lifecycle result row."""

    type: str
    name: str
    action: str = "none"
    state: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "name": self.name, "action": self.action}
        if self.state:
            out["state"] = self.state
        if self.details:
            out["details"] = self.details
        return out


def resource(res: Resource) -> bytes:
    return encode({"resource": res.to_json()})


@dataclass
class LifecycleReply:
    """What a provider printed for a lifecycle verb, in either the per-line or upstream form."""

    resources: list[Resource] = field(default_factory=list)
    raw: list[dict[str, Any]] = field(default_factory=list)
    failed: bool = False
    message: str = ""
    other: list[str] = field(default_factory=list)

    def feed(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").strip()
        if not text:
            return
        try:
            value = decode_object(line)
        except DecodeError:
            self.other.append(text)
            return
        if "resource" in value and isinstance(value["resource"], dict):
            self.raw.append(value)
            self.resources.append(_resource_from(value["resource"]))
        elif value.get("status") in ("Success", "Failed") and "resources" in value:
            # Upstream .NET providers: one summary line; "Failed" is a failure even with exit 0.
            self.raw.append(value)
            for item in value.get("resources") or []:
                if isinstance(item, dict):
                    self.resources.append(_resource_from(item))
                else:
                    self.resources.append(Resource(type="resource", name=str(item)))
            if value["status"] == "Failed":
                self.failed = True
                err = value.get("error")
                self.message = str(value.get("message") or err or "provider reported Failed")
        elif "error" in value and value.get("status") == "error":
            self.raw.append(value)
            self.failed = True
            self.message = str(value.get("message") or value.get("error"))
        else:
            self.other.append(text)


def _resource_from(item: dict[str, Any]) -> Resource:
    details = {k: v for k, v in item.items() if k not in ("type", "name", "action", "state")}
    if isinstance(item.get("details"), dict):
        details = {**{k: v for k, v in details.items() if k != "details"}, **item["details"]}
    return Resource(
        type=str(item.get("type") or item.get("Type") or "resource"),
        name=str(item.get("name") or item.get("Name") or item.get("id") or ""),
        action=str(item.get("action") or item.get("Action") or "none"),
        state=str(item.get("state") or item.get("State") or item.get("status") or ""),
        details=details,
    )


#: Marks the one stderr line on which a provider says why it failed (stderr is otherwise
#: free-form logs; the marker may follow a log prefix such as ``ERROR name: ``). The
#: orchestrator quotes what follows it alone in its error, instead of the provider's last
#: stderr lines, and does not also log it, so the reason is shown once.
FAILURE_PREFIX = "dstream-failure: "


def failure_reason(line: str) -> str | None:
    """What a failure line says, or None for any other stderr line."""
    _, marker, reason = line.partition(FAILURE_PREFIX)
    return reason if marker else None


def failure_line(message: str) -> str:
    """``message`` as one failure line (its own line breaks folded)."""
    return FAILURE_PREFIX + " ".join(message.split())
