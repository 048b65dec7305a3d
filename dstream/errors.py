"""One exception tree for everything dstream reports to a user.

::

    DStreamError                      exit code 1 unless stated
    ├── ConfigError                   HCL syntax, validation, lint problems (Problem records)
    ├── DistributionError             provider_ref resolution, registry, lock file
    │   ├── LockMismatchError         locked digest differs from the registry's
    │   ├── ContentMismatch           received bytes do not hash to the digest that names them
    │   └── RegistryUnreachable       the registry could not be reached at all
    ├── RuntimeFailure                starting/attaching/stopping a provider process or container
    ├── ProtocolError                 a provider broke the wire protocol (handshake, framing)
    │   └── BadDataError              malformed/oversized/invalid-UTF-8 data line
    ├── ProviderError                 a provider reported failure or exited non-zero
    │   └── HandshakeError            a provider failed before or during its handshake
    ├── StateError                    checkpoint store problems
    │   └── LeaseLost                 this replica no longer holds the task lease
    └── Interrupted                   the user stopped the run before it could finish (exit 130)

Foreign exceptions (docker, requests, hcl2, pydantic, sqlite) are translated where those
libraries are called, never further up.
"""

from __future__ import annotations

from dataclasses import dataclass


class DStreamError(Exception):
    """Root of every error dstream reports; ``str()`` is the user-facing message."""

    exit_code: int = 1


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a task file, where it is: printed ``FILE:LINE: message`` (as
    compilers and linters print them), kept as a record so nothing parses that text back."""

    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.message}" if where else self.message

    def sort_key(self) -> int:
        """By line (problems without one first), as ``dstream lint`` lists them."""
        return self.line or 0


class ConfigError(DStreamError):
    """The task file is invalid. ``problems`` holds each :class:`Problem`."""

    def __init__(self, message: str, problems: list[Problem] | None = None) -> None:
        self.problems = problems or [Problem("", None, message)]
        super().__init__(message)


class DistributionError(DStreamError):
    """A provider reference could not be resolved, pulled or verified."""


class LockMismatchError(DistributionError):
    """The registry's digest for a reference differs from the one in the lock file."""


class ContentMismatch(DistributionError):
    """A registry served bytes that do not hash to the digest that names them (a pin, a
    ``Docker-Content-Digest`` header, a layer digest): never used, never fallen back from."""


class RegistryUnreachable(DistributionError):
    """No connection to the registry (a locked digest may still run offline)."""


class RuntimeFailure(DStreamError):
    """A provider process or container could not be started, attached to or stopped."""


class ProtocolError(DStreamError):
    """A provider broke the wire protocol."""


class BadDataError(ProtocolError):
    """A data line could not be relayed (malformed JSON, invalid UTF-8, oversized)."""

    def __init__(self, message: str, reason: str, raw: bytes, position: int) -> None:
        self.reason = reason
        self.raw = raw
        self.position = position
        super().__init__(message)


class ProviderError(DStreamError):
    """A provider reported a failure or exited with a non-zero status."""


class HandshakeError(ProviderError):
    """A provider failed before or during its handshake."""


class StateError(DStreamError):
    """The checkpoint store could not be read or written."""


class LeaseLost(StateError):
    """This replica no longer holds the task lease: stop now, write nothing."""


class Interrupted(DStreamError):
    """The run was stopped by the user before it could finish cleanly."""

    exit_code = 130
